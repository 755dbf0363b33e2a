//! A try's upstream under concurrency limits: picked at once when one has
//! room; else the request waits in its pool's queue until a place frees up,
//! at most `concurrency.queue_timeout`, and is refused (a fast 503 with
//! `Retry-After`) when it cannot be served in that time. Without limits this
//! is the pick alone.

use std::sync::Arc;
use std::time::Instant;

use pingora::prelude::*;

use crate::attempt::Attempt;
use crate::concurrency::queue::Admission;
use crate::concurrency::Queue;
use crate::pool::Pick;
use crate::upstream::Upstream;

use super::pick::Choice;
use super::{Proxy, RequestCtx};

/// Where a try goes.
pub(super) enum Admitted {
    /// To this upstream (carrying its breaker's probe if `probe`).
    Go(Arc<Upstream>, bool),
    /// Nowhere: no upstream may be picked.
    NoUpstream,
    /// Nowhere: every upstream is at its limit and the queue is full or
    /// ran out.
    Overloaded,
}

impl Proxy {
    /// The next try, on the upstream [`Proxy::admit`] finds; an error (a
    /// 503) if there is none, with `no_upstream` or `overloaded` set.
    pub(super) async fn attempt(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        now: Instant,
    ) -> Result<Attempt> {
        match self.admit(session, ctx, now).await {
            Admitted::Go(upstream, probe) => Ok(Attempt::new(upstream, probe, Instant::now())),
            Admitted::NoUpstream => {
                ctx.no_upstream = true;
                Error::e_explain(HTTPStatus(503), "no upstream available")
            }
            Admitted::Overloaded => {
                ctx.overloaded = true;
                Error::e_explain(HTTPStatus(503), "every upstream at its concurrency limit")
            }
        }
    }

    /// The upstream for the next try, waiting for a place if every one is
    /// at its concurrency limit.
    pub(super) async fn admit(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        now: Instant,
    ) -> Admitted {
        let pool = &self.state.pools[ctx.pool];
        let queue = pool.queue.clone();
        // First come, first served: with requests already waiting, a newcomer
        // takes its place behind them rather than the place just freed for
        // the first of them.
        let behind = queue.as_ref().is_some_and(|q| q.waiting() > 0);
        if !behind {
            if let Some(done) = self.look(session, ctx, now) {
                return done;
            }
        }
        match queue {
            Some(queue) => self.wait(session, ctx, &queue, behind, now).await,
            None => Admitted::NoUpstream,
        }
    }

    /// One look at the pool's table: where to go, or None if every upstream
    /// is full.
    fn look(&self, session: &Session, ctx: &mut RequestCtx, now: Instant) -> Option<Admitted> {
        let table = self.state.pools[ctx.pool].current(now);
        match self.pick(session, ctx, &table, now) {
            Choice::Picked(Pick { index, probe }) => {
                Some(Admitted::Go(table.upstreams()[index].clone(), probe))
            }
            Choice::Nothing => Some(Admitted::NoUpstream),
            Choice::Full => None,
        }
    }

    /// Waits in `queue` from `start` for a place, looking again each time
    /// one may have freed up (at once, unless it came in `behind` others).
    async fn wait(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        queue: &Queue,
        behind: bool,
        start: Instant,
    ) -> Admitted {
        let pool = &self.state.pools[ctx.pool];
        if queue.admit(pool.places_per_sec(&pool.load(), start)) == Admission::Refuse {
            queue.refused(None);
            return Admitted::Overloaded;
        }
        let _place = queue.enter();
        let deadline = tokio::time::Instant::from_std(start + queue.timeout());
        let mut look = !behind;
        loop {
            let woken = queue.notified();
            tokio::pin!(woken);
            // Registered before looking: a place freed meanwhile wakes it.
            woken.as_mut().enable();
            if look {
                let now = Instant::now();
                match self.look(session, ctx, now) {
                    Some(Admitted::Go(u, probe)) => {
                        queue.served(now.saturating_duration_since(start));
                        return Admitted::Go(u, probe);
                    }
                    Some(other) => return other,
                    None => {}
                }
            }
            look = true;
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                // One last look: a place freed as the time ran out.
                if let Some(Admitted::Go(u, probe)) = self.look(session, ctx, Instant::now()) {
                    queue.served(start.elapsed());
                    return Admitted::Go(u, probe);
                }
                queue.refused(Some(start.elapsed()));
                return Admitted::Overloaded;
            }
        }
    }
}
