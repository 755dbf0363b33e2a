//! The Pingora `ProxyHttp` implementation, as an adapter: each phase hands what
//! it learns to the module that decides.
//!
//! ```text
//! on_connection_reuse ─ stop the frontend's header clock; the connection's memo
//!   ▼                   (client address and trust, opened sticky cookie)
//! request_filter ──── forwarding::check_request: framing, header and body size (400/431/413);
//!   │                 an ACME HTTP-01 validation answered
//!   │                 route: the first matching route (none: 404), its redirect,
//!   ▼                 its rate limit; the route's pool serves the rest
//! proxy_upstream_filter ─ with concurrency limits: the first try's upstream, or a
//!   │                 wait in the pool's queue; no place in time ─► 503 + Retry-After
//!   ▼
//! upstream_peer ───── stale pooled connection? ─► a fresh try on the same upstream
//!   │                 pick: sticky (cookie, IP ring) or the pool's pick over its
//!   │                 published set (panic mode included), passing over upstreams
//!   │                 tried; a due breaker probe claimed after the choice;
//!   │                 all at their concurrency limits ─► the pool's queue
//!   │                 none ─► 503;  else Attempt::new (in-flight guard, breaker probe)
//!   ├─ fail_to_connect ──── settle(ConnectFailed) ─► retry elsewhere? ─► upstream_peer
//!   ├─ error_while_proxy ── settle(StalePooled | Reset | TimedOut | BrokeMidBody | Abandoned)
//!   ▼                                              ─► retry? ─► upstream_peer
//! upstream_request_filter ─ forwarding: X-Forwarded-* (Pingora strips hop-by-hop),
//!                     X-Client-Cert-Subject (the verified client certificate's);
//!                     the route's strip_prefix and request_headers
//!   ▼
//! upstream_response_filter ─ forwarding::check_response (a 101 unasked, an
//!   ▼                        unknown coding: 502); settle(Answered(status))
//!   ▼
//! response_filter ─── the route's response_headers and compression; draining:
//!                     Connection: close; sticky Set-Cookie (the pool's cookie)
//! fail_to_proxy ───── 503 (no upstream, connect failed), 502, 504, or the 4xx
//! logging ─────────── settle what is still open (a break, a timeout, a client gone);
//!                     the response's duration; the route's series
//! persist_connection_context ─ hand the memo to the connection's next request
//! ```
//!
//! What an outcome means (breaker, latency, counters, retry) is decided in one
//! place, `attempt::classify`; whether a retry is made, by the request's
//! [`RetryState`]. The pick is in `pick`, what an error says in `outcome`.

mod acme;
mod admit;
mod brotli_stream;
mod compression;
mod outcome;
mod pick;
mod record;
mod retry;
mod routing;
mod settle;

pub use retry::RetryState;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::RetryType;

use crate::access_log::RequestInfo;
use crate::answers;
use crate::attempt::{Attempt, Facts, Outcome, Retry};
use crate::forwarding::{self, Client};
use crate::header_clock::HeaderClock;
use crate::pool::Sticky;
use crate::rate_limit::Verdict;
use crate::state::SharedState;
use crate::sticky::OpenedCookie;
use outcome::{error_status, is_ordinary, outcome_of};

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
    /// The route taken (an index of the route table), once matched.
    route: Option<usize>,
    /// The pool it sends to (an index of `SharedState::pools`).
    pool: usize,
    /// The current try.
    attempt: Option<Attempt>,
    /// The first try, when chosen before `upstream_peer` (concurrency
    /// limits: its place is held from then on).
    admitted: Option<Attempt>,
    /// Upstreams tried, the retry planned, and why.
    retry: RetryState,
    /// No upstream could be chosen at all.
    no_upstream: bool,
    /// Every upstream was at its concurrency limit, and the queue full.
    overloaded: bool,
    /// Cookie mode: set a fresh sticky cookie on the response.
    set_cookie: bool,
    /// The first try went where the request's cookie said.
    sticky_routed: bool,
    /// The frontend's wait for an upgrade request's answer (HTTP/1 only).
    answer: Option<std::sync::Arc<crate::answer_wait::AnswerWait>>,
    /// The current try's upstream socket.
    fd: Option<std::os::unix::io::RawFd>,
    /// Its place among its client's requests in flight.
    held: Option<crate::client_requests::Held>,
    /// Request body bytes seen so far, against `lb.limits.max_body`.
    body_bytes: u64,
    /// What this request's connection has taught so far, carried from one
    /// request on it to the next.
    conn: ConnectionMemo,
    /// What the route's forward-auth service set on the request.
    auth_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The coding its answer is compressed with (the route's `compress`).
    compressed: Option<crate::route::compress::Coding>,
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

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    /// Pingora's compression module and our brotli, both off until a
    /// route's `compress` turns one on for an answer.
    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        modules
            .add_module(pingora::modules::http::compression::ResponseCompressionBuilder::enable(0));
        modules.add_module(Box::new(brotli_stream::BrotliStreamBuilder));
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Self::CTX, e: &Error) -> bool {
        is_ordinary(e, ctx.no_upstream || ctx.overloaded)
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
        session: &mut Session,
        ctx: &mut Self::CTX,
        prev: Box<dyn std::any::Any + Send + Sync>,
    ) {
        // The frontend's header clock: the header is in, stop it; then take
        // what the previous request on the connection left.
        let prev = match prev.downcast::<HeaderClock>() {
            Ok(clock) => {
                let parsed = session
                    .as_downstream()
                    .as_http1()
                    .map_or(0, |h| h.get_headers_raw_bytes().len());
                let (carried, answer) = clock.header_in(session.req_header(), parsed);
                ctx.answer = Some(answer);
                match carried {
                    Some(carried) => carried,
                    None => return,
                }
            }
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
        // A request that carries our own `Via` entry came round in a loop.
        let verdict = verdict.or_else(|| {
            self.state
                .via
                .is_loop(&session.req_header().headers)
                .then_some(508)
        });
        if let Some(code) = verdict {
            // The connection cannot be trusted to be in sync any more: close it.
            session.set_keepalive(None);
            answers::error(session, code, &ctx.info.request_id).await?;
            return Ok(true);
        }
        // A client (or an HTTP/2 stream of it) that stops reading is cut
        // after this long, which frees the upstream connection it holds.
        session.set_write_timeout(Some(limits.send_timeout));
        if self.answer_acme(session).await? {
            return Ok(true);
        }
        // Each request holds a place among its client's, HTTP/2 streams
        // included: the connection's peer is the client that holds them.
        if let Some(peer) = self.client(session, ctx).map(|c| c.ip) {
            match self.state.client_requests.admit(peer) {
                Some(held) => ctx.held = Some(held),
                None => {
                    answers::too_many_in_flight(session, &ctx.info.request_id).await?;
                    return Ok(true);
                }
            }
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
        self.route(session, ctx).await
    }

    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<bool> {
        if self.state.pools[ctx.pool].queue.is_none() {
            return Ok(true);
        }
        // With concurrency limits the first try's place is found here, where
        // a refusal can still keep the client's connection open.
        match self.attempt(session, ctx, Instant::now()).await {
            Ok(attempt) => {
                ctx.admitted = Some(attempt);
                Ok(true)
            }
            Err(_) if ctx.overloaded => {
                if !session.is_body_empty() {
                    // Its body is unread: the connection cannot go on.
                    session.set_keepalive(None);
                }
                answers::overloaded(session, &ctx.info.request_id).await?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
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
        if ctx.retry.take_same() {
            // A pooled connection was stale: a fresh one to the same upstream.
            if let Some(a) = ctx.attempt.take() {
                ctx.info.attempts += 1;
                let a = a.again(now);
                let peer = self.peer(session, ctx, &a.upstream, upgrade);
                ctx.attempt = Some(a);
                return Ok(peer);
            }
        }
        let pool = &self.state.pools[ctx.pool];
        if ctx.retry.is_first() {
            pool.policy.retry_budget.request(now);
            pool.mirror.offer(session.req_header(), now);
        }
        let attempt = match ctx.admitted.take() {
            Some(attempt) => attempt,
            None => self.attempt(session, ctx, now).await?,
        };
        let peer = self.peer(session, ctx, &attempt.upstream, upgrade);
        ctx.retry.sent(attempt.upstream.clone());
        ctx.info.attempts += 1;
        ctx.attempt = Some(attempt);
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
        if let Some(wait) = &ctx.answer {
            wait.lift();
            if wait.take_ran_out() {
                // The upgrade's answer did not begin within the read
                // timeout: a timeout like any other (504, not retried).
                self.settle(session, ctx, Outcome::TimedOut);
                let mut t = Error::explain(ReadTimedout, "no answer to the upgrade in time");
                t.as_up();
                t.set_retry(false);
                return t;
            }
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        if ctx.retry.take_status_retry() {
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

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        ctx.fd = Some(fd);
        Ok(())
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
        forwarding::set_forwarding(upstream_request, self.client(session, ctx), scheme)?;
        crate::tls::client_cert::forward(session.as_downstream().digest(), upstream_request)?;
        for (name, value) in &ctx.auth_headers {
            upstream_request.append_header(name.clone(), value.clone())?;
        }
        // An upgrade's upstream connection may idle as a tunnel for long, so
        // the wait for its answer is bounded apart (see `answer_wait`).
        // (Over HTTP/1.1 only: an HTTP/2 connection carries other streams.)
        let h1 = ctx
            .attempt
            .as_ref()
            .is_some_and(|a| !a.upstream.protocol.h2);
        if let (true, true, Some(wait), Some(fd)) =
            (session.is_upgrade_req(), h1, &ctx.answer, ctx.fd)
        {
            let (_, read) = self.timeouts(ctx);
            wait.arm(Instant::now() + read, fd);
        }
        self.rewrite_request(ctx, upstream_request);
        self.state
            .via
            .add(upstream_request, session.req_header().version)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(wait) = &ctx.answer {
            wait.lift();
        }
        let upgraded = upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS;
        if upstream_response.status.is_informational() && !upgraded {
            return Ok(());
        }
        if let Some(why) = forwarding::check_response(upstream_response, session.is_upgrade_req()) {
            // A broken answer is the upstream's failure, and never reaches the
            // client; the 502 ends the request, so no retry is planned (nor
            // its budget spent).
            self.settle_with(ctx, Outcome::Reset, Facts::NONE);
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
            ctx.retry.hold_status();
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
        self.rewrite_response(ctx, response);
        self.compress(session, ctx, response)?;
        if !ctx.info.request_id.is_empty() {
            response.insert_header(crate::trace::REQUEST_ID, ctx.info.request_id.header())?;
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
        let pool = &self.state.pools[ctx.pool];
        let (Sticky::Cookie(sealer), Some(a)) = (&pool.policy.sticky, &ctx.attempt) else {
            return Ok(());
        };
        let conf = &pool.config().sticky;
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
        if ctx.overloaded {
            // A retry that found no place: Pingora does not keep the
            // connection after a failed try, so the client is told.
            session.set_keepalive(None);
            let _ = answers::overloaded(session, &ctx.info.request_id).await;
            return FailToProxy {
                error_code: 503,
                can_reuse_downstream: false,
            };
        }
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
        if let Some(wait) = &ctx.answer {
            wait.lift();
        }
        self.settle_last(session, e, ctx);
        self.count_compression(session, ctx);
        self.record(session, ctx);
    }
}

/// Whether the client's connection is TLS.
pub(super) fn over_tls(session: &Session) -> bool {
    session
        .as_downstream()
        .digest()
        .is_some_and(|d| d.ssl_digest.is_some())
}
