//! A route's `compress`: which coding a client gets (its `Accept-Encoding`
//! q-values; Pingora's own parser takes the first listed and ignores q), and
//! which answers are worth compressing. The compressing itself is Pingora's.

use http::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use pingora::protocols::http::compression::Algorithm;

/// Answers shorter than this stay as they are: a gzip frame costs ~20
/// bytes, and a short answer fits one packet either way.
pub const MIN_LENGTH: u64 = 1024;

/// A coding we compress with, best first when a client values several alike
/// (zstd: gzip's ratio or better at a fraction of its time).
const PREFERENCE: [Coding; 3] = [Coding::Zstd, Coding::Br, Coding::Gzip];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Zstd,
    Br,
    Gzip,
}

impl Coding {
    pub fn name(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// Pingora's algorithm for it.
    pub fn algorithm(self) -> Algorithm {
        match self {
            Coding::Zstd => Algorithm::Zstd,
            Coding::Br => Algorithm::Brotli,
            Coding::Gzip => Algorithm::Gzip,
        }
    }

    /// The level: each coding's usual setting for answers made on the fly
    /// (gzip 5 as Caddy, brotli 4, zstd 3 as its own default), where the
    /// highest levels cost many times the time for a few percent.
    pub fn level(self) -> u32 {
        match self {
            Coding::Zstd => 3,
            Coding::Br => 4,
            Coding::Gzip => 5,
        }
    }
}

/// The coding `accept_encoding` values most (q > 0), or None: identity.
/// A coding not named takes `*`'s q when `*` is given, else it is not
/// acceptable; no header at all asks for nothing (as browsers and nginx
/// read it).
pub fn negotiate(accept_encoding: Option<&HeaderValue>) -> Option<Coding> {
    let text = accept_encoding?.to_str().ok()?;
    let mut named: [Option<f32>; 3] = [None; 3];
    let mut any = None;
    for item in text.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
            .next()
            .map_or(Some(1.0), quality);
        let Some(q) = q else { continue };
        if name == "*" {
            any = Some(q);
        } else if let Some(i) = PREFERENCE.iter().position(|c| {
            name.eq_ignore_ascii_case(c.name())
                || (*c == Coding::Gzip && name.eq_ignore_ascii_case("x-gzip"))
        }) {
            named[i] = Some(q);
        }
    }
    let mut best: Option<(Coding, f32)> = None;
    for (i, coding) in PREFERENCE.iter().enumerate() {
        let q = named[i].or(any).unwrap_or(0.0);
        if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((*coding, q));
        }
    }
    best.map(|(c, _)| c)
}

/// A q-value (`0`, `0.5`, `1.000`), None when malformed (the item is then
/// ignored, as RFC 9110 lets a recipient do).
fn quality(text: &str) -> Option<f32> {
    let text = text.trim();
    let valid = match text.split_once('.') {
        Some((whole, frac)) => {
            (whole == "0" || whole == "1")
                && frac.len() <= 3
                && frac.bytes().all(|b| b.is_ascii_digit())
        }
        None => text == "0" || text == "1",
    };
    valid
        .then(|| text.parse::<f32>().ok())
        .flatten()
        .filter(|q| *q <= 1.0)
}

/// Whether the answer to a `method` request may be compressed: a 200, 403
/// or 404 (as nginx: not a 206, whose range is of the identity body) with a
/// body, of a text type, not encoded already, over [`MIN_LENGTH`] when its
/// length is known, and neither side saying `no-transform`.
pub fn compressible(
    method: &Method,
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
) -> bool {
    *method != Method::HEAD
        && status != StatusCode::NOT_MODIFIED
        && varies(request, status, response)
}

/// Whether the answer depends on `Accept-Encoding` (`Vary`): one that would
/// be compressed for a GET (a HEAD's headers are the GET's), and a 304,
/// whose 200 may have been.
pub fn varies(request: &HeaderMap, status: StatusCode, response: &HeaderMap) -> bool {
    if status == StatusCode::NOT_MODIFIED {
        return !no_transform(request) && !no_transform(response);
    }
    if !matches!(status.as_u16(), 200 | 403 | 404)
        || response.contains_key(CONTENT_RANGE)
        || no_transform(request)
        || no_transform(response)
    {
        return false;
    }
    let encoded = response
        .get_all(CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return false;
    }
    let short = response
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|len| len <= MIN_LENGTH);
    !short
        && response
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(text_type)
}

fn no_transform(headers: &HeaderMap) -> bool {
    headers.get_all(CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        })
    })
}

/// Text worth compressing: `text/*` but event streams, JSON, JavaScript,
/// XML and their `+json` / `+xml` kinds (SVG among them). Not the streaming
/// kinds (`text/event-stream`, NDJSON): the encoders hold what they are given
/// until a block fills, so events would wait.
fn text_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    match kind {
        "text" => sub != "event-stream",
        "application" | "image" => {
            sub.ends_with("+json")
                || sub.ends_with("+xml")
                || (kind == "application"
                    && matches!(
                        sub,
                        "json"
                            | "javascript"
                            | "ecmascript"
                            | "x-javascript"
                            | "xml"
                            | "graphql"
                            | "wasm"
                    ))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(ae: &str) -> Option<&'static str> {
        negotiate(Some(&HeaderValue::from_str(ae).unwrap())).map(Coding::name)
    }

    #[test]
    fn the_highest_q_wins_and_ties_go_to_the_cheapest_good_coding() {
        assert_eq!(pick("gzip"), Some("gzip"));
        assert_eq!(pick("gzip, deflate, br, zstd"), Some("zstd"));
        assert_eq!(pick("gzip, br"), Some("br"));
        assert_eq!(pick("gzip;q=1.0, br;q=0.5, zstd;q=0.8"), Some("gzip"));
        assert_eq!(pick("br;q=0.9, gzip;q=0.95"), Some("gzip"));
        assert_eq!(pick("GZIP ; Q=0.5"), Some("gzip"));
        assert_eq!(pick("x-gzip"), Some("gzip"));
    }

    #[test]
    fn zero_refuses_a_coding_and_star_speaks_for_the_unnamed() {
        assert_eq!(pick("zstd;q=0, br;q=0, gzip"), Some("gzip"));
        assert_eq!(pick("gzip;q=0"), None);
        assert_eq!(pick("*"), Some("zstd"));
        assert_eq!(pick("*;q=0.1, zstd;q=0, br;q=0"), Some("gzip"));
        assert_eq!(pick("*;q=0"), None);
        assert_eq!(pick("gzip;q=0.2, *;q=0.5"), Some("zstd"));
        assert_eq!(pick("identity"), None);
        assert_eq!(pick("deflate, compress"), None);
        assert_eq!(pick(""), None);
        assert_eq!(negotiate(None), None);
    }

    #[test]
    fn a_malformed_q_drops_its_item_not_the_header() {
        assert_eq!(pick("zstd;q=2, gzip"), Some("gzip"));
        assert_eq!(pick("zstd;q=abc, br;q=0.1234, gzip;q=0.5"), Some("gzip"));
        assert_eq!(pick("zstd;q=-1"), None);
        assert_eq!(pick("br;q=.5"), None);
        assert_eq!(pick(",,, ;;, gzip"), Some("gzip"));
    }

    fn response(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn ok(pairs: &[(&str, &str)]) -> bool {
        compressible(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::OK,
            &response(pairs),
        )
    }

    #[test]
    fn text_over_a_kibibyte_is_compressed() {
        assert!(ok(&[
            ("content-type", "application/json"),
            ("content-length", "20480")
        ]));
        assert!(ok(&[("content-type", "text/html; charset=utf-8")]));
        assert!(ok(&[
            ("content-type", "image/svg+xml"),
            ("content-length", "1025")
        ]));
        assert!(ok(&[("content-type", "application/problem+json")]));
        assert!(ok(&[("content-type", "Application/JSON")]));
    }

    #[test]
    fn short_binary_encoded_or_untyped_answers_are_left_alone() {
        assert!(!ok(&[
            ("content-type", "application/json"),
            ("content-length", "1024")
        ]));
        assert!(!ok(&[
            ("content-type", "image/png"),
            ("content-length", "20480")
        ]));
        assert!(!ok(&[("content-type", "application/octet-stream")]));
        assert!(!ok(&[("content-type", "application/grpc")]));
        assert!(!ok(&[("content-type", "application/x-ndjson")]));
        assert!(!ok(&[("content-type", "text/event-stream")]));
        assert!(!ok(&[("content-length", "20480")]));
        assert!(!ok(&[
            ("content-type", "text/plain"),
            ("content-encoding", "gzip")
        ]));
        assert!(!ok(&[
            ("content-type", "text/plain"),
            ("content-encoding", "br")
        ]));
        assert!(ok(&[
            ("content-type", "text/plain"),
            ("content-encoding", "identity")
        ]));
        assert!(!ok(&[
            ("content-type", "text/plain"),
            ("cache-control", "public, No-Transform")
        ]));
        assert!(!ok(&[
            ("content-type", "text/plain"),
            ("content-range", "bytes 0-9/100")
        ]));
    }

    #[test]
    fn only_whole_answers_with_a_body_of_their_own_are_compressed() {
        let text = response(&[("content-type", "text/plain")]);
        let none = HeaderMap::new();
        for status in [200, 403, 404] {
            assert!(compressible(
                &Method::GET,
                &none,
                StatusCode::from_u16(status).unwrap(),
                &text
            ));
        }
        for status in [204, 206, 301, 304, 500, 502] {
            assert!(!compressible(
                &Method::GET,
                &none,
                StatusCode::from_u16(status).unwrap(),
                &text
            ));
        }
        assert!(!compressible(&Method::HEAD, &none, StatusCode::OK, &text));
        assert!(
            varies(&none, StatusCode::OK, &text),
            "a HEAD says Vary as its GET"
        );
        assert!(varies(&none, StatusCode::NOT_MODIFIED, &HeaderMap::new()));
        let asks = response(&[("cache-control", "no-transform")]);
        assert!(!compressible(&Method::GET, &asks, StatusCode::OK, &text));
    }
}
