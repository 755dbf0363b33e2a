//! What a request may carry and what the balancer adds or strips on its way
//! through: framing and size checks, hop-by-hop headers (RFC 9110 §7.6.1), and
//! the forwarding headers that tell the upstream who the client is. Pure
//! functions over header structures, no I/O.

use std::net::IpAddr;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRANSFER_ENCODING, UPGRADE,
};
use pingora::http::{RequestHeader, ResponseHeader};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const TRUE_CLIENT_IP: HeaderName = HeaderName::from_static("true-client-ip");

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

/// Whether `name` is about a connection or a message's framing rather than
/// the request (hop-by-hop, `Connection`, `Upgrade`, `Content-Length`,
/// `Transfer-Encoding`, `Host`): never copied from one exchange into another.
pub fn is_framing_or_hop(name: &HeaderName) -> bool {
    is_hop_by_hop(name, false)
        || name == http::header::CONTENT_LENGTH
        || name == http::header::TRANSFER_ENCODING
        || name == http::header::HOST
        || name == http::header::TRAILER
        || name == http::header::EXPECT
}

/// Removes the headers named `names` from `req`, and any spelled with `_`
/// for `-` (`X_Auth_User`): CGI, WSGI, PHP and Rack read both spellings as
/// one variable, so either could pass for a header only we may set.
pub fn remove_claims(req: &mut RequestHeader, names: &[HeaderName]) {
    for name in names {
        req.remove_header(name);
    }
    let spelled: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .filter(|k| {
            let dashed = k.as_str().replace('_', "-");
            names.iter().any(|n| n.as_str() == dashed)
        })
        .cloned()
        .collect();
    for name in spelled {
        req.remove_header(&name);
    }
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
    if !host_ok(req) {
        return Some(400);
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

/// Why an upstream's response header cannot be passed on, if it cannot: a 101
/// to a request that asked for no upgrade (HAProxy refuses it too), or a
/// transfer coding other than chunked last (nginx: "unknown Transfer-Encoding"),
/// which would turn into a close-delimited body.
pub fn check_response(
    resp: &pingora::http::ResponseHeader,
    upgrade_asked: bool,
) -> Option<&'static str> {
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS && !upgrade_asked {
        return Some("upstream switched protocols unasked");
    }
    let mut codings = resp.headers.get_all(TRANSFER_ENCODING).iter().peekable();
    if codings.peek().is_some() {
        let last = codings
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .last();
        if !last.is_some_and(|c| c.eq_ignore_ascii_case("chunked")) {
            return Some("upstream answered with an unknown transfer coding");
        }
    }
    None
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host`, and it must
/// be a host name or address with an optional port, nothing else.
fn host_ok(req: &RequestHeader) -> bool {
    let mut hosts = req.headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) => req.version != http::Version::HTTP_11,
        (Some(h), None) => valid_host(h.as_bytes()),
        (Some(_), Some(_)) => false,
    }
}

/// `name`, `name:port`, `[v6]` or `[v6]:port`, in plain ASCII.
fn valid_host(v: &[u8]) -> bool {
    let (name, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let (addr, after) = (&rest[..end], &rest[end + 1..]);
        if addr.is_empty()
            || !addr
                .iter()
                .all(|b| b.is_ascii_hexdigit() || b":.".contains(b))
        {
            return false;
        }
        match after {
            [] => return true,
            [b':', port @ ..] => (&b"v6"[..], Some(port)),
            _ => return false,
        }
    } else {
        match v.iter().rposition(|&b| b == b':') {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        }
    };
    let name_ok = !name.is_empty()
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(b));
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(p)
                .ok()
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|n| n <= 65535)
    });
    name_ok && port_ok
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

/// Where `lb.tls.redirect_http` sends a plain request for `host` (its port,
/// if any, dropped) and `path`: the same host and path on the HTTPS port.
pub fn https_location(host: &str, tls_port: u16, path: &str) -> String {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or(host, |(ip, _)| ip),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = if host.starts_with('[') {
        format!("[{name}]")
    } else {
        name.to_string()
    };
    let name = if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    };
    if tls_port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{tls_port}{path}")
    }
}

/// The 308 that `lb.tls.redirect_http` answers `req` with: the same host and
/// path on the HTTPS port `tls_port`.
pub fn https_redirect(req: &RequestHeader, tls_port: u16) -> pingora::Result<ResponseHeader> {
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(req.uri.host())
        .unwrap_or("");
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut resp = ResponseHeader::build(308, Some(2))?;
    resp.insert_header(http::header::LOCATION, https_location(host, tls_port, path))?;
    resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
    Ok(resp)
}

/// The forwarding headers an untrusted client sent itself.
#[derive(Default)]
struct Claims {
    real_ip: bool,
    forwarded_host: bool,
    /// `Forwarded`, `X-Forwarded-Port` or `True-Client-IP`.
    others: bool,
}

/// Sets the forwarding headers on a request going upstream. `X-Forwarded-For`
/// and `X-Forwarded-Proto` are always set. From a trusted client,
/// `X-Forwarded-For` is extended and the rest it sent is kept; from anyone
/// else, who could forge them, `X-Forwarded-For` starts afresh and a claimed
/// `X-Forwarded-Proto`, `X-Real-IP` or `X-Forwarded-Host` is replaced by what
/// the balancer saw (`Forwarded`, `X-Forwarded-Port` and `True-Client-IP` are
/// dropped).
pub fn set_forwarding(
    req: &mut RequestHeader,
    client: Option<&Client>,
    scheme: &'static str,
) -> pingora::Result<()> {
    let trusted = client.is_some_and(|c| c.trusted);
    // Which claims an untrusted client made, in one pass over the names:
    // most requests carry none, and a look at each of a few names costs
    // less than a lookup for each claim.
    let mut claims = Claims::default();
    if !trusted {
        for name in req.headers.keys() {
            claims.real_ip |= name == X_REAL_IP;
            claims.forwarded_host |= name == X_FORWARDED_HOST;
            claims.others |=
                name == FORWARDED || name == X_FORWARDED_PORT || name == TRUE_CLIENT_IP;
        }
    }
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
        if claims.real_ip {
            req.insert_header("x-real-ip", c.text.clone())?;
        }
    }
    if !(trusted && req.headers.contains_key(&X_FORWARDED_PROTO)) {
        req.insert_header("x-forwarded-proto", HeaderValue::from_static(scheme))?;
    }
    if !trusted {
        if claims.others {
            for claim in [&FORWARDED, &X_FORWARDED_PORT, &TRUE_CLIENT_IP] {
                if req.headers.contains_key(claim) {
                    req.remove_header(claim);
                }
            }
        }
        if claims.forwarded_host {
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
        if !headers.iter().any(|(k, _)| *k == "host") {
            r.append_header("host", "lb.example").unwrap();
        }
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
        let mut claims = req(&[("x-forwarded-port", "443"), ("true-client-ip", "6.6.6.6")]);
        set_forwarding(&mut claims, Some(&client(false)), "http").unwrap();
        assert_eq!(get(&claims, "x-forwarded-port"), None);
        assert_eq!(get(&claims, "true-client-ip"), None);
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
    fn broken_response_headers_are_found() {
        use pingora::http::ResponseHeader;
        let resp = |status: u16, te: Option<&str>| {
            let mut r = ResponseHeader::build(status, None).unwrap();
            if let Some(te) = te {
                r.append_header("transfer-encoding", te).unwrap();
            }
            r
        };
        assert!(check_response(&resp(101, None), false).is_some());
        assert_eq!(check_response(&resp(101, None), true), None);
        assert!(check_response(&resp(200, Some("identity")), false).is_some());
        assert!(check_response(&resp(200, Some("chunked, gzip")), false).is_some());
        assert_eq!(
            check_response(&resp(200, Some("gzip, chunked")), false),
            None
        );
        assert_eq!(check_response(&resp(200, Some("Chunked")), false), None);
        assert_eq!(check_response(&resp(200, None), false), None);
    }

    #[test]
    fn the_host_header_is_checked() {
        let with_host = |h: &[u8]| {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            r.append_header("host", HeaderValue::from_bytes(h).unwrap())
                .unwrap();
            check_request(&r, None, 4096, 100)
        };
        for good in [
            &b"example.com"[..],
            b"example.com:8080",
            b"127.0.0.1",
            b"[::1]",
            b"[::1]:443",
            b"under_score.local",
        ] {
            assert_eq!(with_host(good), None, "{}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b""[..],
            b"a.example, b.example",
            b"example.com:99999",
            b"example.com:",
            b"example.com:80a",
            b"exa mple.com",
            b"[::1",
            b"[::1]x",
            b"caf\xc3\xa9.example",
        ] {
            assert_eq!(
                with_host(bad),
                Some(400),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // HTTP/1.1 needs one Host; HTTP/1.0 may go without.
        let none = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(check_request(&none, None, 4096, 100), Some(400));
        let mut old = RequestHeader::build("GET", b"/", None).unwrap();
        old.set_version(http::Version::HTTP_10);
        assert_eq!(check_request(&old, None, 4096, 100), None);
        let mut two = RequestHeader::build("GET", b"/", None).unwrap();
        two.append_header("host", "a.example").unwrap();
        two.append_header("host", "b.example").unwrap();
        assert_eq!(check_request(&two, None, 4096, 100), Some(400));
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

    #[test]
    fn plain_requests_are_sent_to_the_same_host_and_path_over_https() {
        assert_eq!(
            https_location("a.test:8080", 443, "/x?y=1"),
            "https://a.test/x?y=1"
        );
        assert_eq!(https_location("a.test", 8443, "/"), "https://a.test:8443/");
        assert_eq!(
            https_location("[::1]:8080", 8443, "/p"),
            "https://[::1]:8443/p"
        );
        assert_eq!(https_location("", 443, "/"), "https://localhost/");
    }
}
