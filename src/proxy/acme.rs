//! An ACME server's HTTP-01 validation, answered on the plain listeners
//! before rate limits, redirects and routes: the token's key authorization,
//! or 404 when no order of ours is open for it.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;

use super::{over_tls, Proxy};
use crate::acme::challenges::HTTP_PREFIX;

impl Proxy {
    /// True when `session` was an HTTP-01 validation, now answered.
    pub(super) async fn answer_acme(&self, session: &mut Session) -> Result<bool> {
        let Some(acme) = self.state.acme() else {
            return Ok(false);
        };
        let path = session.req_header().uri.path();
        let Some(token) = path.strip_prefix(HTTP_PREFIX) else {
            return Ok(false);
        };
        if over_tls(session) {
            return Ok(false);
        }
        let answer = acme.challenges.http_answer(token);
        let (code, body) = match answer {
            Some(a) => (200, Bytes::from(a)),
            None => (404, Bytes::from_static(b"no such ACME challenge\n")),
        };
        let mut resp = ResponseHeader::build(code, Some(3))?;
        resp.insert_header("content-type", "text/plain")?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }
}
