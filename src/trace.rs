//! Request ids and W3C trace context, as pure header logic: a client's
//! `X-Request-Id` is kept when it is sane, and a `traceparent` goes upstream
//! with the same trace id and this hop's own parent id.

use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;

/// The request id header.
pub const REQUEST_ID: &str = "x-request-id";

/// The names to look up, parsed once rather than on every request.
const REQUEST_ID_NAME: HeaderName = HeaderName::from_static(REQUEST_ID);
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// A request's id, kept as the header value it travels in: the request, the
/// response and the log line share one buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl Default for RequestId {
    fn default() -> Self {
        RequestId(HeaderValue::from_static(""))
    }
}

impl RequestId {
    /// The header value, to send.
    pub fn header(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl std::ops::Deref for RequestId {
    type Target = str;

    fn deref(&self) -> &str {
        // Made from visible ASCII only (a UUID, or a client's id `keep_id`
        // let through).
        self.0.to_str().unwrap_or("")
    }
}

/// Tags a request on its way in: keeps the client's `X-Request-Id` or sets a
/// new UUID v7 (time-ordered), and gives a valid `traceparent` this hop's
/// parent id (a malformed one is dropped). Returns the request id.
pub fn tag(req: &mut RequestHeader) -> RequestId {
    let kept = req
        .headers
        .get(&REQUEST_ID_NAME)
        .filter(|v| keep_id(v.as_bytes()).is_some())
        .cloned();
    let id = match kept {
        Some(id) => id,
        None => {
            let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
            let text = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut text);
            let id = HeaderValue::from_str(text).expect("a UUID is a header value");
            let _ = req.insert_header(REQUEST_ID, id.clone());
            id
        }
    };
    if let Some(value) = req.headers.get(&TRACEPARENT) {
        let next = value
            .to_str()
            .ok()
            .and_then(parse)
            .map(|p| next_hop(&p, rand::random()));
        match next {
            Some(next) => {
                let _ = req.insert_header("traceparent", next);
            }
            None => {
                req.remove_header("traceparent");
            }
        }
    }
    RequestId(id)
}

/// The longest client request id kept; a longer one is replaced.
pub const MAX_ID_LEN: usize = 128;

/// The client's request id, if it is one worth keeping: 1 to [`MAX_ID_LEN`]
/// visible ASCII characters (no spaces or controls that would break a log line
/// or a header).
pub fn keep_id(given: &[u8]) -> Option<&str> {
    let ok = !given.is_empty()
        && given.len() <= MAX_ID_LEN
        && given.iter().all(|b| b.is_ascii_graphic());
    ok.then(|| std::str::from_utf8(given).ok()).flatten()
}

/// A parsed `traceparent` (W3C Trace Context, level 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent<'a> {
    pub trace_id: &'a str,
    pub flags: &'a str,
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Parses a `traceparent` value; None if it is malformed (then it is not
/// passed on). A later version's extra fields are ignored, as the
/// specification asks.
pub fn parse(value: &str) -> Option<TraceParent<'_>> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next();
    if !is_lower_hex(version, 2) || version == "ff" || (version == "00" && rest.is_some()) {
        return None;
    }
    if !is_lower_hex(trace_id, 32) || trace_id.bytes().all(|b| b == b'0') {
        return None;
    }
    if !is_lower_hex(parent, 16) || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    if !is_lower_hex(flags, 2) {
        return None;
    }
    Some(TraceParent { trace_id, flags })
}

/// The `traceparent` for the upstream hop: the same trace id and flags, with
/// `span` (this hop's id; 0 is not a valid id and becomes 1) as parent.
pub fn next_hop(parent: &TraceParent<'_>, span: u64) -> String {
    format!(
        "00-{}-{:016x}-{}",
        parent.trace_id,
        span.max(1),
        parent.flags
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn sane_request_ids_are_kept() {
        assert_eq!(keep_id(b"abc-123"), Some("abc-123"));
        assert_eq!(keep_id(b""), None);
        assert_eq!(keep_id(b"has space"), None);
        assert_eq!(keep_id(b"line\nbreak"), None);
        assert_eq!(keep_id("é".as_bytes()), None);
        assert_eq!(keep_id(&[b'a'; MAX_ID_LEN]).map(str::len), Some(MAX_ID_LEN));
        assert_eq!(keep_id(&[b'a'; MAX_ID_LEN + 1]), None);
    }

    #[test]
    fn a_valid_traceparent_keeps_its_trace_id_upstream() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        let next = next_hop(&p, 0xabc);
        assert_eq!(
            next,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01"
        );
        assert_eq!(parse(&next).unwrap().trace_id, p.trace_id);
        assert!(next_hop(&p, 0).contains("-0000000000000001-"));
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        // A later version may carry more fields.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what";
        assert!(parse(later).is_some());
    }
}
