//! The route phase of a request: which route it takes (our 404 when none),
//! its access control (403), a route's redirect, its rate limit, and what it changes on the way up
//! (path prefix, headers) and back (headers).

use std::sync::Arc;

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use super::{Proxy, RequestCtx};
use crate::answers;
use crate::config::RouteAction;
use crate::pool::Pool;
use crate::rate_limit::Verdict;
use crate::route::basic_auth::Verdict as BasicVerdict;
use crate::route::forward_auth::{ForwardAuth, Verdict as AuthVerdict};
use crate::route::{pattern, rewrite, RequestFacts};

impl Proxy {
    /// Finds the request's route and answers it here when the route says so
    /// (no route: 404; a client it does not admit: 403; over the route's
    /// rate limit: 429, before any password is checked or service asked; a
    /// refused credential; a redirect). True when answered.
    pub(super) async fn route(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let routes = &self.state.routes;
        let req = session.req_header();
        // HTTP/2 carries the host in the URI, HTTP/1.1 in `Host`.
        let authority = req.uri.authority().map(|a| a.as_str()).or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let host = authority.map(pattern::normalize_host);
        let facts = RequestFacts {
            method: &req.method,
            host: host.as_deref(),
            path: req.uri.path(),
            headers: &req.headers,
        };
        let Some(index) = routes.table.find(&facts) else {
            answers::no_route(session, &ctx.info.request_id).await?;
            return Ok(true);
        };
        ctx.route = Some(index);
        let route = routes.route(index);
        if let Some(access) = &route.access {
            if !crate::route::access::permits(access, self.client_ip(session, ctx)) {
                answers::forbidden(session, &ctx.info.request_id).await?;
                return Ok(true);
            }
        }
        if let Some(limiter) = &routes.served(index).limiter {
            if let Some(ip) = self.client_ip(session, ctx) {
                if let Verdict::Refuse { retry_after } = limiter.check(&ip) {
                    self.state.metrics.rate_limited_total.inc();
                    answers::too_many(session, retry_after, &ctx.info.request_id).await?;
                    return Ok(true);
                }
            }
        }
        if let Some(auth) = &routes.served(index).basic_auth {
            let header = session
                .req_header()
                .headers
                .get(http::header::AUTHORIZATION);
            match auth.check(header).await {
                BasicVerdict::Pass => {}
                BasicVerdict::Fail => {
                    answers::unauthorized(session, &auth.realm, &ctx.info.request_id).await?;
                    return Ok(true);
                }
                BasicVerdict::Busy => {
                    answers::too_busy(session, &ctx.info.request_id).await?;
                    return Ok(true);
                }
            }
        }
        if let Some(auth) = &routes.served(index).forward_auth {
            if self.forward_auth(session, ctx, index, auth).await? {
                return Ok(true);
            }
        }
        match &route.action {
            RouteAction::Pool(pool) => ctx.pool = *pool,
            RouteAction::Redirect { to, status } => {
                let location = rewrite::location(to, &session.req_header().uri);
                answers::redirect(session, *status, &location, &ctx.info.request_id).await?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Puts the request to the route's forward-auth service: through, with
    /// the headers it gave (a client's own of those names removed), or its
    /// answer (or our 502) sent here. True when answered.
    async fn forward_auth(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        index: usize,
        auth: &ForwardAuth,
    ) -> Result<bool> {
        let scheme = if super::over_tls(session) {
            "https"
        } else {
            "http"
        };
        let client = self.client(session, ctx).cloned();
        let digest = session.as_downstream().digest();
        let verdict = auth
            .check(session.req_header(), client.as_ref(), scheme, digest)
            .await;
        let counts = self.state.routes.served(index).auth_results.as_ref();
        let count = |i: usize| {
            if let Some(c) = counts {
                c[i].inc();
            }
        };
        match verdict {
            AuthVerdict::Pass(set) => {
                count(0);
                // Set on the upstream request after Pingora's hop-by-hop
                // pass, so a client's `Connection: X-Auth-User` cannot
                // strip them; the client's own are removed now.
                crate::forwarding::remove_claims(session.req_header_mut(), auth.copied());
                ctx.auth_headers = set;
                Ok(false)
            }
            AuthVerdict::Answer {
                status,
                headers,
                body,
            } => {
                count(1);
                answers::passed(session, (status, headers, body), &ctx.info.request_id).await?;
                Ok(true)
            }
            AuthVerdict::Failed(why) => {
                count(2);
                log::warn!(
                    "route {}: forward_auth: {why}",
                    self.state.routes.route(index).name
                );
                answers::auth_failed(session, &why, &ctx.info.request_id).await?;
                Ok(true)
            }
        }
    }

    /// The pool the request's route sends to.
    pub(super) fn pool(&self, ctx: &RequestCtx) -> &Arc<Pool> {
        &self.state.pools[ctx.pool]
    }

    /// The route's changes to the request going upstream.
    pub(super) fn rewrite_request(&self, ctx: &RequestCtx, req: &mut RequestHeader) {
        let Some(route) = ctx.route.map(|i| self.state.routes.route(i)) else {
            return;
        };
        if let Some(prefix) = &route.strip_prefix {
            if let Some(uri) = rewrite::strip(prefix, &req.uri) {
                req.set_uri(uri);
            }
        }
        if !route.request_headers.is_empty() {
            rewrite::edit(&route.request_headers, req);
        }
    }

    /// The route's changes to the answer going back.
    pub(super) fn rewrite_response(&self, ctx: &RequestCtx, resp: &mut ResponseHeader) {
        if let Some(route) = ctx.route.map(|i| self.state.routes.route(i)) {
            if !route.response_headers.is_empty() {
                rewrite::edit(&route.response_headers, resp);
            }
        }
    }

    /// The route's read and connect timeouts, over its pool's.
    pub(super) fn timeouts(&self, ctx: &RequestCtx) -> (std::time::Duration, std::time::Duration) {
        let pool = &self.pool(ctx).config().timeouts;
        let route = ctx.route.map(|i| self.state.routes.route(i));
        (
            route
                .and_then(|r| r.connect_timeout)
                .unwrap_or(pool.connect),
            route.and_then(|r| r.read_timeout).unwrap_or(pool.read),
        )
    }
}
