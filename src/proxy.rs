//! The Pingora `ProxyHttp` implementation. Each phase delegates to the modules
//! that own the decision:
//!
//! ```text
//! request ─► request_filter: framing, header size and body size limits (400/431/413)
//!   ─► upstream_peer ── balancer.select(eligible, not yet tried) ──► none: 503
//!               │               (eligible = healthy, not drained, breaker admits)
//!               ├─ connect fails ─► fail_to_connect: breaker failure, retry on
//!               ▼                   another upstream while `lb.retries` allows
//!            upstream_request_filter: X-Forwarded-For / -Proto
//!               ▼
//!            upstream_response_filter: remember the upstream's status
//!               ▼
//!            logging: breaker outcome, counters, metrics
//! ```

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::ErrorSource;

use crate::breaker::Admission;
use crate::state::{Inflight, SharedState, Sticky};
use crate::sticky::{self, Decision, StickyResult};

/// The proxy service's logic; one instance serves every request.
pub struct Proxy {
    state: Arc<SharedState>,
}

impl Proxy {
    pub fn new(state: Arc<SharedState>) -> Self {
        Proxy { state }
    }
}

/// Per-request context.
#[derive(Debug, Default)]
pub struct RequestCtx {
    /// Upstreams tried so far, in order; the last is the current one.
    tried: Vec<usize>,
    /// The breaker probe this request carries, if it was admitted as one.
    probe: Option<Probe>,
    /// When the current upstream was chosen.
    picked_at: Option<Instant>,
    /// Counts this request in the current upstream's in-flight load.
    inflight: Option<Inflight>,
    /// Set when the last attempt failed to connect, so the final error is a 503.
    connect_failed: bool,
    /// True when no upstream could be chosen at all.
    no_upstream: bool,
    /// Status of the upstream's final response header, once received.
    upstream_status: Option<u16>,
    /// Cookie mode: set a fresh sticky cookie on the response.
    set_cookie: bool,
    /// The first attempt went where the request's cookie said.
    sticky_routed: bool,
    /// Request body bytes seen so far, against `lb.limits.max_body`.
    body_bytes: u64,
    /// The last attempt failed on a stale reused connection: retry the same
    /// upstream.
    retry_same: bool,
    /// The current attempt's failure is already counted (broke before answering).
    attempt_counted: bool,
}

impl RequestCtx {
    fn current(&self) -> Option<usize> {
        self.tried.last().copied()
    }
}

/// A half-open breaker's one probe. Dropped without a result (the client went
/// away), it is given back so the next request can probe.
#[derive(Debug)]
struct Probe {
    state: Arc<SharedState>,
    id: usize,
}

impl Probe {
    /// Records the probe's result and consumes it.
    fn finish(self, ok: bool) {
        self.state.record(self.id, ok, true, Instant::now());
        std::mem::forget(self);
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.state.release_probe(self.id);
    }
}

impl Proxy {
    /// Counts an attempt on `id` that got no answer (refused, timed out, or the
    /// connection broke first): a breaker failure, a penalty latency sample, an
    /// error; and the attempt no longer counts as in flight.
    fn attempt_failed(&self, ctx: &mut RequestCtx, id: usize) {
        self.record(ctx, id, false);
        let now = Instant::now();
        let elapsed = ctx.picked_at.map_or(0.0, |t| (now - t).as_secs_f64());
        self.state.observe_latency(id, elapsed, true, now);
        ctx.inflight = None;
        let stats = &self.state.upstreams[id].stats;
        stats.errors_total.fetch_add(1, Ordering::Relaxed);
        stats.connect_failures_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the request may try another upstream after attempt `id` failed
    /// (within `lb.retries`, and while some upstream is untried); counts the
    /// retry when it may.
    fn may_retry(&self, ctx: &RequestCtx, id: usize) -> bool {
        let attempts = ctx.tried.len();
        if attempts > self.state.config.lb.retries || attempts >= self.state.upstreams.len() {
            return false;
        }
        let upstream = &self.state.upstreams[id];
        upstream.stats.retries_total.fetch_add(1, Ordering::Relaxed);
        self.state
            .metrics
            .retries_total
            .with_label_values(&[&upstream.name])
            .inc();
        true
    }

    /// The peer for upstream `id`, with the configured timeouts. An upgraded
    /// connection (WebSocket) may idle: it gets no read timeout.
    fn peer(&self, id: usize, upgrade: bool) -> Box<HttpPeer> {
        let timeouts = &self.state.config.lb.timeouts;
        let mut peer = HttpPeer::new(self.state.upstreams[id].addr, false, String::new());
        peer.options.connection_timeout = Some(timeouts.connect);
        peer.options.read_timeout = (!upgrade).then_some(timeouts.read);
        Box::new(peer)
    }

    /// The sticky choice for a request's first attempt, if stickiness names an
    /// eligible upstream; otherwise None, and normal balancing follows.
    fn sticky_pick(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        now: Instant,
        admission: &mut Admission,
    ) -> Option<usize> {
        let state = &self.state;
        let mut accept = |id: usize| {
            *admission = state.admit(id, now);
            *admission != Admission::Refused
        };
        match &state.sticky {
            Sticky::Off => None,
            Sticky::Cookie(c) => {
                let headers = session.req_header().headers.get_all("cookie");
                let value = sticky::find_cookie(
                    headers.iter().filter_map(|v| v.to_str().ok()),
                    &state.config.lb.sticky.cookie_name,
                );
                let opened = value.map(|v| c.sealer.open(v, crate::state::unix_time() as u64));
                match sticky::decide(opened, |k| c.lookup(k), accept) {
                    Decision::Route(id) => {
                        state.count_sticky(StickyResult::Hit);
                        ctx.sticky_routed = true;
                        Some(id)
                    }
                    Decision::Balance(result) => {
                        state.count_sticky(result);
                        ctx.set_cookie = true;
                        None
                    }
                }
            }
            Sticky::Ip(hash) => {
                let peer = session.client_addr().and_then(|a| a.as_inet())?.ip();
                let xff: Vec<&str> = session
                    .req_header()
                    .headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                let ip = sticky::client_ip(peer, &xff, &state.config.lb.sticky.trusted_proxies);
                match hash.select(ip, &mut accept) {
                    Some((id, own)) => {
                        state.count_sticky(if own {
                            StickyResult::Hit
                        } else {
                            StickyResult::Moved
                        });
                        Some(id)
                    }
                    None => {
                        state.count_sticky(StickyResult::Moved);
                        None
                    }
                }
            }
        }
    }

    fn is_failure(&self, status: u16) -> bool {
        self.state
            .config
            .lb
            .circuit_breaker
            .failure_status
            .contains(&status)
    }

    /// Records the outcome of the attempt on upstream `id` for its breaker.
    fn record(&self, ctx: &mut RequestCtx, id: usize, ok: bool) {
        match ctx.probe.take() {
            Some(p) if p.id == id => p.finish(ok),
            other => {
                ctx.probe = other;
                self.state.record(id, ok, false, Instant::now());
            }
        }
    }
}

/// Body of the 503 sent when no upstream can take the request.
const NO_UPSTREAM_BODY: &str = "503 Service Unavailable: no upstream available\n";

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, _ctx: &mut Self::CTX) -> Result<bool> {
        let limits = &self.state.config.lb.limits;
        // HTTP/1 keeps the header bytes as received: Pingora drops Content-Length
        // when Transfer-Encoding is present, so only they still show both.
        let raw = session
            .as_downstream()
            .as_http1()
            .map(|h| h.get_headers_raw_bytes());
        let verdict = check_request(
            session.req_header(),
            raw.as_deref(),
            limits.max_header_bytes,
            limits.max_body,
        );
        if let Some(code) = verdict {
            // The connection cannot be trusted to be in sync any more: close it.
            session.set_keepalive(None);
            session.respond_error(code).await?;
            return Ok(true);
        }
        // Keep-alive stays off where Pingora turned it off (HTTP/1.0, close).
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(limits.keepalive_timeout.as_secs().max(1)));
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > self.state.config.lb.limits.max_body {
                return Error::e_explain(HTTPStatus(413), "request body over lb.limits.max_body");
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let now = Instant::now();
        let state = &self.state;
        // A retried attempt replays the body through the body filter.
        ctx.body_bytes = 0;
        let upgrade = session.is_upgrade_req();
        if std::mem::take(&mut ctx.retry_same) {
            // A reused connection to this upstream was stale: try it again on a
            // fresh one; the upstream itself did nothing wrong.
            if let Some(id) = ctx.current() {
                return Ok(self.peer(id, upgrade));
            }
        }
        let mut admission = Admission::Refused;
        let sticky_pick = if ctx.tried.is_empty() {
            self.sticky_pick(session, ctx, now, &mut admission)
        } else {
            if ctx.sticky_routed {
                // The sticky upstream failed to connect: the session moves.
                ctx.sticky_routed = false;
                ctx.set_cookie = true;
                state.count_sticky(StickyResult::Moved);
            }
            None
        };
        let tried = &ctx.tried;
        let picked = sticky_pick.or_else(|| {
            state.balancer.select(
                |id| {
                    if tried.contains(&id) {
                        return false;
                    }
                    admission = state.admit(id, now);
                    admission != Admission::Refused
                },
                |id| state.cost(id, now),
            )
        });
        let Some(id) = picked else {
            ctx.no_upstream = true;
            return Error::e_explain(HTTPStatus(503), "no upstream available");
        };
        if admission == Admission::Probe {
            ctx.probe = Some(Probe {
                state: state.clone(),
                id,
            });
        }
        ctx.tried.push(id);
        ctx.picked_at = Some(now);
        ctx.inflight = Some(Inflight::new(state.clone(), id));
        ctx.connect_failed = false;
        ctx.attempt_counted = false;
        Ok(self.peer(id, upgrade))
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        // Pingora's default policy: retry idempotent requests whose reused
        // connection turned out to be closed ...
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
            return e;
        }
        e.retry.decide_reuse(client_reused);
        if e.retry() {
            // ... on the same upstream: a stale pooled connection is not a
            // reason to move the request (or its session) elsewhere.
            ctx.retry_same = true;
            return e;
        }
        // The upstream broke the connection before answering (it crashed or
        // reset): like nginx's `proxy_next_upstream error`, an idempotent
        // request goes to another upstream, within `lb.retries`. Timeouts are
        // not retried: the upstream may still be working on the request.
        let broke = e.esource() == &ErrorSource::Upstream
            && matches!(e.etype(), ConnectionClosed | ReadError | WriteError);
        if let (true, None, Some(id)) = (broke, ctx.upstream_status, ctx.current()) {
            self.attempt_failed(ctx, id);
            ctx.attempt_counted = true;
            e.set_retry(self.may_retry(ctx, id));
        }
        e
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.connect_failed = true;
        let Some(id) = ctx.current() else {
            return e;
        };
        self.attempt_failed(ctx, id);
        e.set_retry(self.may_retry(ctx, id));
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        for name in hop_by_hop(&upstream_request.headers, is_upgrade(upstream_request)) {
            upstream_request.remove_header(&name);
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        // What a client says about the hops before it is kept only when the
        // client is a trusted proxy; anyone else could forge it.
        let trusted = peer.is_some_and(|ip| {
            self.state
                .config
                .lb
                .sticky
                .trusted_proxies
                .iter()
                .any(|net| net.contains(&ip))
        });
        if let Some(ip) = peer {
            let mut chain: Vec<String> = Vec::new();
            if trusted {
                chain.extend(
                    upstream_request
                        .headers
                        .get_all("x-forwarded-for")
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .map(str::to_string),
                );
            }
            chain.push(ip.to_string());
            upstream_request.insert_header("x-forwarded-for", chain.join(", "))?;
        }
        if !(trusted && upstream_request.headers.contains_key("x-forwarded-proto")) {
            upstream_request.insert_header("x-forwarded-proto", "http")?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let upgraded = upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS;
        if upstream_response.status.is_informational() && !upgraded {
            return Ok(());
        }
        for name in hop_by_hop(&upstream_response.headers, upgraded) {
            upstream_response.remove_header(&name);
        }
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = Some(status);
        if let (Some(id), Some(t)) = (ctx.current(), ctx.picked_at) {
            let now = Instant::now();
            let failed = self.is_failure(status);
            self.state
                .observe_latency(id, (now - t).as_secs_f64(), failed, now);
            // The answer is known: the breaker (and a probe) need not wait for
            // the body, which may stream for minutes.
            self.record(ctx, id, !failed);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if self.state.is_draining() && !response.status.is_informational() {
            // Handing over: the client should open its next connection to the
            // process that takes over.
            session.set_keepalive(None);
            response.insert_header("connection", "close")?;
        }
        if !ctx.set_cookie || response.status.is_informational() {
            return Ok(());
        }
        let (Sticky::Cookie(c), Some(id)) = (&self.state.sticky, ctx.current()) else {
            return Ok(());
        };
        let conf = &self.state.config.lb.sticky;
        let max_age = conf.max_age.as_secs();
        let expiry = crate::state::unix_time() as u64 + max_age;
        let value = c.sealer.seal(&c.keys[id], expiry);
        response.append_header(
            "set-cookie",
            format!(
                "{}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax",
                conf.cookie_name
            ),
        )?;
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        if ctx.no_upstream {
            self.state.metrics.no_upstream_total.inc();
        }
        let code = if ctx.no_upstream || ctx.connect_failed {
            503
        } else {
            match e.etype() {
                HTTPStatus(code) => {
                    if *code == 413 {
                        // The rest of the body is unread: the connection is done.
                        session.set_keepalive(None);
                    }
                    *code
                }
                ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => 504,
                _ => match e.esource() {
                    ErrorSource::Upstream => 502,
                    ErrorSource::Downstream => match e.etype() {
                        WriteError | ReadError | ConnectionClosed => 0,
                        _ => 400,
                    },
                    ErrorSource::Internal | ErrorSource::Unset => 500,
                },
            }
        };
        if code == 503 {
            let _ = write_unavailable(session).await;
        } else if code > 0 {
            let _ = session.respond_error(code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, _session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        let Some(id) = ctx.current() else { return };
        if ctx.connect_failed || ctx.attempt_counted {
            return;
        }
        let upstream = &self.state.upstreams[id];
        // An upgraded connection (WebSocket) lives by its own rules: idling or
        // closing it is not the upstream failing.
        let upgraded = ctx.upstream_status == Some(101);
        // A failure status, or the upstream timing out or breaking the
        // connection (before or during its answer); a client that went away is
        // not the upstream's fault.
        let broke = !upgraded && e.is_some_and(|e| e.esource() == &ErrorSource::Upstream);
        let failed = broke || ctx.upstream_status.is_some_and(|s| self.is_failure(s));
        match ctx.upstream_status {
            // Header outcome already recorded; a break mid-body is one more failure.
            Some(status) if broke && !self.is_failure(status) => self.record(ctx, id, false),
            Some(_) => {}
            None if broke => {
                self.record(ctx, id, false);
                // Timed out or broke before answering: a penalty latency sample.
                let now = Instant::now();
                let elapsed = ctx.picked_at.map_or(0.0, |t| (now - t).as_secs_f64());
                self.state.observe_latency(id, elapsed, true, now);
            }
            // No answer and no upstream fault (the client went away): an
            // unanswered probe is given back when the context drops.
            None => return,
        }
        upstream
            .stats
            .requests_total
            .fetch_add(1, Ordering::Relaxed);
        if failed {
            upstream.stats.errors_total.fetch_add(1, Ordering::Relaxed);
        }
        let metrics = &self.state.metrics;
        let code = ctx
            .upstream_status
            .map_or_else(|| "error".to_string(), |s| s.to_string());
        metrics
            .requests_total
            .with_label_values(&[upstream.name.as_str(), code.as_str()])
            .inc();
        if let Some(t) = ctx.picked_at {
            upstream.duration.observe(t.elapsed().as_secs_f64());
        }
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded. `Transfer-Encoding`
/// is left to Pingora, which re-frames bodies itself.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
];

fn is_upgrade(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::UPGRADE)
}

/// The hop-by-hop headers present, and those the `Connection` header names, to
/// remove before forwarding. An upgrade (WebSocket) keeps `Connection` and
/// `Upgrade`; framing and `Host` stay Pingora's.
fn hop_by_hop(headers: &http::HeaderMap, upgrade: bool) -> Vec<String> {
    let mut names: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .chain(HOP_BY_HOP.iter().map(|h| h.to_string()))
        .chain((!upgrade).then(|| "upgrade".to_string()))
        .filter(|n| !n.is_empty())
        .filter(|n| !matches!(n.as_str(), "transfer-encoding" | "content-length" | "host"))
        .filter(|n| !(upgrade && matches!(n.as_str(), "connection" | "upgrade")))
        .filter(|n| headers.contains_key(n.as_str()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Checks a request header before anything else happens: ambiguous framing is
/// refused (400), as are oversized headers (431) and bodies declared larger
/// than the limit (413). None when the request may proceed.
fn check_request(
    req: &RequestHeader,
    raw: Option<&[u8]>,
    max_header_bytes: u64,
    max_body: u64,
) -> Option<u16> {
    let headers = &req.headers;
    let te = headers.contains_key(http::header::TRANSFER_ENCODING);
    let cls: Vec<&http::HeaderValue> = headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .collect();
    let raw_cl = raw.is_some_and(|r| raw_has_header(r, b"content-length"));
    if te && (!cls.is_empty() || raw_cl) {
        return Some(400); // request smuggling vector: refuse rather than guess
    }
    let size = match raw {
        Some(r) => r.len(),
        None => {
            req.method.as_str().len()
                + req.uri.to_string().len()
                + headers
                    .iter()
                    .map(|(k, v)| k.as_str().len() + v.len() + 4)
                    .sum::<usize>()
        }
    };
    if size as u64 > max_header_bytes {
        return Some(431);
    }
    if let Some(cl) = cls.first() {
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

/// A short plain-text 503 with `Retry-After`, sent at once.
async fn write_unavailable(session: &mut Session) -> Result<()> {
    let body = Bytes::from_static(NO_UPSTREAM_BODY.as_bytes());
    let mut resp = ResponseHeader::build(503, Some(4))?;
    resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("retry-after", "1")?;
    resp.insert_header("cache-control", "no-store")?;
    session
        .as_downstream_mut()
        .write_error_response(resp, body)
        .await
}
