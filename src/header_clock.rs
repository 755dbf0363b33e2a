//! What the frontend hands the proxy with each request on a connection: the
//! header clock, which the proxy stops as soon as the request header has
//! been read, carrying whatever the previous request on the connection left.

use std::any::Any;
use std::sync::Arc;

use pingora::http::RequestHeader;

use crate::answer_wait::AnswerWait;
use crate::header_cap::Arming;

/// Rides in the connection's user context into the proxy, which stops it as
/// soon as the request header has been read; carries on whatever context the
/// previous request on the connection left.
pub struct HeaderClock {
    pub cap: Arming,
    pub carried: Option<Box<dyn Any + Send + Sync>>,
    /// The connection's wait for an upgrade request's answer.
    pub answer: Arc<AnswerWait>,
}

impl HeaderClock {
    /// The request header `req`, `parsed` bytes long as read, is in: stops
    /// the clock and the header cap, and hands back what the previous
    /// request left, and the answer's wait.
    pub fn header_in(
        self,
        req: &RequestHeader,
        parsed: usize,
    ) -> (Option<Box<dyn Any + Send + Sync>>, Arc<AnswerWait>) {
        self.cap.header_in(parsed, body_length(req));
        (self.carried, self.answer)
    }
}

/// The length of a request's body as its header gives it (RFC 9112 §6.3):
/// none is zero; `None` when it is chunked or the length does not parse.
pub fn body_length(req: &RequestHeader) -> Option<u64> {
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    match req.headers.get(http::header::CONTENT_LENGTH) {
        None => Some(0),
        Some(v) => v.to_str().ok()?.trim().parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn a_body_length_is_known_from_content_length_or_its_absence() {
        assert_eq!(body_length(&req(&[])), Some(0));
        assert_eq!(body_length(&req(&[("content-length", "12")])), Some(12));
        assert_eq!(body_length(&req(&[("transfer-encoding", "chunked")])), None);
        assert_eq!(body_length(&req(&[("content-length", "x")])), None);
    }
}
