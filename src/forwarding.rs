//! What a request may carry and what the balancer adds or strips on its way
//! through: framing and size checks, hop-by-hop headers (RFC 9110 §7.6.1), and
//! the forwarding headers that tell the upstream who the client is. Pure
//! functions over header structures, no I/O.

use std::net::IpAddr;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRANSFER_ENCODING, UPGRADE,
};
use pingora::http::RequestHeader;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Whether `name` is hop-by-hop in itself (RFC 9110 §7.6.1). `Transfer-Encoding`
/// is left to Pingora, which re-frames bodies itself; an upgrade keeps
/// `Connection` and `Upgrade`.
fn is_hop_by_hop(name: &HeaderName, upgrade: bool) -> bool {
    if name == CONNECTION || name == UPGRADE {
        return !upgrade;
    }
    name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == PROXY_AUTHENTICATE
        || name == PROXY_AUTHORIZATION
        || name == TE
}

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
    if te && (first_cl.is_some() || raw.is_some_and(|r| raw_has_header(r, b"content-length"))) {
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

/// The hop-by-hop headers present, and those the `Connection` header names,
/// to remove before forwarding. Framing (`Content-Length`, `Transfer-Encoding`)
/// and `Host` stay Pingora's. One pass over the names present; no allocation
/// for the common message that carries none.
pub fn hop_by_hop(headers: &HeaderMap, upgrade: bool) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n, upgrade))
        .cloned()
        .collect();
    for token in headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let Ok(name) = HeaderName::from_bytes(token.trim().as_bytes()) else {
            continue;
        };
        let protected = name == CONTENT_LENGTH
            || name == TRANSFER_ENCODING
            || name == HOST
            || (upgrade && (name == CONNECTION || name == UPGRADE));
        if !protected && headers.contains_key(&name) && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// What the balancer knows of the client at the other end of a connection,
/// worked out once per connection and kept across its requests.
#[derive(Debug, Clone)]
pub struct Client {
    pub ip: IpAddr,
    /// The address as a header value, formatted once.
    text: HeaderValue,
    /// Inside `trusted_proxies`: its forwarding headers are believed.
    pub trusted: bool,
}

impl Client {
    pub fn new(ip: IpAddr, trusted_proxies: &[ipnet::IpNet]) -> Self {
        Client {
            ip,
            text: HeaderValue::from_str(&ip.to_string()).expect("an IP address is a header value"),
            trusted: trusted_proxies.iter().any(|net| net.contains(&ip)),
        }
    }
}

/// Sets the forwarding headers on a request going upstream. `X-Forwarded-For`
/// and `X-Forwarded-Proto` are always set. From a trusted client,
/// `X-Forwarded-For` is extended and the rest it sent is kept; from anyone
/// else, who could forge them, `X-Forwarded-For` starts afresh and a claimed
/// `X-Forwarded-Proto`, `X-Real-IP` or `X-Forwarded-Host` is replaced by what
/// the balancer saw (`Forwarded` is dropped).
pub fn set_forwarding(
    req: &mut RequestHeader,
    client: Option<&Client>,
    scheme: &'static str,
) -> pingora::Result<()> {
    let trusted = client.is_some_and(|c| c.trusted);
    if let Some(c) = client {
        // Names as static strings: Pingora's insert keeps a case-preserving
        // name map, and a static name costs it no copy.
        match req.headers.get(&X_FORWARDED_FOR) {
            Some(_) if trusted => {
                let prior: Vec<&str> = req
                    .headers
                    .get_all(&X_FORWARDED_FOR)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                let chain = format!("{}, {}", prior.join(", "), c.ip);
                req.insert_header("x-forwarded-for", chain)?;
            }
            _ => req.insert_header("x-forwarded-for", c.text.clone())?,
        }
        if !trusted && req.headers.contains_key(&X_REAL_IP) {
            req.insert_header("x-real-ip", c.text.clone())?;
        }
    }
    if !(trusted && req.headers.contains_key(&X_FORWARDED_PROTO)) {
        req.insert_header("x-forwarded-proto", HeaderValue::from_static(scheme))?;
    }
    if !trusted {
        if req.headers.contains_key(&FORWARDED) {
            req.remove_header(&FORWARDED);
        }
        if req.headers.contains_key(&X_FORWARDED_HOST) {
            match req.headers.get(HOST).cloned() {
                Some(host) => req.insert_header("x-forwarded-host", host)?,
                None => {
                    req.remove_header(&X_FORWARDED_HOST);
                }
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

    fn client(trusted: bool) -> Client {
        let ip = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));
        let nets: Vec<ipnet::IpNet> = if trusted {
            vec!["192.0.2.0/24".parse().unwrap()]
        } else {
            vec!["10.0.0.0/8".parse().unwrap()]
        };
        Client::new(ip, &nets)
    }

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
        set_forwarding(&mut r, Some(&client(false)), "http").unwrap();
        assert_eq!(get(&r, "x-forwarded-for"), Some("192.0.2.7"));
        assert_eq!(get(&r, "x-real-ip"), Some("192.0.2.7"));
        assert_eq!(get(&r, "x-forwarded-proto"), Some("http"));
        assert_eq!(get(&r, "x-forwarded-host"), Some("shop.example"));
        assert_eq!(get(&r, "forwarded"), None);
        // Nothing claimed, nothing added beyond the two standard headers.
        let mut plain = req(&[("host", "shop.example")]);
        set_forwarding(&mut plain, Some(&client(false)), "http").unwrap();
        assert_eq!(plain.headers.len(), 3);
    }

    #[test]
    fn a_trusted_peer_extends_the_chain_and_keeps_its_claims() {
        let mut r = req(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "203.0.113.1"),
        ]);
        set_forwarding(&mut r, Some(&client(true)), "http").unwrap();
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
