//! A request's retries as one object (Envoy's `RetryState`, Linkerd's retry
//! policy): which outcomes `retry_on` lists, which upstreams were tried, what
//! the last settled outcome asked for and why, and the budget. The proxy's
//! phases ask it one question each.

use std::sync::Arc;
use std::time::Instant;

use smallvec::SmallVec;

use crate::attempt::{Outcome, Retry};
use crate::config::RetryOn;
use crate::pool::Table;
use crate::retry_budget::RetryBudget;
use crate::upstream::{RetryReason, Upstream};

/// One request's retries.
#[derive(Debug, Default)]
pub struct RetryState {
    /// Upstreams tried so far, passed over by the next pick (inline: most
    /// requests make one try, so no allocation).
    tried: SmallVec<[Arc<Upstream>; 2]>,
    /// What the last settled outcome asked for.
    next: Retry,
    /// The upstream whose failure the next pick retries, and why; counted
    /// once a retry is actually sent elsewhere.
    from: Option<(Arc<Upstream>, RetryReason)>,
    /// An answer's status is being retried: its header never reaches the
    /// client, and the error that carries it lets the retry through.
    status_retry: bool,
}

impl RetryState {
    /// Whether `retry_on` lists `outcome` (a stale pooled connection is
    /// always tried again, on a fresh one).
    pub fn listed(on: &RetryOn, outcome: Outcome) -> bool {
        match outcome {
            Outcome::StalePooled => true,
            Outcome::ConnectFailed => on.connect,
            Outcome::Reset => on.reset,
            Outcome::Answered(status) => on.statuses.contains(&status),
            _ => false,
        }
    }

    /// Whether the request has tries left: `retries` retries at most, and an
    /// upstream that `table` publishes as pickable and that it has not tried.
    pub fn tries_left(&self, table: &Table, retries: usize) -> bool {
        self.tried.len() <= retries
            && (0..table.gates.len()).any(|i| table.pickable(i) && !self.has_tried(table, i))
    }

    /// Whether the request was already sent to index `i` of `table`, by
    /// name: an upstream replaced under its name meanwhile is the same one.
    pub fn has_tried(&self, table: &Table, i: usize) -> bool {
        let name = &table.upstreams()[i].name;
        self.tried.iter().any(|t| &t.name == name)
    }

    /// Whether no try has been made yet.
    pub fn is_first(&self) -> bool {
        self.tried.is_empty()
    }

    /// Takes what `classify` asked for after `outcome` on `upstream`: a try
    /// on another upstream only within `budget` (a stale pooled connection's
    /// fresh one is no extra load and not counted). Returns the retry in
    /// force; `exhausted` is told when the budget refused one.
    pub fn plan(
        &mut self,
        asked: Retry,
        outcome: Outcome,
        upstream: &Arc<Upstream>,
        budget: &RetryBudget,
        now: Instant,
        exhausted: impl FnOnce(),
    ) -> Retry {
        let mut retry = asked;
        if retry == Retry::Other && !budget.try_retry(now) {
            exhausted();
            retry = Retry::No;
        }
        self.next = retry;
        if retry == Retry::Other {
            let reason = match outcome {
                Outcome::ConnectFailed => RetryReason::Connect,
                Outcome::Answered(_) => RetryReason::Status,
                _ => RetryReason::Reset,
            };
            self.from = Some((upstream.clone(), reason));
        }
        retry
    }

    /// Whether the next try is on the same upstream (a stale pooled
    /// connection); clears the plan.
    pub fn take_same(&mut self) -> bool {
        std::mem::take(&mut self.next) == Retry::Same
    }

    /// The request is sent to `upstream`: it is tried, and the failure it
    /// retries (if any) is counted on the upstream that failed.
    pub fn sent(&mut self, upstream: Arc<Upstream>) {
        if let Some((from, reason)) = self.from.take() {
            from.count_retry(reason);
        }
        self.tried.push(upstream);
    }

    /// An answer's status is retried: the header is held back.
    pub fn hold_status(&mut self) {
        self.status_retry = true;
    }

    /// Whether an error carries a status retry (and clears it).
    pub fn take_status_retry(&mut self) -> bool {
        std::mem::take(&mut self.status_retry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::state::SharedState;

    #[test]
    fn tries_are_left_only_while_an_untried_upstream_may_be_picked() {
        let text = "lb:\n  retries: 2\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:1\" }\n    - { name: b, addr: \"127.0.0.1:2\" }\n    - { name: c, addr: \"127.0.0.1:3\" }\n";
        let s = SharedState::new(Config::parse(text).unwrap().0);
        s.upstream("c").unwrap().set_drained(true);
        let mut r = RetryState::default();
        assert!(r.tries_left(&s.pool().table(), 2));
        r.sent(s.upstream("a").unwrap());
        assert!(r.tries_left(&s.pool().table(), 2), "b is left");
        r.sent(s.upstream("b").unwrap());
        assert!(
            !r.tries_left(&s.pool().table(), 2),
            "c is drained: no try left though the table has three"
        );
        s.upstream("c").unwrap().set_drained(false);
        assert!(r.tries_left(&s.pool().table(), 2));
        assert!(!r.tries_left(&s.pool().table(), 1), "retries: 1 spent");
    }

    #[test]
    fn the_budget_decides_another_upstream_and_the_reason_is_counted_once_sent() {
        let text = "lb:\n  retry_budget: { ratio: 0.0, min_per_sec: 0.1 }\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:1\" }\n    - { name: b, addr: \"127.0.0.1:2\" }\n";
        let s = SharedState::new(Config::parse(text).unwrap().0);
        let (a, b) = (s.upstream("a").unwrap(), s.upstream("b").unwrap());
        let now = Instant::now();
        let mut r = RetryState::default();
        r.sent(a.clone());
        let mut refused = 0;
        let out = r.plan(
            Retry::Other,
            Outcome::ConnectFailed,
            &a,
            &s.pool().policy.retry_budget,
            now,
            || refused += 1,
        );
        assert_eq!(out, Retry::Other, "one retry in reserve");
        assert_eq!(
            a.stats
                .retries_total
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        r.sent(b.clone());
        assert_eq!(
            a.stats
                .retries_total
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        let out = r.plan(
            Retry::Other,
            Outcome::Reset,
            &b,
            &s.pool().policy.retry_budget,
            now,
            || refused += 1,
        );
        assert_eq!((out, refused), (Retry::No, 1), "the reserve is spent");
        assert!(!r.take_same());
    }
}
