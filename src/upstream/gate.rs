//! An upstream's gates: health checks, the operator's drain, ejection, SRV
//! standby and the circuit breaker, read together as one [`Gate`] by
//! [`Upstream::gate`], the one place eligibility is decided. Every change of
//! a gate is told to the pool through the [`GateSignal`], which republishes
//! its eligible set at once; picks read only that published set.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::breaker::{Admission, Breaker, BreakerState, Transition};

use super::Upstream;

/// Where an upstream stands for new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Takes requests.
    Eligible,
    /// Its breaker's open time is over: the next request picked for it
    /// claims the probe (see [`Upstream::claim_probe`]).
    ProbeDue,
    /// Healthy and in rotation, but held back by its breaker (open, or its
    /// probe out) or an ejection: panic mode overrules this.
    Tripped,
    /// Out of rotation: failing health checks, awaiting its first checks,
    /// drained, or a standby SRV target.
    Out,
}

impl Gate {
    /// Whether it may take a request outside panic mode.
    pub fn is_eligible(self) -> bool {
        matches!(self, Gate::Eligible | Gate::ProbeDue)
    }

    /// Whether it is healthy and in rotation: what panic mode counts, and
    /// balances over.
    pub fn is_healthy(self) -> bool {
        self != Gate::Out
    }
}

/// Told when one of an upstream's gates changes.
pub trait GateObserver: Send + Sync {
    fn gate_changed(&self);
}

/// The line from a pool's upstreams to the pool: set once the pool exists.
/// Firing it runs the pool's republication on the thread that changed the
/// gate, so the next pick already sees the change.
#[derive(Default)]
pub struct GateSignal {
    observer: OnceLock<Weak<dyn GateObserver>>,
}

impl fmt::Debug for GateSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GateSignal")
    }
}

impl GateSignal {
    pub fn attach(&self, observer: Weak<dyn GateObserver>) {
        let _ = self.observer.set(observer);
    }

    pub fn fire(&self) {
        if let Some(o) = self.observer.get().and_then(Weak::upgrade) {
            o.gate_changed();
        }
    }
}

impl Upstream {
    /// Where it stands at `now`: the one eligibility.
    pub fn gate(&self, now: Instant) -> Gate {
        if self.is_standby() {
            return Gate::Out;
        }
        self.gate_before_standby(now)
    }

    /// [`Upstream::gate`] without SRV standby, which is decided from the
    /// others' gates.
    pub fn gate_before_standby(&self, now: Instant) -> Gate {
        if !self.is_healthy() || self.is_drained() {
            return Gate::Out;
        }
        if self.is_ejected_at(now) {
            return Gate::Tripped;
        }
        match self.breaker_state() {
            BreakerState::Closed => Gate::Eligible,
            // The mirror is rounded down: strictly past it, the breaker agrees.
            BreakerState::Open if self.millis(now) > self.open_until_ms.load(Ordering::Relaxed) => {
                Gate::ProbeDue
            }
            BreakerState::HalfOpen if !self.probe_out.load(Ordering::Relaxed) => Gate::ProbeDue,
            _ => Gate::Tripped,
        }
    }

    /// When its gate changes next by itself (an open breaker comes due, an
    /// ejection runs out), if it will.
    pub fn next_gate_change(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| {
            if t > now && next.is_none_or(|n| t < n) {
                next = Some(t);
            }
        };
        if self.breaker_state() == BreakerState::Open {
            let due = self.open_until_ms.load(Ordering::Relaxed) + 1;
            consider(self.instant(due));
        }
        if let Some(until) = self.ejected_until(now) {
            consider(until);
        }
        next
    }

    // --- ejection ----------------------------------------------------------

    /// Whether it is ejected for its failure rate at `now`.
    pub fn is_ejected_at(&self, now: Instant) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && self.millis(now) < until
    }

    /// When its ejection ends, if it is ejected at `now`.
    pub fn ejected_until(&self, now: Instant) -> Option<Instant> {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        (until != 0 && self.millis(now) < until).then(|| self.instant(until))
    }

    /// Ejections not yet lived down.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Ejects it from `now` for `length`; `why` goes into the event.
    pub fn eject(&self, now: Instant, length: Duration, why: &str) {
        let until = self.millis(now) + length.as_millis() as u64;
        self.ejected_until_ms.store(until.max(1), Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        self.metrics.ejected.set(1);
        log::warn!("upstream {}: ejected for {length:?} ({why})", self.name);
        self.events.push(
            Some(&self.name),
            "ejection",
            format!("ejected for {length:?}: {why}"),
        );
        self.signal.fire();
    }

    /// After an interval not ejected: says so once an ejection has run out,
    /// and lives down one past ejection when `healthy_interval`.
    pub fn after_interval(&self, now: Instant, healthy_interval: bool) {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        if until != 0 && self.millis(now) >= until {
            self.ejected_until_ms.store(0, Ordering::Relaxed);
            self.metrics.ejected.set(0);
            self.events
                .push(Some(&self.name), "ejection", "back in rotation".into());
            self.signal.fire();
        } else if until == 0 && healthy_interval {
            let _ = self
                .ejections
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    // --- SRV standby ----------------------------------------------------------

    pub fn is_standby(&self) -> bool {
        self.standby.load(Ordering::Relaxed)
    }

    /// Holds back (or releases) a lower-priority SRV target, with an event;
    /// true if it changed. Set by the pool while it publishes, so it does not
    /// signal.
    pub fn set_standby(&self, standby: bool) -> bool {
        let changed = self.standby.swap(standby, Ordering::Relaxed) != standby;
        if changed {
            let what = if standby {
                "standby: a preferred SRV priority has eligible targets"
            } else {
                "in use: no preferred SRV target is eligible"
            };
            self.events.push(Some(&self.name), "srv", what.to_string());
        }
        changed
    }

    pub fn priority(&self) -> u16 {
        self.priority.load(Ordering::Relaxed)
    }

    pub fn set_priority(&self, priority: u16) {
        self.priority.store(priority, Ordering::Relaxed);
    }

    // --- health and drain -----------------------------------------------------

    /// Joined at run time: out of rotation until `passes` health checks in a
    /// row pass.
    pub fn await_checks(&self, passes: usize) {
        self.awaiting_checks.store(passes.max(1), Ordering::Relaxed);
        self.healthy.store(false, Ordering::Relaxed);
        self.metrics.up.set(0);
    }

    /// Joined at run time from a DNS answer: eligible at once, as nginx's
    /// `resolve` takes a new address, so a rotating answer never empties its
    /// group; but its first failed check or connection takes it out until
    /// `passes` checks in a row pass.
    pub fn on_probation(&self, passes: usize) {
        self.probation.store(passes.max(1), Ordering::Relaxed);
    }

    /// Its first check or connection failed while on probation: out of
    /// rotation until its checks pass (with an event).
    pub fn fail_probation(&self, why: &str) {
        let passes = self.probation.swap(0, Ordering::Relaxed);
        if passes == 0 {
            return;
        }
        self.awaiting_checks.store(passes, Ordering::Relaxed);
        if self.healthy.swap(false, Ordering::Relaxed) {
            if !self.is_retired() {
                self.metrics.up.set(0);
            }
            let detail = format!("down: {why} right after it joined from DNS");
            log::warn!("upstream {}: health {detail}", self.name);
            self.events.push(Some(&self.name), "health", detail);
            self.signal.fire();
        }
    }

    /// Whether it is still waiting for its first passing checks.
    pub fn is_awaiting_checks(&self) -> bool {
        self.awaiting_checks.load(Ordering::Relaxed) > 0
    }

    /// Takes one health check's result while it awaits its first passes
    /// (`passes` in a row needed); a failure starts the count again.
    pub fn first_check(&self, ok: bool, passes: usize) {
        if self.probation.load(Ordering::Relaxed) > 0 {
            if ok {
                // Its check passed: trusted like any other from now on.
                self.probation.store(0, Ordering::Relaxed);
            } else {
                self.fail_probation("its first health check failed");
            }
            return;
        }
        let left = self.awaiting_checks.load(Ordering::Relaxed);
        if left == 0 {
            return;
        }
        if !ok {
            self.awaiting_checks.store(passes.max(1), Ordering::Relaxed);
            return;
        }
        if left == 1 {
            self.awaiting_checks.store(0, Ordering::Relaxed);
            self.set_health(true, &format!("passed its first {passes} health checks"));
        } else {
            self.awaiting_checks.store(left - 1, Ordering::Relaxed);
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Drains (or enables) the upstream; returns what it was.
    pub fn set_drained(&self, drained: bool) -> bool {
        let was = self.drained.swap(drained, Ordering::Relaxed);
        if was != drained {
            self.signal.fire();
        }
        was
    }

    /// Takes a health-check verdict; a flip is logged, published and an event.
    pub fn set_health(&self, healthy: bool, detail: &str) {
        if !healthy {
            // Its first checks are moot once Pingora's own verdict is in.
            self.awaiting_checks.store(0, Ordering::Relaxed);
        }
        if self.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            if healthy && !self.slow_start.is_zero() {
                self.start_ramp(Instant::now());
            }
            if !self.is_retired() {
                self.metrics.up.set(healthy as i64);
            }
            let verdict = if healthy { "up" } else { "down" };
            log::warn!("upstream {}: health {verdict} ({detail})", self.name);
            self.events
                .push(Some(&self.name), "health", format!("{verdict}: {detail}"));
            self.signal.fire();
        }
    }

    // --- breaker -------------------------------------------------------------

    pub fn breaker_state(&self) -> BreakerState {
        BreakerState::from_u8(self.breaker_state.load(Ordering::Relaxed))
    }

    /// When an open breaker lets its next probe through.
    pub fn breaker_open_until(&self) -> Option<Instant> {
        self.breaker().open_until()
    }

    fn breaker(&self) -> MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the breaker under its lock and mirrors the result; what
    /// it returns is published after the lock is released.
    fn with_breaker<T>(&self, f: impl FnOnce(&mut Breaker) -> T) -> T {
        let mut breaker = self.breaker();
        let out = f(&mut breaker);
        self.mirror(&breaker);
        out
    }

    /// Copies the breaker's state into the lock-free mirrors; called with its
    /// lock held, so the mirrors change in the same order as the breaker.
    fn mirror(&self, breaker: &Breaker) {
        self.breaker_state
            .store(breaker.state() as u8, Ordering::Relaxed);
        self.failures.store(breaker.failures(), Ordering::Relaxed);
        self.probe_out.store(breaker.probe_out(), Ordering::Relaxed);
        // Rounded down: `gate` calls it due only strictly past this.
        let until = breaker.open_until().map_or(0, |t| self.millis(t));
        self.open_until_ms.store(until, Ordering::Relaxed);
    }

    /// Claims its breaker's probe for a request picked for it while its gate
    /// read [`Gate::ProbeDue`]: `Probe` if this request carries it, `Allowed`
    /// if the breaker closed meanwhile, `Refused` if another request claimed
    /// it first.
    pub fn claim_probe(&self, now: Instant) -> Admission {
        let (admission, transition) = self.with_breaker(|b| b.admit(now));
        match transition {
            Some(t) => self.breaker_changed(t),
            // Half-open already: its probe is out now, a gate change too.
            None if admission == Admission::Probe => self.signal.fire(),
            None => {}
        }
        admission
    }

    /// Records an attempt's outcome for the breaker. `probe` says whether it
    /// was admitted as the half-open probe.
    pub fn record(&self, ok: bool, probe: bool, now: Instant) {
        let closed = self.breaker_state() == BreakerState::Closed;
        if !probe && !closed {
            // A late result of a request admitted before the breaker opened,
            // or one panic mode sent past it: only probes decide.
            return;
        }
        if ok && closed && self.failures.load(Ordering::Relaxed) == 0 {
            return; // nothing to reset: the common case takes no lock
        }
        if let Some(t) = self.with_breaker(|b| b.record(ok, probe, now)) {
            self.breaker_changed(t);
        }
    }

    /// A probe ended without a result: the next request may probe.
    pub(super) fn release_probe(&self) {
        self.with_breaker(Breaker::release_probe);
        self.signal.fire();
    }

    /// Publishes a transition (metric, log, event), the breaker's lock released.
    fn breaker_changed(&self, t: Transition) {
        if !self.is_retired() {
            self.metrics.breaker.set(t.to.as_metric());
        }
        log::warn!(
            "upstream {}: breaker {} -> {} ({})",
            self.name,
            t.from.as_str(),
            t.to.as_str(),
            t.detail
        );
        self.events.push(
            Some(&self.name),
            "breaker",
            format!("{} → {}: {}", t.from.as_str(), t.to.as_str(), t.detail),
        );
        self.signal.fire();
    }
}
