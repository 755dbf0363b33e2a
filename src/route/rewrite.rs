//! What a route does to a request on its way upstream and to the answer on
//! its way back: the path's prefix taken off, headers set and removed, and
//! the `Location` of a redirect.

use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Uri};
use pingora::http::{RequestHeader, ResponseHeader};

use super::pattern;
use crate::config::HeaderEdits;

/// `uri` with `prefix` (normalized) taken off its path, the query kept; None
/// when the path does not start with it.
pub fn strip(prefix: &str, uri: &Uri) -> Option<Uri> {
    let path = pattern::strip_path(prefix, uri.path())?;
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq).ok()?);
    Uri::from_parts(parts).ok()
}

/// A header block that keeps its own bookkeeping (Pingora's keep the case
/// of each name beside the map, so they are edited through their methods).
pub trait Headers {
    fn remove(&mut self, name: &HeaderName);
    fn set(&mut self, name: &HeaderName, value: &HeaderValue);
}

impl Headers for RequestHeader {
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn set(&mut self, name: &HeaderName, value: &HeaderValue) {
        // A valid name and value cannot fail.
        let _ = self.insert_header(name.clone(), value.clone());
    }
}

impl Headers for ResponseHeader {
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn set(&mut self, name: &HeaderName, value: &HeaderValue) {
        let _ = self.insert_header(name.clone(), value.clone());
    }
}

/// Applies `edits`: removals first, then each set replaces every value the
/// header had.
pub fn edit(edits: &HeaderEdits, headers: &mut impl Headers) {
    for name in &edits.remove {
        headers.remove(name);
    }
    for (name, value) in &edits.set {
        headers.set(name, value);
    }
}

/// A redirect's `Location`: `to` with `{uri}` replaced by the request's path
/// and query.
pub fn location(to: &str, uri: &Uri) -> String {
    if to.contains("{uri}") {
        let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        to.replace("{uri}", pq)
    } else {
        to.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_keeps_the_query_and_a_leading_slash() {
        let uri: Uri = "/v1/users?id=7".parse().unwrap();
        assert_eq!(strip("/v1", &uri).unwrap(), "/users?id=7");
        let uri: Uri = "/v1".parse().unwrap();
        assert_eq!(strip("/v1", &uri).unwrap(), "/");
        let uri: Uri = "/v10/x".parse().unwrap();
        assert_eq!(strip("/v1", &uri), None);
    }

    #[test]
    fn edits_remove_then_set() {
        let mut h = RequestHeader::build("GET", b"/", None).unwrap();
        h.append_header("X-Debug", "1").unwrap();
        h.append_header("X-Env", "a").unwrap();
        h.append_header("X-Env", "b").unwrap();
        let edits = HeaderEdits {
            set: vec![(
                HeaderName::from_static("x-env"),
                HeaderValue::from_static("prod"),
            )],
            remove: vec![HeaderName::from_static("x-debug")],
        };
        edit(&edits, &mut h);
        assert!(h.headers.get("x-debug").is_none());
        assert_eq!(h.headers.get_all("x-env").iter().count(), 1);
        assert_eq!(h.headers["x-env"], "prod");
        // The wire form agrees with the map.
        let mut wire = bytes::BytesMut::new();
        h.header_to_h1_wire(&mut wire);
        let text = String::from_utf8_lossy(&wire).to_ascii_lowercase();
        assert!(
            text.contains("x-env: prod") && !text.contains("x-debug"),
            "{text}"
        );
    }

    #[test]
    fn a_redirect_carries_the_uri_where_asked() {
        let uri: Uri = "/a/b?c=1".parse().unwrap();
        assert_eq!(
            location("https://x.example{uri}", &uri),
            "https://x.example/a/b?c=1"
        );
        assert_eq!(location("https://x.example/", &uri), "https://x.example/");
    }
}
