//! A finished request's records: the answer counted as clients saw it, its
//! route's series, and its access-log line (with its route and pool).

use std::time::Instant;

use pingora::prelude::*;

use super::{Proxy, RequestCtx};
use crate::config::RouteAction;

impl Proxy {
    /// Records the request that just ended.
    pub(super) fn record(&self, session: &Session, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        self.state.count_answer(status);
        let now = Instant::now();
        if let (Some(route), Some(started)) = (ctx.route, ctx.info.started) {
            let took = now.saturating_duration_since(started);
            self.state.routes.served(route).record(status, took);
        }
        let Some(log) = &self.state.access_log else {
            return;
        };
        let client = self.client_ip(session, ctx);
        let upstream = ctx.attempt.as_ref().map(|a| a.upstream.name.as_str());
        let mut line = ctx.info.record(
            session.req_header(),
            client,
            status,
            upstream,
            session.body_bytes_sent(),
            now,
        );
        if let Some(route) = ctx.route.map(|i| self.state.routes.route(i)) {
            line.route = Some(route.name.clone());
            if let RouteAction::Pool(_) = route.action {
                line.pool = Some(self.pool(ctx).name().to_string());
            }
        }
        log.log(line);
    }
}
