//! What a request may carry and what the balancer adds or strips on its way
//! through: framing and size checks, hop-by-hop headers (RFC 9110 §7.6.1), and
//! the forwarding headers that tell the upstream who the client is. Pure
//! functions over header structures, no I/O.

use std::net::IpAddr;

use http::header::{HeaderMap, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING, UPGRADE};
use pingora::http::RequestHeader;

/// Hop-by-hop headers, never forwarded. `Transfer-Encoding` is left to
/// Pingora, which re-frames bodies itself.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
];

/// Why a request is refused before anything else happens.
pub fn check_request(
    req: &RequestHeader,
    raw: Option<&[u8]>,
    max_header_bytes: u64,
    max_body: u64,
) -> Option<u16> {
    let headers = &req.headers;
    let te = headers.contains_key(TRANSFER_ENCODING);
    let mut cls = headers.get_all(CONTENT_LENGTH).iter();
    let first_cl = cls.next();
    // HTTP/1 keeps the header bytes as received: Pingora drops Content-Length
    // when Transfer-Encoding is present, so only they still show both.
    let raw_cl = raw.is_some_and(|r| raw_has_header(r, b"content-length"));
    if te && (first_cl.is_some() || raw_cl) {
        return Some(400); // a request smuggling vector: refuse rather than guess
    }
    let size = match raw {
        Some(r) => r.len(),
        None => {
            req.method.as_str().len()
                + req.uri.path_and_query().map_or(1, |p| p.as_str().len())
                + headers
                    .iter()
                    .map(|(k, v)| k.as_str().len() + v.len() + 4)
                    .sum::<usize>()
        }
    };
    if size as u64 > max_header_bytes {
        return Some(431);
    }
    if let Some(cl) = first_cl {
        match cl.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(n) if n > max_body => return Some(413),
            Some(_) => {}
            None => return Some(400),
        }
    }
    None
}

/// Whether the raw header block has a field called `name` (lowercase).
fn raw_has_header(raw: &[u8], name: &[u8]) -> bool {
    raw.split(|&b| b == b'\n').skip(1).any(|line| {
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name)
            && line[name.len()..].trim_ascii_start().starts_with(b":")
    })
}

pub fn is_upgrade(req: &RequestHeader) -> bool {
    req.headers.contains_key(UPGRADE)
}

/// The hop-by-hop headers present, and those the `Connection` header names,
/// to remove before forwarding. An upgrade (WebSocket) keeps `Connection` and
/// `Upgrade`; framing and `Host` stay Pingora's. Empty (no allocation) for the
/// common request that carries none.
pub fn hop_by_hop(headers: &HeaderMap, upgrade: bool) -> Vec<String> {
    let named = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase());
    let fixed = HOP_BY_HOP
        .iter()
        .filter(|h| headers.contains_key(**h))
        .map(|h| h.to_string());
    let upgrade_header = (!upgrade && headers.contains_key(UPGRADE)).then(|| "upgrade".to_string());
    let mut names: Vec<String> = named
        .chain(fixed)
        .chain(upgrade_header)
        .filter(|n| !n.is_empty())
        .filter(|n| !matches!(n.as_str(), "transfer-encoding" | "content-length" | "host"))
        .filter(|n| !(upgrade && matches!(n.as_str(), "connection" | "upgrade")))
        .filter(|n| headers.contains_key(n.as_str()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Sets the forwarding headers on a request going upstream. From a `trusted`
/// peer, `X-Forwarded-For` is extended and its `X-Forwarded-Proto`,
/// `X-Forwarded-Host`, `X-Real-IP` and `Forwarded` are kept; from anyone else
/// they are replaced by what the balancer saw (`Forwarded` is dropped), since
/// any client could forge them.
pub fn set_forwarding(
    req: &mut RequestHeader,
    peer: Option<IpAddr>,
    trusted: bool,
    scheme: &'static str,
) -> pingora::Result<()> {
    if let Some(ip) = peer {
        let ip = ip.to_string();
        let prior: Vec<&str> = if trusted {
            req.headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        } else {
            Vec::new()
        };
        let chain = if prior.is_empty() {
            ip.clone()
        } else {
            format!("{}, {ip}", prior.join(", "))
        };
        req.insert_header("x-forwarded-for", chain)?;
        if !(trusted && req.headers.contains_key("x-real-ip")) {
            req.insert_header("x-real-ip", ip)?;
        }
    }
    if !(trusted && req.headers.contains_key("x-forwarded-proto")) {
        req.insert_header("x-forwarded-proto", scheme)?;
    }
    if !trusted {
        req.remove_header("forwarded");
        match req.headers.get(HOST).cloned() {
            Some(host) => req.insert_header("x-forwarded-host", host)?,
            None => {
                req.remove_header("x-forwarded-host");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/path?q=1", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn get<'a>(r: &'a RequestHeader, name: &str) -> Option<&'a str> {
        r.headers.get(name).and_then(|v| v.to_str().ok())
    }

    const PEER: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)));

    #[test]
    fn an_untrusted_peer_gets_its_claims_replaced() {
        let mut r = req(&[
            ("host", "shop.example"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        set_forwarding(&mut r, PEER, false, "http").unwrap();
        assert_eq!(get(&r, "x-forwarded-for"), Some("192.0.2.7"));
        assert_eq!(get(&r, "x-real-ip"), Some("192.0.2.7"));
        assert_eq!(get(&r, "x-forwarded-proto"), Some("http"));
        assert_eq!(get(&r, "x-forwarded-host"), Some("shop.example"));
        assert_eq!(get(&r, "forwarded"), None);
    }

    #[test]
    fn a_trusted_peer_extends_the_chain_and_keeps_its_claims() {
        let mut r = req(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "203.0.113.1"),
        ]);
        set_forwarding(&mut r, PEER, true, "http").unwrap();
        assert_eq!(
            get(&r, "x-forwarded-for"),
            Some("203.0.113.1, 10.0.0.2, 192.0.2.7")
        );
        assert_eq!(get(&r, "x-forwarded-proto"), Some("https"));
        assert_eq!(get(&r, "x-real-ip"), Some("203.0.113.1"));
    }

    #[test]
    fn hop_by_hop_headers_are_found_including_those_connection_names() {
        let r = req(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("content-length", "0"),
        ]);
        assert_eq!(
            hop_by_hop(&r.headers, false),
            ["connection", "keep-alive", "te", "upgrade", "x-secret"]
        );
        // An upgrade keeps what makes it one.
        assert_eq!(
            hop_by_hop(&r.headers, true),
            ["keep-alive", "te", "x-secret"]
        );
        assert!(hop_by_hop(&req(&[("accept", "*/*")]).headers, false).is_empty());
    }

    #[test]
    fn framing_and_sizes_are_checked() {
        let ok = req(&[("content-length", "10")]);
        assert_eq!(check_request(&ok, None, 1024, 100), None);
        let big = req(&[("content-length", "101")]);
        assert_eq!(check_request(&big, None, 1024, 100), Some(413));
        let bad = req(&[("content-length", "ten")]);
        assert_eq!(check_request(&bad, None, 1024, 100), Some(400));
        let both = req(&[("transfer-encoding", "chunked")]);
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length : 5\r\n\r\n";
        assert_eq!(check_request(&both, Some(raw), 1024, 100), Some(400));
        assert_eq!(check_request(&both, None, 1024, 100), None);
        let long = req(&[("x-filler", &"a".repeat(2000))]);
        assert_eq!(check_request(&long, None, 1024, 100), Some(431));
    }
}
