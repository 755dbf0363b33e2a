//! A route's `compress` at work: the answer's headers say whether it is worth
//! compressing, the client's `Accept-Encoding` with which coding; Pingora's
//! downstream compression module (off until then) encodes the body; brotli
//! is `brotli_stream`'s.

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::compression::ResponseCompression;
use pingora::prelude::*;

use super::brotli_stream::BrotliStream;
use super::{Proxy, RequestCtx};
use crate::route::compress::{self, Coding};

impl Proxy {
    /// Turns compression on for this answer when its route asks and the
    /// answer and client allow it.
    pub(super) fn compress(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        resp: &mut ResponseHeader,
    ) -> Result<()> {
        let Some(route) = ctx.route.map(|i| self.state.routes.route(i)) else {
            return Ok(());
        };
        let req = session.req_header();
        if !route.compress || !compress::varies(&req.headers, resp.status, &resp.headers) {
            return Ok(());
        }
        // The answer depends on Accept-Encoding, whichever coding this
        // client gets: a cache must not hand one client's to another.
        add_vary(resp)?;
        // Not for HEAD (no body) or a 304, nor for HTTP/1.0 clients (the
        // length is not known ahead, and they cannot take chunks), as nginx's
        // `gzip_http_version 1.1`.
        if !compress::compressible(&req.method, &req.headers, resp.status, &resp.headers)
            || req.version < http::Version::HTTP_11
        {
            return Ok(());
        }
        let Some(coding) = compress::negotiate(req.headers.get(http::header::ACCEPT_ENCODING))
        else {
            return Ok(());
        };
        let modules = &mut session.downstream_modules_ctx;
        if coding == Coding::Br {
            if let Some(module) = modules.get_mut::<BrotliStream>() {
                module.arm(coding.level());
                ctx.compressed = Some(coding);
            }
            return Ok(());
        }
        let Some(module) = modules
            .get_mut::<ResponseCompression>()
            .filter(|m| m.is_header_phase())
        else {
            return Ok(());
        };
        // The module compresses with the first coding the request names, so
        // it is told the one chosen here (by q-value) and nothing else.
        module.adjust_algorithm_level(coding.algorithm(), coding.level());
        let mut asks = RequestHeader::build("GET", b"/", None)?;
        asks.insert_header(http::header::ACCEPT_ENCODING, coding.name())?;
        module.request_filter(&asks);
        ctx.compressed = Some(coding);
        Ok(())
    }

    /// Counts what compressing the answer just sent saved.
    pub(super) fn count_compression(&self, session: &Session, ctx: &RequestCtx) {
        let Some(coding) = ctx.compressed else {
            return;
        };
        let modules = &session.downstream_modules_ctx;
        let info = if coding == Coding::Br {
            modules.get::<BrotliStream>().and_then(BrotliStream::stat)
        } else {
            modules
                .get::<ResponseCompression>()
                .and_then(|m| m.get_info())
                .map(|(_, before, after, _)| (before, after))
        };
        if let Some((before, after)) = info {
            let m = &self.state.metrics.compression_bytes_total;
            m.with_label_values(&[coding.name(), "in"])
                .inc_by(before as u64);
            m.with_label_values(&[coding.name(), "out"])
                .inc_by(after as u64);
        }
    }
}

/// `Vary: Accept-Encoding`, unless the answer already varies by it (or by
/// everything).
fn add_vary(resp: &mut ResponseHeader) -> Result<()> {
    let named = resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|name| {
            let name = name.trim_ascii();
            name == b"*" || name.eq_ignore_ascii_case(b"accept-encoding")
        })
    });
    if !named {
        resp.append_header(http::header::VARY, "Accept-Encoding")?;
    }
    Ok(())
}
