//! Settling a try: what the request allows for a retry (`Facts`), the
//! verdict applied to the upstream (`attempt::classify`), and the retry it
//! asks for, planned by the request's `RetryState`.

use std::time::Instant;

use pingora::prelude::*;

use super::outcome::outcome_of;
use super::{Proxy, RequestCtx, RetryState};
use crate::attempt::{Facts, Outcome, Retry};

impl Proxy {
    /// What the request allows for a retry now.
    fn facts(&self, session: &Session, ctx: &RequestCtx) -> Facts {
        let req = session.req_header();
        Facts {
            idempotent: req.method.is_idempotent() || req.headers.contains_key("idempotency-key"),
            replayable: !session.as_ref().retry_buffer_truncated(),
            retries_left: {
                let pool = self.pool(ctx);
                ctx.retry.tries_left(&pool.load(), pool.config().retries)
            },
        }
    }

    /// Settles an outcome of the current try and plans the retry it asks for.
    pub(super) fn settle(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        outcome: Outcome,
    ) -> Retry {
        // Facts only where `retry_on` allows a retry: for a connection that
        // failed or broke, and for an answer with a listed status.
        let facts = if RetryState::listed(&self.pool(ctx).config().retry_on, outcome) {
            self.facts(session, ctx)
        } else {
            Facts::NONE
        };
        self.settle_with(ctx, outcome, facts)
    }

    /// Settles an outcome with the retry `facts` given.
    pub(super) fn settle_with(
        &self,
        ctx: &mut RequestCtx,
        outcome: Outcome,
        facts: Facts,
    ) -> Retry {
        let pool = &self.state.pools[ctx.pool];
        let Some(a) = ctx.attempt.as_mut() else {
            return Retry::No;
        };
        let now = Instant::now();
        let failure = &pool.config().circuit_breaker.failure_status;
        let asked = a
            .settle(outcome, facts, |s| failure.contains(&s), now)
            .retry;
        let exhausted = &self.state.metrics.retry_budget_exhausted_total;
        ctx.retry.plan(
            asked,
            outcome,
            &a.upstream,
            &pool.policy.retry_budget,
            now,
            || exhausted.inc(),
        )
    }

    /// Settles what is still open of the last try at the request's end, and
    /// takes its duration.
    pub(super) fn settle_last(
        &self,
        session: &mut Session,
        e: Option<&Error>,
        ctx: &mut RequestCtx,
    ) {
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
