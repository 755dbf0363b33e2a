//! A route's `access.forward_auth` (Traefik's ForwardAuth, nginx's
//! `auth_request`): each request is first put to a service as a GET with
//! the client's headers and where it was going (`X-Forwarded-Method`,
//! `-Proto`, `-Host`, `-Uri`, `-For`). A 2xx lets it through, with the
//! `copy_headers` of that answer set on it (a client's own removed); any
//! other answer goes back to the client as the service gave it.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use pingora::http::RequestHeader;

use crate::config::ForwardAuthConfig;
use crate::forwarding::{self, Client};

/// The largest answer of the service passed to a client (a login page, a
/// JSON error); beyond it the service is taken as broken.
pub const MAX_ANSWER: usize = 64 * 1024;

/// What the service said about one request.
#[derive(Debug)]
pub enum Verdict {
    /// Let it through, with these headers set.
    Pass(Vec<(HeaderName, HeaderValue)>),
    /// This answer goes to the client instead.
    Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    /// No answer in time, or not one to pass on: why.
    Failed(String),
}

/// One route's service, with its pooled connections.
#[derive(Debug)]
pub struct ForwardAuth {
    conf: ForwardAuthConfig,
    client: reqwest::Client,
}

impl ForwardAuth {
    pub fn new(conf: &ForwardAuthConfig, connect_timeout: Option<Duration>) -> Self {
        let client = reqwest::Client::builder()
            // The service's redirect (to a login page) is for the client.
            .redirect(reqwest::redirect::Policy::none())
            // Never through an `HTTP_PROXY` of the environment: the request
            // carries the client's credentials.
            .no_proxy()
            .connect_timeout(connect_timeout.unwrap_or(Duration::from_secs(1)))
            .timeout(conf.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .expect("a client without custom TLS settings builds");
        ForwardAuth {
            conf: conf.clone(),
            client,
        }
    }

    /// The names a client may not set itself on this route.
    pub fn copied(&self) -> &[HeaderName] {
        &self.conf.copy_headers
    }

    /// Puts `req` (from `client`, over `scheme`) to the service.
    pub async fn check(
        &self,
        req: &RequestHeader,
        client: Option<&Client>,
        scheme: &'static str,
        digest: Option<&pingora::protocols::Digest>,
    ) -> Verdict {
        let headers = match asked(req, client, scheme, digest) {
            Ok(h) => h,
            Err(e) => return Verdict::Failed(e.to_string()),
        };
        let sent = self.client.get(&self.conf.url).headers(headers).send();
        let mut resp = match sent.await {
            Ok(r) => r,
            Err(e) => return Verdict::Failed(describe(&e)),
        };
        let status = resp.status();
        if status.is_success() {
            let set = self
                .conf
                .copy_headers
                .iter()
                .flat_map(|name| {
                    resp.headers()
                        .get_all(name)
                        .iter()
                        .map(|v| (name.clone(), v.clone()))
                })
                .collect();
            return Verdict::Pass(set);
        }
        let mut body = BytesMut::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_ANSWER => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => {
                    return Verdict::Failed(format!("its {status} answer is over 64 KiB"))
                }
                Ok(None) => break,
                Err(e) => return Verdict::Failed(describe(&e)),
            }
        }
        let mut headers = resp.headers().clone();
        headers.retain_framing_free();
        Verdict::Answer {
            status,
            headers,
            body: body.freeze(),
        }
    }
}

/// The headers the service is asked with: the client's own but those about
/// the connection or the body, the forwarding headers the upstream would
/// get, and the request's method and target.
fn asked(
    req: &RequestHeader,
    client: Option<&Client>,
    scheme: &'static str,
    digest: Option<&pingora::protocols::Digest>,
) -> pingora::Result<HeaderMap> {
    let mut copy = req.clone();
    // What says where the request was going is ours alone to say (nginx
    // `auth_request` setups read `X-Original-URL`), and so is the client's
    // certificate: the service sees what the upstream would.
    forwarding::remove_claims(&mut copy, &ORIGINAL);
    forwarding::set_forwarding(&mut copy, client, scheme)?;
    crate::tls::client_cert::forward(digest, &mut copy)?;
    let mut headers = copy.headers.clone();
    headers.retain_framing_free();
    let method = HeaderValue::from_str(req.method.as_str()).expect("a method is a valid value");
    headers.insert("x-forwarded-method", method.clone());
    headers.insert("x-original-method", method);
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    if let Ok(uri) = HeaderValue::from_str(target) {
        headers.insert("x-forwarded-uri", uri);
    }
    if !headers.contains_key("x-forwarded-host") {
        let host = req
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                req.headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            });
        if let Some(v) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
            headers.insert("x-forwarded-host", v);
        }
    }
    let host = headers
        .get("x-forwarded-host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    if let Ok(url) = HeaderValue::from_str(&format!("{scheme}://{host}{target}")) {
        headers.insert("x-original-url", url);
    }
    Ok(headers)
}

/// Headers about the request's destination a client may not set for the
/// service.
const ORIGINAL: [HeaderName; 6] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-original-uri"),
    HeaderName::from_static("x-original-method"),
    HeaderName::from_static("x-forwarded-method"),
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-forwarded-prefix"),
];

/// Removing what is about a connection or a message's framing.
trait FramingFree {
    fn retain_framing_free(&mut self);
}

impl FramingFree for HeaderMap {
    fn retain_framing_free(&mut self) {
        let mut drop: Vec<HeaderName> = forwarding::hop_by_hop(self, false);
        drop.extend(
            self.keys()
                .filter(|n| forwarding::is_framing_or_hop(n))
                .cloned(),
        );
        for name in drop {
            self.remove(name);
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "no answer in time".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        "its answer broke off".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_sees_the_request_but_not_its_framing() {
        let mut req = RequestHeader::build("POST", b"/api/items?x=1", None).unwrap();
        for (k, v) in [
            ("host", "shop.example"),
            ("authorization", "Bearer t"),
            ("cookie", "s=1"),
            ("content-length", "5"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "hop"),
            ("te", "trailers"),
        ] {
            req.append_header(k, v).unwrap();
        }
        let client = Client::new("203.0.113.7".parse().unwrap(), &[]);
        req.append_header("x-original-url", "https://evil/")
            .unwrap();
        req.append_header("x_forwarded_uri", "/forged").unwrap();
        req.append_header("x-client-cert-subject", "CN=forged")
            .unwrap();
        let h = asked(&req, Some(&client), "https", None).unwrap();
        assert_eq!(h["authorization"], "Bearer t");
        assert_eq!(h["cookie"], "s=1");
        assert_eq!(h["x-forwarded-method"], "POST");
        assert_eq!(h["x-forwarded-uri"], "/api/items?x=1");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-for"], "203.0.113.7");
        assert_eq!(h["x-original-url"], "https://shop.example/api/items?x=1");
        assert_eq!(h["x-original-method"], "POST");
        for gone in [
            "host",
            "content-length",
            "connection",
            "x-secret",
            "te",
            "x_forwarded_uri",
            "x-client-cert-subject",
        ] {
            assert!(!h.contains_key(gone), "{gone} was sent");
        }
    }
}
