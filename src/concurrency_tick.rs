//! The concurrency limits' tick (`concurrency.adaptive`): every window, each
//! upstream of a pool ends its window of answers and takes the limit it
//! teaches; when a limit rises, the pool's waiting requests look again. The
//! pool's overload, when it begins refusing and when it has stopped, is an
//! event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::pool::Pool;

/// One window: long enough for a few answers at modest load, short enough
/// to follow a burst within a second.
pub const WINDOW: Duration = Duration::from_millis(100);

/// An overload is over once nothing was refused for this long.
const QUIET: Duration = Duration::from_secs(10);

/// Whether a pool is refusing for overload, told by its refusal count.
#[derive(Debug, Default)]
pub struct Overload {
    /// The count at the last tick.
    seen: u64,
    /// While refusing: the count before it began, since when, and when it
    /// last refused.
    since: Option<(u64, Instant, Instant)>,
}

/// What changed at a tick.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Began,
    /// Over, after refusing this many for this long.
    Ended(u64, Duration),
}

impl Overload {
    /// Takes the pool's refusals so far at `now`.
    pub fn update(&mut self, refused: u64, now: Instant) -> Option<Change> {
        let more = refused > self.seen;
        let before = std::mem::replace(&mut self.seen, refused);
        match &mut self.since {
            None if more => {
                self.since = Some((before, now, now));
                Some(Change::Began)
            }
            Some((_, _, last)) if more => {
                *last = now;
                None
            }
            Some((from, began, last)) if now.saturating_duration_since(*last) >= QUIET => {
                let change = Change::Ended(refused - *from, last.saturating_duration_since(*began));
                self.since = None;
                Some(change)
            }
            _ => None,
        }
    }
}

/// One tick at `now`; the pool's overload `state` follows it.
pub fn tick(pool: &Pool, state: &mut Overload, now: Instant) {
    let Some(queue) = &pool.queue else {
        return;
    };
    let (refused, _) = queue.totals();
    match state.update(refused, now) {
        Some(Change::Began) => {
            let detail = format!(
                "pool {}: every upstream at its concurrency limit; requests beyond them are \
                 refused with 503 + Retry-After",
                pool.name()
            );
            log::warn!("{detail}");
            pool.env().events.push(None, "overload", detail);
        }
        Some(Change::Ended(n, over)) => {
            let detail = format!(
                "pool {}: overload over; {n} requests refused in {:.1} s",
                pool.name(),
                over.as_secs_f64()
            );
            pool.env().events.push(None, "overload", detail);
        }
        None => {}
    }
    let table = pool.load();
    let mut rose = false;
    for u in table.upstreams() {
        rose |= u.tick_limit(now);
    }
    if rose {
        queue.grew();
    }
}

pub struct ConcurrencyService {
    pool: Arc<Pool>,
}

impl ConcurrencyService {
    pub fn new(pool: Arc<Pool>) -> Self {
        ConcurrencyService { pool }
    }
}

#[async_trait]
impl BackgroundService for ConcurrencyService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if self.pool.queue.is_none() {
            return;
        }
        let mut interval = tokio::time::interval(WINDOW);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut overload = Overload::default();
        loop {
            tokio::select! {
                _ = interval.tick() => tick(&self.pool, &mut overload, Instant::now()),
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overload_begins_with_its_first_refusal_and_ends_after_a_quiet_spell() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut o = Overload::default();
        assert_eq!(o.update(0, at(0)), None);
        assert_eq!(o.update(5, at(1)), Some(Change::Began));
        assert_eq!(o.update(40, at(3)), None);
        // Quiet, but not for long enough yet.
        assert_eq!(o.update(40, at(12)), None);
        assert_eq!(
            o.update(40, at(13)),
            Some(Change::Ended(40, Duration::from_secs(2)))
        );
        assert_eq!(o.update(40, at(30)), None);
        assert_eq!(o.update(41, at(31)), Some(Change::Began));
    }
}
