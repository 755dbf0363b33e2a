//! The Pingora `ProxyHttp` implementation, as an adapter: each phase hands what
//! it learns to the module that decides.
//!
//! ```text
//! on_connection_reuse ─ stop the frontend's header clock; the connection's memo
//!   ▼                   (client address and trust, opened sticky cookie)
//! request_filter ──── forwarding::check_request: framing, header and body size (400/431/413)
//!   ▼
//! upstream_peer ───── stale pooled connection? ─► a fresh try on the same upstream
//!   │                 sticky (cookie, IP ring) or balancer.select over the table in force,
//!   │                 vetoing upstreams tried; Upstream::admit (health, drain, breaker;
//!   │                 breakers overruled in panic mode)
//!   │                 none ─► 503;  else Attempt::new (in-flight guard, breaker probe)
//!   ├─ fail_to_connect ──── settle(ConnectFailed) ─► retry elsewhere? ─► upstream_peer
//!   ├─ error_while_proxy ── settle(StalePooled | Reset | TimedOut | BrokeMidBody | Abandoned)
//!   ▼                                              ─► retry? ─► upstream_peer
//! upstream_request_filter ─ forwarding: X-Forwarded-* (Pingora strips hop-by-hop)
//!   ▼
//! upstream_response_filter ─ forwarding::check_response (a 101 unasked, an
//!   ▼                        unknown coding: 502); settle(Answered(status))
//!   ▼
//! response_filter ─── draining: Connection: close; sticky Set-Cookie
//! fail_to_proxy ───── 503 (no upstream, connect failed), 502, 504, or the 4xx
//! logging ─────────── settle what is still open (a break, a timeout, a client gone);
//!                     the response's duration
//! persist_connection_context ─ hand the memo to the connection's next request
//! ```
//!
//! What an outcome means (breaker, latency, counters, retry) is decided in one
//! place, `attempt::classify`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::{ErrorSource, RetryType};
use smallvec::SmallVec;

use crate::access_log::RequestInfo;
use crate::answers;
use crate::attempt::{Attempt, Facts, Outcome, Retry};
use crate::balancer::Table;
use crate::breaker::Admission;
use crate::forwarding::{self, Client};
use crate::frontend::HeaderClock;
use crate::rate_limit::Verdict;
use crate::state::{SharedState, Sticky};
use crate::sticky::{self, Decision, OpenedCookie, StickyResult};
use crate::upstream::{RetryReason, Upstream};

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
    /// The current try.
    attempt: Option<Attempt>,
    /// Upstreams tried so far, vetoed for the next pick (inline: most
    /// requests make one try, so no allocation).
    tried: SmallVec<[Arc<Upstream>; 2]>,
    /// What the last settled outcome asked for.
    retry: Retry,
    /// The upstream whose failure the next pick retries; counted once a retry
    /// is actually sent elsewhere.
    retry_from: Option<(Arc<Upstream>, RetryReason)>,
    /// The answer's status is being retried on another upstream.
    status_retry: bool,
    /// No upstream could be chosen at all.
    no_upstream: bool,
    /// Cookie mode: set a fresh sticky cookie on the response.
    set_cookie: bool,
    /// The first try went where the request's cookie said.
    sticky_routed: bool,
    /// Request body bytes seen so far, against `lb.limits.max_body`.
    body_bytes: u64,
    /// What this request's connection has taught so far, carried from one
    /// request on it to the next.
    conn: ConnectionMemo,
    /// Its id, and what its log line needs.
    info: RequestInfo,
}

/// What is worked out once per client connection and kept across its
/// keep-alive requests.
#[derive(Debug, Clone, Default)]
struct ConnectionMemo {
    client: Option<Client>,
    /// The sticky cookie it last presented, once it opened.
    cookie: Option<OpenedCookie>,
}

/// Whether `u` may take a request now; notes whether it was admitted as the
/// breaker's probe. In panic mode breakers are overruled.
fn admit(u: &Upstream, now: Instant, panic: bool, probe: &mut bool) -> bool {
    let admission = if panic {
        u.admit_in_panic()
    } else {
        u.admit(now)
    };
    match admission {
        Admission::Allowed => {
            *probe = false;
            true
        }
        Admission::Probe => {
            *probe = true;
            true
        }
        Admission::Refused => false,
    }
}

impl Proxy {
    fn is_failure(&self) -> impl Fn(u16) -> bool + '_ {
        |status| {
            self.state
                .config
                .lb
                .circuit_breaker
                .failure_status
                .contains(&status)
        }
    }

    /// What the request allows for a retry now.
    fn facts(&self, session: &Session, ctx: &RequestCtx) -> Facts {
        let req = session.req_header();
        let tried = ctx.tried.len();
        Facts {
            idempotent: req.method.is_idempotent() || req.headers.contains_key("idempotency-key"),
            replayable: !session.as_ref().retry_buffer_truncated(),
            retries_left: tried <= self.state.config.lb.retries
                && tried < self.state.balancer.load().upstreams().len(),
        }
    }

    /// Settles an outcome of the current try and plans the retry it asks for.
    fn settle(&self, session: &Session, ctx: &mut RequestCtx, outcome: Outcome) -> Retry {
        // Facts only where `retry_on` allows a retry: for a connection that
        // failed or broke, and for an answer with a listed status.
        let on = &self.state.config.lb.retry_on;
        let retriable = match outcome {
            Outcome::StalePooled => true,
            Outcome::ConnectFailed => on.connect,
            Outcome::Reset => on.reset,
            Outcome::Answered(status) => on.statuses.contains(&status),
            _ => false,
        };
        let facts = if retriable {
            self.facts(session, ctx)
        } else {
            Facts::NONE
        };
        let Some(a) = ctx.attempt.as_mut() else {
            return Retry::No;
        };
        let now = Instant::now();
        let mut retry = a.settle(outcome, facts, self.is_failure(), now).retry;
        // Another upstream is tried only within the budget; a stale pooled
        // connection's fresh one is no extra load and not counted.
        if retry == Retry::Other && !self.state.retry_budget.try_retry(now) {
            self.state.metrics.retry_budget_exhausted_total.inc();
            retry = Retry::No;
        }
        ctx.retry = retry;
        if retry == Retry::Other {
            let reason = match outcome {
                Outcome::ConnectFailed => RetryReason::Connect,
                Outcome::Answered(_) => RetryReason::Status,
                _ => RetryReason::Reset,
            };
            ctx.retry_from = Some((a.upstream.clone(), reason));
        }
        retry
    }

    /// The peer for `u`, with the configured timeouts. Pingora keeps one read
    /// timeout for the life of the upstream connection; an upgrade request's
    /// is the larger of `timeouts.read` and `limits.keepalive_timeout`: it
    /// bounds the wait for the 101 (a hung upstream cannot hold the request,
    /// and its failure counts), and a tunnel may idle that long.
    fn peer(&self, u: &Upstream, upgrade: bool) -> Box<HttpPeer> {
        let lb = &self.state.config.lb;
        let mut peer = crate::peer::peer(u.addr, &u.protocol);
        peer.options.connection_timeout = Some(lb.timeouts.connect);
        peer.options.read_timeout = Some(if upgrade {
            lb.timeouts.read.max(lb.limits.keepalive_timeout)
        } else {
            lb.timeouts.read
        });
        Box::new(peer)
    }

    /// The sticky choice for a request's first try, if stickiness names an
    /// eligible upstream; otherwise None, and normal balancing follows.
    fn sticky_pick(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        table: &Table,
        now: Instant,
        probe: &mut bool,
    ) -> Option<usize> {
        let state = &self.state;
        let panic = state.balancer.in_panic();
        let accept = |i: usize| admit(&table.upstreams()[i], now, panic, probe);
        match &state.sticky {
            Sticky::Off => None,
            Sticky::Cookie(sealer) => {
                let headers = session.req_header().headers.get_all("cookie");
                let value = sticky::find_cookie(
                    headers.iter().filter_map(|v| v.to_str().ok()),
                    &state.config.lb.sticky.cookie_name,
                );
                let now = crate::events::unix_time() as u64;
                let opened = value.map(|v| sealer.open_remembered(v, now, &mut ctx.conn.cookie));
                match sticky::decide(opened, |k| table.members.by_sticky_key(k), accept) {
                    Decision::Route(i) => {
                        state.count_sticky(StickyResult::Hit);
                        ctx.info.sticky = Some(StickyResult::Hit);
                        ctx.sticky_routed = true;
                        Some(i)
                    }
                    Decision::Balance(result) => {
                        state.count_sticky(result);
                        ctx.info.sticky = Some(result);
                        ctx.set_cookie = true;
                        None
                    }
                }
            }
            Sticky::Ip => {
                let ring = table.members.ring.as_ref()?;
                let ip = self.client_ip(session, ctx)?;
                // Nothing eligible on the ring: nothing moved, nothing counted.
                let (i, own) = ring.select(ip, accept)?;
                let result = if own {
                    StickyResult::Hit
                } else {
                    StickyResult::Moved
                };
                state.count_sticky(result);
                ctx.info.sticky = Some(result);
                Some(i)
            }
        }
    }

    /// The client at the other end of this request's connection.
    fn client<'c>(&self, session: &Session, ctx: &'c mut RequestCtx) -> Option<&'c Client> {
        if ctx.conn.client.is_none() {
            let ip = session.client_addr().and_then(|a| a.as_inet())?.ip();
            ctx.conn.client = Some(Client::new(ip, &self.state.config.lb.trusted_proxies));
        }
        ctx.conn.client.as_ref()
    }

    /// The client's address for IP stickiness: the connection's peer, worked
    /// out once per connection; `X-Forwarded-For` is read only when that peer
    /// is a trusted proxy.
    fn client_ip(&self, session: &Session, ctx: &mut RequestCtx) -> Option<IpAddr> {
        let client = self.client(session, ctx)?;
        if !client.trusted {
            return Some(client.ip);
        }
        let xff: Vec<&str> = session
            .req_header()
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        Some(sticky::client_ip(
            client.ip,
            &xff,
            &self.state.config.lb.trusted_proxies,
        ))
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    fn persist_connection_context(
        &self,
        _session: &Session,
        ctx: &Self::CTX,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        Some(Box::new(ctx.conn.clone()))
    }

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
        prev: Box<dyn std::any::Any + Send + Sync>,
    ) {
        // The frontend's header clock: the header is in, stop it; then take
        // what the previous request on the connection left.
        let prev = match prev.downcast::<HeaderClock>() {
            Ok(clock) => match clock.header_in() {
                Some(carried) => carried,
                None => return,
            },
            Err(other) => other,
        };
        if let Ok(conn) = prev.downcast::<ConnectionMemo>() {
            ctx.conn = *conn;
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        ctx.info.started = Some(Instant::now());
        ctx.info.request_id = crate::trace::tag(session.req_header_mut());
        let limits = &self.state.config.lb.limits;
        let raw = session
            .as_downstream()
            .as_http1()
            .map(|h| h.get_headers_raw_bytes());
        let verdict = forwarding::check_request(
            session.req_header(),
            raw.as_deref(),
            limits.max_header_bytes,
            limits.max_body,
        );
        if let Some(code) = verdict {
            // The connection cannot be trusted to be in sync any more: close it.
            session.set_keepalive(None);
            answers::error(session, code, &ctx.info.request_id).await?;
            return Ok(true);
        }
        if let Some(limiter) = &self.state.rate_limiter {
            if let Some(ip) = self.client_ip(session, ctx) {
                if let Verdict::Refuse { retry_after } = limiter.check(&ip) {
                    self.state.metrics.rate_limited_total.inc();
                    answers::too_many(session, retry_after, &ctx.info.request_id).await?;
                    return Ok(true);
                }
            }
        }
        // Keep-alive stays off where Pingora turned it off (HTTP/1.0, close).
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(limits.keepalive_timeout.as_secs()));
        }
        if let Some(tls) = self
            .state
            .config
            .lb
            .tls
            .as_ref()
            .filter(|t| t.redirect_http)
        {
            if !over_tls(session) {
                let resp = forwarding::https_redirect(session.req_header(), tls.listen[0].port())?;
                session.write_response_header(Box::new(resp), true).await?;
                return Ok(true);
            }
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
        // A retried try replays the body through the body filter.
        ctx.body_bytes = 0;
        let upgrade = session.is_upgrade_req();
        if std::mem::take(&mut ctx.retry) == Retry::Same {
            // A pooled connection was stale: a fresh one to the same upstream.
            if let Some(a) = ctx.attempt.take() {
                ctx.info.attempts += 1;
                let a = a.again(now);
                let peer = self.peer(&a.upstream, upgrade);
                ctx.attempt = Some(a);
                return Ok(peer);
            }
        }
        let state = &self.state;
        let table = state.balancer.load();
        let mut probe = false;
        if ctx.tried.is_empty() {
            state.retry_budget.request(now);
        }
        let sticky = if ctx.tried.is_empty() {
            self.sticky_pick(session, ctx, &table, now, &mut probe)
        } else {
            if std::mem::take(&mut ctx.sticky_routed) {
                // The sticky upstream failed: the session moves.
                ctx.set_cookie = true;
                state.count_sticky(StickyResult::Moved);
                ctx.info.sticky = Some(StickyResult::Moved);
            }
            None
        };
        let tried = &ctx.tried;
        let panic = state.balancer.in_panic();
        let picked = sticky.or_else(|| {
            state.balancer.select(
                &table,
                |i| {
                    let u = &table.upstreams()[i];
                    !tried.iter().any(|t| Arc::ptr_eq(t, u)) && admit(u, now, panic, &mut probe)
                },
                |i| state.balancer.cost(&table.upstreams()[i], now),
            )
        });
        let Some(i) = picked else {
            ctx.no_upstream = true;
            return Error::e_explain(HTTPStatus(503), "no upstream available");
        };
        let upstream = table.upstreams()[i].clone();
        if let Some((from, reason)) = ctx.retry_from.take() {
            from.count_retry(reason);
        }
        let peer = self.peer(&upstream, upgrade);
        ctx.tried.push(upstream.clone());
        ctx.info.attempts += 1;
        ctx.attempt = Some(Attempt::new(upstream, probe, now));
        Ok(peer)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let retry = self.settle(session, ctx, Outcome::ConnectFailed);
        e.set_retry(retry != Retry::No);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if std::mem::take(&mut ctx.status_retry) {
            // Its answer was settled already (see upstream_response_filter).
            if let Some(a) = ctx.attempt.as_mut() {
                a.retire();
            }
            e.set_retry(true);
            return e;
        }
        // Pingora marks errors that a closed pooled connection explains.
        let stale = client_reused && matches!(e.retry, RetryType::ReusedOnly);
        let status = ctx.attempt.as_ref().and_then(|a| a.status);
        let outcome = outcome_of(&e, status, stale);
        let retry = self.settle(session, ctx, outcome);
        e.set_retry(retry != Retry::No);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // Hop-by-hop request headers are already gone: Pingora's standard
        // upstream request policy strips them (and those `Connection` names)
        // before this filter runs.
        let scheme = if over_tls(session) { "https" } else { "http" };
        forwarding::set_forwarding(upstream_request, self.client(session, ctx), scheme)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let upgraded = upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS;
        if upstream_response.status.is_informational() && !upgraded {
            return Ok(());
        }
        if let Some(why) = forwarding::check_response(upstream_response, session.is_upgrade_req()) {
            // A broken answer is the upstream's failure, and never reaches the client.
            self.settle(session, ctx, Outcome::Reset);
            return Error::e_explain(HTTPStatus(502), why);
        }
        for name in forwarding::hop_by_hop(&upstream_response.headers, upgraded) {
            upstream_response.remove_header(&name);
        }
        // The answer is known: the breaker (and a probe) need not wait for the
        // body, which may stream for minutes.
        let status = upstream_response.status.as_u16();
        ctx.info.upstream_ms = ctx
            .attempt
            .as_ref()
            .map(|a| crate::access_log::round_ms(a.started.elapsed()));
        if self.settle(session, ctx, Outcome::Answered(status)) == Retry::Other {
            // A status listed in `retry_on`, on a request that may be sent
            // again: the answer never reaches the client; another upstream is
            // tried (`error_while_proxy` lets it through).
            ctx.status_retry = true;
            let mut e = Error::explain(HTTPStatus(status), "retried on another upstream");
            e.set_retry(true);
            return Err(e);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if !ctx.info.request_id.is_empty() {
            response.insert_header(crate::trace::REQUEST_ID, ctx.info.request_id.as_str())?;
        }
        if self.state.is_draining() && !response.status.is_informational() {
            // Handing over: the client should open its next connection to the
            // process that takes over.
            session.set_keepalive(None);
            response.insert_header("connection", "close")?;
        }
        // No session is bound to an upstream that just answered with a server
        // error: the next request balances again.
        if !ctx.set_cookie
            || response.status.is_informational()
            || response.status.is_server_error()
        {
            return Ok(());
        }
        let (Sticky::Cookie(sealer), Some(a)) = (&self.state.sticky, &ctx.attempt) else {
            return Ok(());
        };
        let conf = &self.state.config.lb.sticky;
        let max_age = conf.max_age.as_secs();
        let expiry = crate::events::unix_time() as u64 + max_age;
        let value = sealer.seal(&a.upstream.sticky_key, expiry);
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
        let connect_failed = ctx
            .attempt
            .as_ref()
            .is_some_and(|a| a.outcome == Some(Outcome::ConnectFailed));
        let code = if ctx.no_upstream || connect_failed {
            503
        } else {
            error_status(e)
        };
        if code == 413 {
            // The rest of the body is unread: the connection is done.
            session.set_keepalive(None);
        }
        if code == 503 {
            let _ = answers::unavailable(session, &ctx.info.request_id).await;
        } else if code > 0 {
            let _ = answers::error(session, code, &ctx.info.request_id).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        self.settle_last(session, e, ctx);
        if let Some(log) = &self.state.access_log {
            let client = self.client_ip(session, ctx);
            let status = session.response_written().map_or(0, |r| r.status.as_u16());
            let upstream = ctx.attempt.as_ref().map(|a| a.upstream.name.as_str());
            let record = ctx.info.record(
                session.req_header(),
                client,
                status,
                upstream,
                session.body_bytes_sent(),
                Instant::now(),
            );
            log.log(record);
        }
    }
}

impl Proxy {
    /// Settles what is still open of the last try at the request's end, and
    /// takes its duration.
    fn settle_last(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let Some(a) = ctx.attempt.as_ref() else {
            return;
        };
        if !a.is_finished() {
            let outcome = match e {
                None if a.status.is_some() => None,
                Some(e) => Some(outcome_of(e, a.status, false)),
                None => Some(Outcome::Abandoned),
            };
            if let Some(o) = outcome {
                self.settle(session, ctx, o);
            }
        }
        let Some(a) = ctx.attempt.as_ref() else {
            return;
        };
        if a.status.is_some() || matches!(a.outcome, Some(Outcome::Reset | Outcome::TimedOut)) {
            a.upstream
                .observe_duration(a.started.elapsed().as_secs_f64());
        }
    }
}

/// What an error during a try says about it. `status` is the response's, if
/// its header arrived; `stale` says a pooled connection explains the error.
fn outcome_of(e: &Error, status: Option<u16>, stale: bool) -> Outcome {
    match (e.esource(), status) {
        (ErrorSource::Upstream, Some(s)) => Outcome::BrokeMidBody(s),
        (ErrorSource::Upstream, None) if stale => Outcome::StalePooled,
        (ErrorSource::Upstream, None) => match e.etype() {
            ReadTimedout | WriteTimedout => Outcome::TimedOut,
            ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError => {
                Outcome::ConnectFailed
            }
            _ => Outcome::Reset,
        },
        // The client went away, or its request broke a limit.
        _ => Outcome::Abandoned,
    }
}

/// The status answered for an error (0: the client is gone, answer nothing).
fn error_status(e: &Error) -> u16 {
    match e.etype() {
        HTTPStatus(code) => *code,
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
}

/// Whether the client's connection is TLS.
fn over_tls(session: &Session) -> bool {
    session
        .as_downstream()
        .digest()
        .is_some_and(|d| d.ssl_digest.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_outcomes() {
        let up = |t| {
            let mut e = Error::new(t);
            e.as_up();
            e
        };
        assert_eq!(
            outcome_of(&up(ReadTimedout), None, false),
            Outcome::TimedOut
        );
        assert_eq!(
            outcome_of(&up(ConnectionClosed), None, false),
            Outcome::Reset
        );
        assert_eq!(
            outcome_of(&up(ConnectionClosed), None, true),
            Outcome::StalePooled
        );
        assert_eq!(
            outcome_of(&up(ReadError), Some(200), false),
            Outcome::BrokeMidBody(200)
        );
        assert_eq!(
            outcome_of(&up(ConnectRefused), None, false),
            Outcome::ConnectFailed
        );
        let mut down = Error::new(ConnectionClosed);
        down.as_down();
        assert_eq!(outcome_of(&down, None, false), Outcome::Abandoned);
        assert_eq!(outcome_of(&down, Some(200), false), Outcome::Abandoned);
    }

    #[test]
    fn errors_map_to_statuses() {
        let mut timeout = Error::new(ReadTimedout);
        timeout.as_up();
        assert_eq!(error_status(&timeout), 504);
        let mut reset = Error::new(ConnectionClosed);
        reset.as_up();
        assert_eq!(error_status(&reset), 502);
        let mut gone = Error::new(ConnectionClosed);
        gone.as_down();
        assert_eq!(error_status(&gone), 0);
        assert_eq!(error_status(&Error::new(HTTPStatus(413))), 413);
    }
}
