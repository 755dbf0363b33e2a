//! Per-upstream circuit breaker as a pure state machine: time is passed in, no I/O.
//!
//! ```text
//!            fail_threshold consecutive failures
//!   Closed ─────────────────────────────────────► Open (open_for)
//!     ▲                                            │ open_for elapsed: the next
//!     │ probe succeeds                             ▼ request becomes the probe
//!     └──────────────────────────────────────── HalfOpen ── probe fails ──► Open (open_for × 2, ≤ max)
//! ```
//!
//! Half-open admits exactly one probe at a time; every other request is refused
//! until the probe's result is recorded, so a still-failing upstream never gets a
//! burst. Results of requests admitted before the breaker opened are ignored.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    /// Value of `hlb_upstream_breaker_state`: 0 closed, 1 half-open, 2 open.
    pub fn as_metric(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }

    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => BreakerState::Closed,
            1 => BreakerState::HalfOpen,
            _ => BreakerState::Open,
        }
    }
}

/// What the breaker says to a request that wants this upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Allowed,
    /// This request is the one probe; its result must be recorded (or released).
    Probe,
    /// Open, or a probe is already out.
    Refused,
}

/// A change of state, for events and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    /// Human-readable reason, as shown in the events timeline.
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    fail_threshold: u32,
    open_time: Duration,
    max_open_time: Duration,
    state: BreakerState,
    /// Consecutive failures while closed.
    failures: u32,
    /// Length of the current (or next) open period.
    open_for: Duration,
    /// When the open period ends.
    open_until: Option<Instant>,
    /// Whether the half-open probe is out.
    probe_out: bool,
}

impl Breaker {
    pub fn new(config: &BreakerConfig) -> Self {
        Breaker {
            fail_threshold: config.fail_threshold.max(1),
            open_time: config.open_time,
            max_open_time: config.max_open_time.max(config.open_time),
            state: BreakerState::Closed,
            failures: 0,
            open_for: config.open_time,
            open_until: None,
            probe_out: false,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Consecutive failures counted while closed.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the half-open probe is out (every other request is refused).
    pub fn probe_out(&self) -> bool {
        self.state == BreakerState::HalfOpen && self.probe_out
    }

    /// When an open breaker will let its next probe through.
    pub fn open_until(&self) -> Option<Instant> {
        match self.state {
            BreakerState::Open => self.open_until,
            _ => None,
        }
    }

    /// Asks to send one request. An open breaker whose time is up turns half-open
    /// and makes this request the probe.
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        match self.state {
            BreakerState::Closed => (Admission::Allowed, None),
            BreakerState::Open => {
                if self.open_until.is_some_and(|t| now >= t) {
                    self.state = BreakerState::HalfOpen;
                    self.probe_out = true;
                    let t = Transition {
                        from: BreakerState::Open,
                        to: BreakerState::HalfOpen,
                        detail: "open time over: one probe request let through".into(),
                    };
                    (Admission::Probe, Some(t))
                } else {
                    (Admission::Refused, None)
                }
            }
            BreakerState::HalfOpen => {
                if self.probe_out {
                    (Admission::Refused, None)
                } else {
                    self.probe_out = true;
                    (Admission::Probe, None)
                }
            }
        }
    }

    /// Records a request's outcome. `probe` says whether it was admitted as the probe.
    pub fn record(&mut self, ok: bool, probe: bool, now: Instant) -> Option<Transition> {
        match self.state {
            BreakerState::Closed => {
                if ok {
                    self.failures = 0;
                    None
                } else {
                    self.failures += 1;
                    if self.failures >= self.fail_threshold {
                        self.open_for = self.open_time;
                        Some(self.open(
                            now,
                            BreakerState::Closed,
                            format!("{} consecutive failures", self.failures),
                        ))
                    } else {
                        None
                    }
                }
            }
            BreakerState::HalfOpen if probe => {
                self.probe_out = false;
                if ok {
                    self.state = BreakerState::Closed;
                    self.failures = 0;
                    self.open_for = self.open_time;
                    self.open_until = None;
                    Some(Transition {
                        from: BreakerState::HalfOpen,
                        to: BreakerState::Closed,
                        detail: "probe succeeded".into(),
                    })
                } else {
                    self.open_for = (self.open_for * 2).min(self.max_open_time);
                    Some(self.open(now, BreakerState::HalfOpen, "probe failed".into()))
                }
            }
            // Late results of requests admitted before the breaker opened.
            BreakerState::HalfOpen | BreakerState::Open => None,
        }
    }

    /// Gives back a probe whose request ended without a result (cancelled by the
    /// client, say), so that the next request can probe.
    pub fn release_probe(&mut self) {
        if self.state == BreakerState::HalfOpen {
            self.probe_out = false;
        }
    }

    fn open(&mut self, now: Instant, from: BreakerState, why: String) -> Transition {
        self.state = BreakerState::Open;
        self.failures = 0;
        self.open_until = Some(now + self.open_for);
        Transition {
            from,
            to: BreakerState::Open,
            detail: format!(
                "{why}: open for {}",
                humantime::format_duration(self.open_for)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(&BreakerConfig {
            fail_threshold: 3,
            open_time: Duration::from_secs(5),
            max_open_time: Duration::from_secs(60),
            failure_status: vec![500],
        })
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let t = Instant::now();
        let mut b = breaker();
        assert_eq!(b.record(false, false, t), None);
        assert_eq!(b.record(false, false, t), None);
        let tr = b.record(false, false, t).unwrap();
        assert_eq!((tr.from, tr.to), (BreakerState::Closed, BreakerState::Open));
        assert_eq!(b.admit(t).0, Admission::Refused);
        assert_eq!(b.admit(t + secs(4)).0, Admission::Refused);
    }

    #[test]
    fn a_success_resets_the_count() {
        let t = Instant::now();
        let mut b = breaker();
        b.record(false, false, t);
        b.record(false, false, t);
        b.record(true, false, t);
        b.record(false, false, t);
        b.record(false, false, t);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    fn open_breaker(t: Instant) -> Breaker {
        let mut b = breaker();
        for _ in 0..3 {
            b.record(false, false, t);
        }
        b
    }

    #[test]
    fn half_open_admits_exactly_one_probe_at_a_time() {
        let t = Instant::now();
        let mut b = open_breaker(t);
        let (a, tr) = b.admit(t + secs(5));
        assert_eq!(a, Admission::Probe);
        assert_eq!(tr.unwrap().to, BreakerState::HalfOpen);
        for i in 0..100 {
            assert_eq!(
                b.admit(t + secs(5) + Duration::from_millis(i)).0,
                Admission::Refused
            );
        }
        // A late result of an ordinary request changes nothing.
        assert_eq!(b.record(true, false, t + secs(6)), None);
        assert_eq!(b.admit(t + secs(6)).0, Admission::Refused);
    }

    #[test]
    fn successful_probe_closes_and_resets() {
        let t = Instant::now();
        let mut b = open_breaker(t);
        b.admit(t + secs(5));
        let tr = b.record(true, true, t + secs(5)).unwrap();
        assert_eq!(tr.to, BreakerState::Closed);
        assert_eq!(b.admit(t + secs(5)).0, Admission::Allowed);
        // The open time is back to its start value.
        for _ in 0..3 {
            b.record(false, false, t + secs(6));
        }
        assert_eq!(b.open_until(), Some(t + secs(11)));
    }

    #[test]
    fn failed_probes_double_the_open_time_up_to_the_cap() {
        let t0 = Instant::now();
        let mut b = open_breaker(t0);
        let mut now = t0;
        let mut periods = Vec::new();
        for _ in 0..6 {
            let until = b.open_until().unwrap();
            periods.push((until - now).as_secs());
            now = until;
            assert_eq!(b.admit(now).0, Admission::Probe);
            let tr = b.record(false, true, now).unwrap();
            assert_eq!(
                (tr.from, tr.to),
                (BreakerState::HalfOpen, BreakerState::Open)
            );
        }
        assert_eq!(periods, [5, 10, 20, 40, 60, 60]);
    }

    #[test]
    fn released_probe_lets_the_next_request_probe() {
        let t = Instant::now();
        let mut b = open_breaker(t);
        assert_eq!(b.admit(t + secs(5)).0, Admission::Probe);
        b.release_probe();
        assert_eq!(b.admit(t + secs(5)).0, Admission::Probe);
        assert_eq!(b.admit(t + secs(5)).0, Admission::Refused);
    }

    #[test]
    fn metric_values() {
        assert_eq!(BreakerState::Closed.as_metric(), 0);
        assert_eq!(BreakerState::HalfOpen.as_metric(), 1);
        assert_eq!(BreakerState::Open.as_metric(), 2);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Wait(u64),
        Admit,
        Finish(bool),
        Abandon,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..3000).prop_map(Step::Wait),
            Just(Step::Admit),
            any::<bool>().prop_map(Step::Finish),
            Just(Step::Abandon),
        ]
    }

    proptest! {
        /// Whatever happens, at most one probe is ever out at a time, and no
        /// request is let through while the breaker is open.
        #[test]
        fn never_two_probes_at_once(steps in prop::collection::vec(step(), 1..300)) {
            let mut b = Breaker::new(&BreakerConfig {
                fail_threshold: 2,
                open_time: Duration::from_millis(500),
                max_open_time: Duration::from_secs(4),
                failure_status: vec![],
            });
            let mut now = Instant::now();
            // Requests in flight: true for the probe.
            let mut out: Vec<bool> = Vec::new();
            for s in steps {
                match s {
                    Step::Wait(ms) => now += Duration::from_millis(ms),
                    Step::Admit => {
                        let was_open = b.state() == BreakerState::Open
                            && b.open_until().is_some_and(|t| now < t);
                        let admission = b.admit(now).0;
                        if was_open {
                            prop_assert_eq!(admission, Admission::Refused, "let through while open");
                        }
                        match admission {
                            Admission::Allowed => out.push(false),
                            Admission::Probe => out.push(true),
                            Admission::Refused => {}
                        }
                        prop_assert!(out.iter().filter(|p| **p).count() <= 1, "two probes out");
                    }
                    Step::Finish(ok) => {
                        if let Some(probe) = out.pop() {
                            b.record(ok, probe, now);
                        }
                    }
                    Step::Abandon => {
                        if let Some(i) = out.iter().position(|p| *p) {
                            out.remove(i);
                            b.release_probe();
                        }
                    }
                }
            }
        }
    }
}
