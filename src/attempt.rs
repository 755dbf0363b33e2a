//! One try of a request on one upstream, and the pure rule that says what its
//! outcome means.
//!
//! Every proxy phase that learns how a try went reports an [`Outcome`];
//! [`classify`] turns it into a [`Verdict`] (what the breaker hears, which
//! latency sample the estimate takes, what is counted, whether to retry) and
//! [`Attempt::settle`] applies that verdict, at most once per fact.
//!
//! | outcome          | breaker | latency | counted        | retry                                  |
//! |------------------|---------|---------|----------------|----------------------------------------|
//! | connect failed   | failure | penalty | unanswered     | another upstream (nothing was sent)    |
//! | stale pooled     | –       | –       | –              | same upstream, if idempotent, replayable |
//! | reset / closed   | failure | penalty | unanswered     | another upstream, if idempotent, replayable |
//! | timed out        | failure | penalty | unanswered     | no (the upstream may still act on it)  |
//! | answered, failure status | failure | penalty | response | no                                 |
//! | answered         | success | sample  | response       | no                                     |
//! | broke mid-body   | failure (once) | – | broken body   | no (the client has the header)         |
//! | tunnel closed (after 101) | – | –    | –              | no                                     |
//! | abandoned        | –       | –       | –              | no (a probe is given back)             |

use std::sync::Arc;
use std::time::Instant;

use crate::upstream::{Inflight, Probe, Upstream};

/// What happened to one try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The connection could not be made (refused, unreachable, connect timeout).
    ConnectFailed,
    /// A pooled connection turned out to be closed before any answer: the
    /// upstream closed an idle connection, which is not a fault.
    StalePooled,
    /// The upstream closed or reset a fresh connection before answering.
    Reset,
    /// No answer within the read timeout.
    TimedOut,
    /// The response header arrived with this status.
    Answered(u16),
    /// The upstream broke the connection after its header with this status.
    BrokeMidBody(u16),
    /// The request ended on the client's side: it went away, or its body
    /// broke a limit. Not the upstream's doing.
    Abandoned,
}

/// What the request allows, for the retry decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// GET, HEAD, OPTIONS, PUT, DELETE, TRACE, or carrying `Idempotency-Key`.
    pub idempotent: bool,
    /// The body sent so far is buffered whole, so it can be sent again.
    pub replayable: bool,
    /// `lb.retries` and the number of untried upstreams allow another attempt.
    pub retries_left: bool,
}

impl Facts {
    /// A request that may not be retried.
    pub const NONE: Facts = Facts {
        idempotent: false,
        replayable: false,
        retries_left: false,
    };
}

/// The latency sample an outcome gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    None,
    /// The time to the response header.
    Sample,
    /// A failure: a slow sample however fast it failed.
    Penalty,
}

/// What an outcome adds to the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    None,
    /// An answer with this status; `failed` when it is in `failure_status`.
    Response {
        status: u16,
        failed: bool,
    },
    /// No answer at all.
    Unanswered,
    /// An answer that broke off (an error, beyond the response counted).
    BrokenBody,
}

/// Where the request goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retry {
    #[default]
    No,
    /// Again on the same upstream, on a fresh connection.
    Same,
    /// On another upstream.
    Other,
}

/// What one outcome means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Some(ok) to record for the breaker; None leaves it alone.
    pub breaker: Option<bool>,
    pub latency: Latency,
    pub count: Count,
    pub retry: Retry,
}

/// The one place that decides what an outcome means.
pub fn classify(outcome: Outcome, facts: Facts, is_failure: impl Fn(u16) -> bool) -> Verdict {
    let unanswered = |retry| Verdict {
        breaker: Some(false),
        latency: Latency::Penalty,
        count: Count::Unanswered,
        retry,
    };
    let nothing = Verdict {
        breaker: None,
        latency: Latency::None,
        count: Count::None,
        retry: Retry::No,
    };
    let replay = facts.idempotent && facts.replayable;
    match outcome {
        Outcome::ConnectFailed => unanswered(if facts.retries_left {
            Retry::Other
        } else {
            Retry::No
        }),
        Outcome::StalePooled => Verdict {
            retry: if replay { Retry::Same } else { Retry::No },
            ..nothing
        },
        Outcome::Reset => unanswered(if replay && facts.retries_left {
            Retry::Other
        } else {
            Retry::No
        }),
        Outcome::TimedOut => unanswered(Retry::No),
        Outcome::Answered(status) => {
            let failed = is_failure(status);
            Verdict {
                breaker: Some(!failed),
                latency: if failed {
                    Latency::Penalty
                } else {
                    Latency::Sample
                },
                count: Count::Response { status, failed },
                // Facts come only for a status listed in `retry_on`.
                retry: if replay && facts.retries_left {
                    Retry::Other
                } else {
                    Retry::No
                },
            }
        }
        // A tunnel lives by its own rules: idling or closing is not a failure.
        Outcome::BrokeMidBody(101) => nothing,
        Outcome::BrokeMidBody(status) => Verdict {
            // A failure status was already recorded when the header came.
            breaker: (!is_failure(status)).then_some(false),
            latency: Latency::None,
            count: Count::BrokenBody,
            retry: Retry::No,
        },
        Outcome::Abandoned => nothing,
    }
}

/// One try on one upstream.
#[derive(Debug)]
pub struct Attempt {
    pub upstream: Arc<Upstream>,
    /// When the upstream was chosen for this try.
    pub started: Instant,
    /// Counts the try in the upstream's load while it lives.
    _inflight: Inflight,
    /// The half-open probe this try carries, if admitted as one.
    probe: Option<Probe>,
    /// The response status, once the header arrived.
    pub status: Option<u16>,
    /// The last outcome settled, if any.
    pub outcome: Option<Outcome>,
    /// Whether an outcome that ends the try has been settled.
    finished: bool,
}

impl Attempt {
    pub fn new(upstream: Arc<Upstream>, probe: bool, now: Instant) -> Self {
        Attempt {
            _inflight: Inflight::new(upstream.clone()),
            probe: probe.then(|| Probe::new(upstream.clone())),
            upstream,
            started: now,
            status: None,
            outcome: None,
            finished: false,
        }
    }

    /// A fresh try on the same upstream (after a stale pooled connection),
    /// carrying over the probe.
    pub fn again(mut self, now: Instant) -> Self {
        let mut next = Attempt::new(self.upstream.clone(), false, now);
        next.probe = self.probe.take();
        next
    }

    /// Whether an outcome that ends the try was settled already.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Ends the attempt without a verdict: its answer was settled already
    /// and it is being retried elsewhere.
    pub fn retire(&mut self) {
        self.finished = true;
    }

    /// Classifies `outcome` and applies the verdict to the upstream; returns it.
    /// An answer settles the header; any other outcome ends the try, and only
    /// the first such is applied.
    pub fn settle(
        &mut self,
        outcome: Outcome,
        facts: Facts,
        is_failure: impl Fn(u16) -> bool,
        now: Instant,
    ) -> Verdict {
        let v = classify(outcome, facts, is_failure);
        if self.finished {
            return Verdict {
                retry: Retry::No,
                ..v
            };
        }
        match outcome {
            Outcome::Answered(status) => self.status = Some(status),
            _ => self.finished = true,
        }
        self.outcome = Some(outcome);
        let u = &self.upstream;
        if outcome == Outcome::ConnectFailed {
            // A DNS member taken on trust is out at its first failure.
            u.fail_probation("a connection to it failed");
        }
        if let Some(ok) = v.breaker {
            match self.probe.take() {
                Some(p) => p.finish(ok, now),
                None => u.record(ok, false, now),
            }
        }
        let elapsed = now.saturating_duration_since(self.started).as_secs_f64();
        match v.latency {
            Latency::None => {}
            Latency::Sample => u.observe_latency(elapsed, false, now),
            Latency::Penalty => u.observe_latency(elapsed, true, now),
        }
        match v.count {
            Count::None => {}
            Count::Response { status, failed } => u.count_response(status, failed),
            Count::Unanswered => u.count_unanswered(),
            Count::BrokenBody => u.count_broken_body(),
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: Facts = Facts {
        idempotent: true,
        replayable: true,
        retries_left: true,
    };
    const POST: Facts = Facts {
        idempotent: false,
        ..GET
    };
    const LAST: Facts = Facts {
        retries_left: false,
        ..GET
    };

    fn gateway(s: u16) -> bool {
        matches!(s, 502..=504)
    }

    fn v(breaker: Option<bool>, latency: Latency, count: Count, retry: Retry) -> Verdict {
        Verdict {
            breaker,
            latency,
            count,
            retry,
        }
    }

    #[test]
    fn the_table_of_outcomes() {
        use Count as C;
        use Latency as L;
        use Outcome as O;
        let resp = |status, failed| C::Response { status, failed };
        let cases = [
            // connect refused or timed out: nothing was sent, any method may move.
            (
                O::ConnectFailed,
                GET,
                v(Some(false), L::Penalty, C::Unanswered, Retry::Other),
            ),
            (
                O::ConnectFailed,
                POST,
                v(Some(false), L::Penalty, C::Unanswered, Retry::Other),
            ),
            (
                O::ConnectFailed,
                LAST,
                v(Some(false), L::Penalty, C::Unanswered, Retry::No),
            ),
            // a stale pooled connection is nobody's fault.
            (O::StalePooled, GET, v(None, L::None, C::None, Retry::Same)),
            (O::StalePooled, POST, v(None, L::None, C::None, Retry::No)),
            // reset before answering: a failure; only a replayable idempotent request moves.
            (
                O::Reset,
                GET,
                v(Some(false), L::Penalty, C::Unanswered, Retry::Other),
            ),
            (
                O::Reset,
                POST,
                v(Some(false), L::Penalty, C::Unanswered, Retry::No),
            ),
            (
                O::Reset,
                Facts {
                    replayable: false,
                    ..GET
                },
                v(Some(false), L::Penalty, C::Unanswered, Retry::No),
            ),
            (
                O::Reset,
                LAST,
                v(Some(false), L::Penalty, C::Unanswered, Retry::No),
            ),
            // timeout: a failure, never replayed.
            (
                O::TimedOut,
                GET,
                v(Some(false), L::Penalty, C::Unanswered, Retry::No),
            ),
            // answers: facts come only for a status listed in `retry_on`.
            (
                O::Answered(200),
                POST,
                v(Some(true), L::Sample, resp(200, false), Retry::No),
            ),
            (
                O::Answered(500),
                Facts::NONE,
                v(Some(true), L::Sample, resp(500, false), Retry::No),
            ),
            (
                O::Answered(502),
                Facts::NONE,
                v(Some(false), L::Penalty, resp(502, true), Retry::No),
            ),
            (
                O::Answered(502),
                GET,
                v(Some(false), L::Penalty, resp(502, true), Retry::Other),
            ),
            (
                O::Answered(503),
                POST,
                v(Some(false), L::Penalty, resp(503, true), Retry::No),
            ),
            (
                O::Answered(503),
                LAST,
                v(Some(false), L::Penalty, resp(503, true), Retry::No),
            ),
            (
                O::Answered(101),
                Facts::NONE,
                v(Some(true), L::Sample, resp(101, false), Retry::No),
            ),
            // breaks after the header.
            (
                O::BrokeMidBody(200),
                GET,
                v(Some(false), L::None, C::BrokenBody, Retry::No),
            ),
            (
                O::BrokeMidBody(503),
                GET,
                v(None, L::None, C::BrokenBody, Retry::No),
            ),
            (
                O::BrokeMidBody(101),
                GET,
                v(None, L::None, C::None, Retry::No),
            ),
            // the client left.
            (O::Abandoned, GET, v(None, L::None, C::None, Retry::No)),
        ];
        for (outcome, facts, want) in cases {
            assert_eq!(
                classify(outcome, facts, gateway),
                want,
                "{outcome:?} {facts:?}"
            );
        }
    }

    #[test]
    fn the_same_failure_means_the_same_for_get_and_post_but_the_retry() {
        for o in [Outcome::ConnectFailed, Outcome::Reset, Outcome::TimedOut] {
            let (g, p) = (classify(o, GET, gateway), classify(o, POST, gateway));
            assert_eq!(
                (g.breaker, g.latency, g.count),
                (p.breaker, p.latency, p.count)
            );
        }
    }

    fn upstream() -> Arc<Upstream> {
        let env = crate::upstream::tests::env(
            "lb:\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:1\" }\n  circuit_breaker: { fail_threshold: 2 }\n",
        );
        let conf = crate::config::UpstreamConfig::new("a", "127.0.0.1:1".parse().unwrap(), 1);
        Arc::new(Upstream::new(&conf, &env))
    }

    #[test]
    fn a_try_is_settled_once_and_a_fresh_try_starts_its_own_clock() {
        use std::sync::atomic::Ordering::Relaxed;
        let u = upstream();
        let t0 = Instant::now();
        let mut a = Attempt::new(u.clone(), false, t0);
        assert_eq!(u.inflight(), 1);
        let later = t0 + std::time::Duration::from_millis(30);
        a.settle(Outcome::Answered(200), GET, gateway, later);
        a.settle(Outcome::BrokeMidBody(200), GET, gateway, later);
        // The break after the header ended the try: later reports change nothing.
        let v = a.settle(Outcome::Reset, GET, gateway, later);
        assert_eq!(v.retry, Retry::No);
        assert_eq!(u.stats.requests_total.load(Relaxed), 1);
        assert_eq!(u.stats.errors_total.load(Relaxed), 1);
        assert_eq!(u.breaker_state(), crate::breaker::BreakerState::Closed);
        let sample = u.latency_estimate(later).unwrap();
        assert!((sample - 0.030).abs() < 1e-3, "{sample}");
        // A fresh try on the same upstream does not inherit the failed try's start.
        let t1 = t0 + std::time::Duration::from_secs(1);
        let b = a.again(t1);
        assert_eq!(b.started, t1);
        assert_eq!(u.inflight(), 1, "the old try counted out, the new one in");
        drop(b);
        assert_eq!(u.inflight(), 0);
    }
}
