//! One upstream: its identity (name and address), weights, breaker, latency
//! estimate, in-flight count, counters and metric handles. [`Upstream::admit`]
//! and [`Upstream::record`] are the only way through its breaker; while the
//! breaker is closed neither takes a lock, so the request path never waits.
//!
//! Upstreams are shared as `Arc<Upstream>`: the table holds one, and so does
//! every request in flight, so an upstream removed from the table finishes its
//! requests normally.

use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus::{Gauge, Histogram, IntCounter, IntCounterVec, IntGauge};
use tokio::sync::Notify;

use crate::balancer::probe::Probes;
use crate::breaker::{Admission, Breaker, BreakerState, Transition};
use crate::config::{BreakerConfig, UpstreamConfig};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::sticky::{Sealer, UpstreamKey};

/// Why a failed attempt was retried on another upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    Connect = 0,
    Reset = 1,
    Status = 2,
}

impl RetryReason {
    pub const ALL: [RetryReason; 3] = [
        RetryReason::Connect,
        RetryReason::Reset,
        RetryReason::Status,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Connect => "connect",
            RetryReason::Reset => "reset",
            RetryReason::Status => "status",
        }
    }
}

/// What every upstream is made with: the process's settings and shared sinks.
#[derive(Debug, Clone)]
pub struct UpstreamEnv {
    pub breaker: BreakerConfig,
    /// Half-life of the latency estimate.
    pub half_life: Duration,
    /// Cap of a failure's penalty latency sample (the read timeout), seconds.
    pub penalty_cap: f64,
    pub metrics: Metrics,
    pub events: Arc<Events>,
    /// Seals sticky cookies; gives each upstream its cookie id.
    pub sealer: Option<Sealer>,
    /// Woken whenever an upstream's eligibility may have changed (a breaker
    /// transition, a health flip, a drain), so panic mode is reassessed.
    pub changed: Arc<Notify>,
    /// `lb.slow_start`: how long a recovered or new upstream ramps its
    /// weight (zero: off).
    pub slow_start: Duration,
}

/// Per-upstream counters for the dashboard's rates.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// Responses received (any status).
    pub requests_total: AtomicU64,
    /// Attempts that failed: a status in `failure_status`, no answer, or a
    /// break after connecting.
    pub errors_total: AtomicU64,
    /// Failed attempts on this upstream that were retried elsewhere.
    pub retries_total: AtomicU64,
    /// Attempts that got no answer at all (also in `errors_total`).
    pub unanswered_total: AtomicU64,
}

/// This upstream's metric series, resolved once so the request path never
/// formats a label.
#[derive(Debug)]
struct Handles {
    inflight: IntGauge,
    up: IntGauge,
    ejected: IntGauge,
    sidelined: IntGauge,
    probe: Gauge,
    breaker: IntGauge,
    base_weight: Gauge,
    effective_weight: Gauge,
    latency: Gauge,
    duration: Histogram,
    /// `hlb_retries_total` by [`RetryReason`].
    retries: [IntCounter; 3],
    /// `hlb_requests_total{code}` by status, grown as new codes are seen (rarely).
    by_code: ArcSwap<Vec<(u16, IntCounter)>>,
    /// `hlb_requests_total{code="error"}`: attempts without an answer.
    unanswered: IntCounter,
    /// `hlb_requests_total`, to resolve a code not seen before.
    requests: IntCounterVec,
}

/// One upstream.
#[derive(Debug)]
pub struct Upstream {
    /// Identity: cookie ids, metric labels and dashboard history key on it.
    pub name: String,
    pub addr: SocketAddr,
    /// Id inside sticky cookies (an HMAC of the name).
    pub sticky_key: UpstreamKey,
    /// The operator's weight: from the config or the admin API.
    base_weight: AtomicU32,
    /// `dynamic`'s latency factor (f64 bits), set by the weights tick.
    factor: AtomicU64,
    /// Ejected for its failure rate until then (milliseconds since `epoch`);
    /// 0 when not ejected.
    ejected_until_ms: AtomicU64,
    /// Ejections not yet lived down (each doubles the next).
    ejections: AtomicU32,
    /// Slow start: the share of its weight it takes now (f64 bits, 1 when
    /// not ramping), set with the weights tick.
    ramp: AtomicU64,
    /// When its slow start began (milliseconds since `epoch`, plus one); 0
    /// when not ramping.
    ramp_since_ms: AtomicU64,
    slow_start: Duration,
    /// The `dns:` or `srv:` entry it was discovered from, if any.
    pub group: Option<String>,
    /// How it is spoken to (HTTP/2, TLS).
    pub protocol: crate::config::UpstreamProtocol,
    /// SRV priority in its group (lower preferred).
    priority: AtomicU16,
    /// A lower-priority SRV target held back while its group's preferred
    /// priority has an eligible member.
    standby: AtomicBool,
    /// Verdict of the active health checks (starts healthy, as Pingora's does,
    /// unless it joined at run time: see `awaiting_checks`).
    healthy: AtomicBool,
    /// Joined at run time: takes no traffic until this many health checks in
    /// a row pass (0: not waiting).
    awaiting_checks: AtomicUsize,
    /// Taken out of rotation by the operator.
    drained: AtomicBool,
    /// The breaker; locked only to admit while not closed, and to record a
    /// failure or the success that ends a run of failures.
    breaker: Mutex<Breaker>,
    /// Mirror of the breaker's state (`BreakerState as u8`), written under its lock.
    breaker_state: AtomicU8,
    /// Mirror of the breaker's consecutive failures, written under its lock:
    /// a success with none pending needs no lock.
    failures: AtomicU32,
    /// Mirror of when an open breaker lets its probe through (milliseconds
    /// since `epoch`): until then it refuses without a lock.
    open_until_ms: AtomicU64,
    /// Mirror of a half-open breaker's probe being out: refused without a lock.
    probe_out: AtomicBool,
    /// Origin of the millisecond mirrors.
    epoch: Instant,
    /// Peak EWMA of response time (to the response header).
    ewma: crate::ewma::SharedEwma,
    /// Health-check response times, and when a client request last answered.
    probes: Probes,
    /// Too slow for client requests (`dynamic`, `p2c`): weighed 0, measured
    /// by probes.
    sidelined: AtomicBool,
    penalty_cap: f64,
    /// Requests in progress, counted by [`Inflight`] guards.
    inflight: AtomicI64,
    pub stats: UpstreamStats,
    metrics: Handles,
    events: Arc<Events>,
    changed: Arc<Notify>,
}

impl Upstream {
    pub fn new(conf: &UpstreamConfig, env: &UpstreamEnv) -> Self {
        let m = &env.metrics;
        let name = conf.name.as_str();
        let handles = Handles {
            inflight: m.upstream_inflight.with_label_values(&[name]),
            up: m.upstream_up.with_label_values(&[name]),
            ejected: m.upstream_ejected.with_label_values(&[name]),
            sidelined: m.upstream_sidelined.with_label_values(&[name]),
            probe: m.upstream_probe_seconds.with_label_values(&[name]),
            breaker: m.upstream_breaker_state.with_label_values(&[name]),
            base_weight: m.upstream_weight.with_label_values(&[name, "base"]),
            effective_weight: m.upstream_weight.with_label_values(&[name, "effective"]),
            latency: m.upstream_latency_ewma_seconds.with_label_values(&[name]),
            duration: m.request_duration_seconds.with_label_values(&[name]),
            retries: RetryReason::ALL
                .map(|r| m.retries_total.with_label_values(&[name, r.as_str()])),
            by_code: ArcSwap::from_pointee(Vec::new()),
            unanswered: m.requests_total.with_label_values(&[name, "error"]),
            requests: m.requests_total.clone(),
        };
        handles.up.set(1);
        handles.breaker.set(0);
        handles.inflight.set(0);
        handles.base_weight.set(conf.weight as f64);
        handles.effective_weight.set(conf.weight as f64);
        // One origin for every millisecond mirror of this upstream.
        let epoch = Instant::now();
        Upstream {
            name: conf.name.clone(),
            addr: conf.addr,
            sticky_key: env
                .sealer
                .as_ref()
                .map_or([0; 8], |s| s.upstream_key(&conf.name)),
            base_weight: AtomicU32::new(conf.weight),
            factor: AtomicU64::new(1f64.to_bits()),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            ramp: AtomicU64::new(1f64.to_bits()),
            ramp_since_ms: AtomicU64::new(0),
            slow_start: env.slow_start,
            group: conf.group.clone(),
            protocol: conf.protocol.clone(),
            priority: AtomicU16::new(conf.priority),
            standby: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            awaiting_checks: AtomicUsize::new(0),
            drained: AtomicBool::new(false),
            breaker: Mutex::new(Breaker::new(&env.breaker)),
            breaker_state: AtomicU8::new(BreakerState::Closed as u8),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probe_out: AtomicBool::new(false),
            epoch,
            ewma: crate::ewma::SharedEwma::new(env.half_life, epoch),
            probes: Probes::new(epoch),
            sidelined: AtomicBool::new(false),
            penalty_cap: env.penalty_cap,
            inflight: AtomicI64::new(0),
            stats: UpstreamStats::default(),
            metrics: handles,
            events: env.events.clone(),
            changed: env.changed.clone(),
        }
    }

    /// Removes this upstream's series from the registry (it left the table and
    /// no upstream of the same name replaced it).
    pub fn retire_metrics(&self, m: &Metrics) {
        let name = self.name.as_str();
        let _ = m.upstream_inflight.remove_label_values(&[name]);
        let _ = m.upstream_up.remove_label_values(&[name]);
        let _ = m.upstream_ejected.remove_label_values(&[name]);
        let _ = m.upstream_sidelined.remove_label_values(&[name]);
        let _ = m.upstream_probe_seconds.remove_label_values(&[name]);
        let _ = m.upstream_breaker_state.remove_label_values(&[name]);
        let _ = m.upstream_weight.remove_label_values(&[name, "base"]);
        let _ = m.upstream_weight.remove_label_values(&[name, "effective"]);
        let _ = m.upstream_latency_ewma_seconds.remove_label_values(&[name]);
        let _ = m.request_duration_seconds.remove_label_values(&[name]);
        for r in RetryReason::ALL {
            let _ = m.retries_total.remove_label_values(&[name, r.as_str()]);
        }
        let _ = m.requests_total.remove_label_values(&[name, "error"]);
        for (code, _) in self.metrics.by_code.load().iter() {
            let _ = m
                .requests_total
                .remove_label_values(&[name, &code.to_string()]);
        }
    }

    // --- eligibility -------------------------------------------------------

    /// Whether this upstream may take a request now: healthy, not drained, and
    /// its breaker admits it. The one place eligibility is decided.
    pub fn admit(&self, now: Instant) -> Admission {
        if !self.is_healthy() || self.is_drained() || self.is_standby() || self.is_ejected_at(now) {
            return Admission::Refused;
        }
        match self.breaker_state() {
            BreakerState::Closed => return Admission::Allowed,
            // Not due a probe yet, or the probe is out: refused without the lock.
            BreakerState::Open if self.millis(now) < self.open_until_ms.load(Ordering::Relaxed) => {
                return Admission::Refused
            }
            BreakerState::HalfOpen if self.probe_out.load(Ordering::Relaxed) => {
                return Admission::Refused
            }
            _ => {}
        }
        let mut breaker = self.breaker();
        let (admission, transition) = breaker.admit(now);
        self.mirror(&breaker);
        if let Some(t) = transition {
            self.breaker_changed(t);
        }
        admission
    }

    fn millis(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Copies the breaker's state into the lock-free mirrors; called with its
    /// lock held, so the mirrors change in the same order as the breaker.
    fn mirror(&self, breaker: &Breaker) {
        self.breaker_state
            .store(breaker.state() as u8, Ordering::Relaxed);
        self.failures.store(breaker.failures(), Ordering::Relaxed);
        self.probe_out.store(breaker.probe_out(), Ordering::Relaxed);
        // Rounded down, so the lock-free refusal never outlasts the breaker.
        let until = breaker.open_until().map_or(0, |t| self.millis(t));
        self.open_until_ms.store(until, Ordering::Relaxed);
    }

    /// Whether it could take traffic, not counting a breaker due a probe: the
    /// set over which `dynamic` takes the fastest latency.
    pub fn is_usable(&self) -> bool {
        self.is_available()
            && self.breaker_state() == BreakerState::Closed
            && !self.is_ejected_at(Instant::now())
    }

    /// Whether it is ejected for its failure rate at `now`.
    pub fn is_ejected_at(&self, now: Instant) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && self.millis(now) < until
    }

    /// When its ejection ends, if it is ejected at `now`.
    pub fn ejected_until(&self, now: Instant) -> Option<Instant> {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        (until != 0 && self.millis(now) < until).then(|| self.epoch + Duration::from_millis(until))
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
        self.changed.notify_one();
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
            self.changed.notify_one();
        } else if until == 0 && healthy_interval {
            let _ = self
                .ejections
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Healthy, not drained and not held in standby: what panic mode counts
    /// and balances over.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_drained() && !self.is_standby()
    }

    pub fn is_standby(&self) -> bool {
        self.standby.load(Ordering::Relaxed)
    }

    /// Holds back (or releases) a lower-priority SRV target; true if it changed.
    pub fn set_standby(&self, standby: bool) -> bool {
        let changed = self.standby.swap(standby, Ordering::Relaxed) != standby;
        if changed {
            let what = if standby {
                "standby: a preferred SRV priority has eligible targets"
            } else {
                "in use: no preferred SRV target is eligible"
            };
            self.events.push(Some(&self.name), "srv", what.to_string());
            self.changed.notify_one();
        }
        changed
    }

    pub fn priority(&self) -> u16 {
        self.priority.load(Ordering::Relaxed)
    }

    pub fn set_priority(&self, priority: u16) {
        self.priority.store(priority, Ordering::Relaxed);
    }

    /// Joined at run time: out of rotation until `passes` health checks in a
    /// row pass.
    pub fn await_checks(&self, passes: usize) {
        self.awaiting_checks.store(passes.max(1), Ordering::Relaxed);
        self.healthy.store(false, Ordering::Relaxed);
        self.metrics.up.set(0);
    }

    /// Whether it is still waiting for its first passing checks.
    pub fn is_awaiting_checks(&self) -> bool {
        self.awaiting_checks.load(Ordering::Relaxed) > 0
    }

    /// Takes one health check's result while it awaits its first passes
    /// (`passes` in a row needed); a failure starts the count again.
    pub fn first_check(&self, ok: bool, passes: usize) {
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
            self.changed.notify_one();
        }
        was
    }

    /// Whether it may take a request in panic mode, when breakers are
    /// overruled: healthy and not drained.
    pub fn admit_in_panic(&self) -> Admission {
        if self.is_available() {
            Admission::Allowed
        } else {
            Admission::Refused
        }
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
            self.metrics.up.set(healthy as i64);
            let verdict = if healthy { "up" } else { "down" };
            log::warn!("upstream {}: health {verdict} ({detail})", self.name);
            self.events
                .push(Some(&self.name), "health", format!("{verdict}: {detail}"));
            self.changed.notify_one();
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

    /// Records an attempt's outcome for the breaker. `probe` says whether it
    /// was admitted as the half-open probe.
    pub fn record(&self, ok: bool, probe: bool, now: Instant) {
        let closed = self.breaker_state() == BreakerState::Closed;
        if !probe && !closed {
            // A late result of a request admitted before the breaker opened.
            return;
        }
        if ok && closed && self.failures.load(Ordering::Relaxed) == 0 {
            return; // nothing to reset: the common case takes no lock
        }
        let mut breaker = self.breaker();
        let transition = breaker.record(ok, probe, now);
        self.mirror(&breaker);
        if let Some(t) = transition {
            self.breaker_changed(t);
        }
    }

    /// A probe ended without a result: the next request may probe.
    fn release_probe(&self) {
        let mut breaker = self.breaker();
        breaker.release_probe();
        self.mirror(&breaker);
    }

    /// Publishes a transition (metric, log, event).
    fn breaker_changed(&self, t: Transition) {
        self.changed.notify_one();
        self.metrics.breaker.set(t.to.as_metric());
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
    }

    // --- latency -------------------------------------------------------------

    /// Records a response time (seconds, to the response header); a failure
    /// counts as a penalty sample.
    pub fn observe_latency(&self, seconds: f64, failed: bool, now: Instant) {
        self.probes.live_at(now);
        if failed {
            self.ewma.add_penalty(seconds, self.penalty_cap, now);
        } else if let Err(e) = self.ewma.add(seconds, now) {
            log::debug!("upstream {}: {e}", self.name);
        }
    }

    /// Records a passed health check's response time. With no client sample
    /// within `stale_after` (sidelined, or idle), the estimate follows the
    /// typical probe time, times `scale` (client time over probe time).
    pub fn observe_probe(&self, seconds: f64, now: Instant, scale: f64, stale_after: Duration) {
        let Some(typical) = self.probes.push(seconds) else {
            return;
        };
        self.metrics.probe.set(typical);
        if self.is_sidelined() || !self.probes.live_within(now, stale_after) {
            if let Err(e) = self.ewma.set(typical * scale, now) {
                log::debug!("upstream {}: probe {e}", self.name);
            }
        }
    }

    /// The typical response time of its health checks, seconds.
    pub fn probe_latency(&self) -> Option<f64> {
        self.probes.typical()
    }

    /// Whether a client request answered within `max_age` of `now`.
    pub fn serves_clients(&self, now: Instant, max_age: Duration) -> bool {
        self.probes.live_within(now, max_age)
    }

    pub fn is_sidelined(&self) -> bool {
        self.sidelined.load(Ordering::Relaxed)
    }

    /// Sidelines it or brings it back, with an event saying `why`; true if
    /// that changed anything.
    pub fn set_sidelined(&self, sidelined: bool, why: &str) -> bool {
        if self.sidelined.swap(sidelined, Ordering::Relaxed) == sidelined {
            return false;
        }
        self.metrics.sidelined.set(i64::from(sidelined));
        if sidelined {
            self.probes.clear();
        }
        let kind = if sidelined { "sidelined" } else { "returned" };
        self.events.push(Some(&self.name), kind, why.to_string());
        true
    }

    /// The estimate decayed to `now` (P2C's view).
    pub fn latency_estimate(&self, now: Instant) -> Option<f64> {
        self.ewma.get_at(now)
    }

    /// The estimate as of its last sample, unless older than `max_age`
    /// (`dynamic`'s and the dashboard's view).
    pub fn recent_latency(&self, now: Instant, max_age: Duration) -> Option<f64> {
        self.ewma.recent(now, max_age)
    }

    /// Drops a latency estimate older than `max_age`, and publishes the rest.
    pub fn age_latency(&self, now: Instant, max_age: Duration) {
        self.ewma.forget_older_than(now, max_age);
        if let Some(v) = self.ewma.recent(now, max_age) {
            self.metrics.latency.set(v);
        }
    }

    // --- weights -------------------------------------------------------------

    pub fn base_weight(&self) -> u32 {
        self.base_weight.load(Ordering::Relaxed)
    }

    pub fn set_base_weight(&self, weight: u32) {
        self.base_weight.store(weight, Ordering::Relaxed);
        self.metrics.base_weight.set(weight as f64);
    }

    /// `dynamic`'s latency factor in [min_factor, 1]; 1 for other algorithms.
    pub fn factor(&self) -> f64 {
        f64::from_bits(self.factor.load(Ordering::Relaxed))
    }

    pub fn set_factor(&self, factor: f64) {
        self.factor.store(factor.to_bits(), Ordering::Relaxed);
    }

    /// The share of its weight slow start gives it now (1: all).
    pub fn ramp(&self) -> f64 {
        f64::from_bits(self.ramp.load(Ordering::Relaxed))
    }

    /// Begins its slow start at `now`: a tenth of its weight at once.
    pub fn start_ramp(&self, now: Instant) {
        self.ramp_since_ms
            .store(self.millis(now) + 1, Ordering::Relaxed);
        self.ramp.store(0.1f64.to_bits(), Ordering::Relaxed);
        self.events.push(
            Some(&self.name),
            "slow start",
            format!(
                "ramping from 10% to its full weight over {:?}",
                self.slow_start
            ),
        );
    }

    /// Moves its slow start on to `now`; true while it ramps (and on the
    /// advance that ends it), so the table is refreshed. The ramp ends (with
    /// an event) once the window has passed.
    pub fn advance_ramp(&self, now: Instant) -> bool {
        let since = self.ramp_since_ms.load(Ordering::Relaxed);
        if since == 0 {
            return false;
        }
        let elapsed = Duration::from_millis(self.millis(now).saturating_sub(since - 1));
        let share = crate::balancer::slow_start::ramp(elapsed, self.slow_start);
        if share >= 1.0 {
            self.ramp_since_ms.store(0, Ordering::Relaxed);
            self.events
                .push(Some(&self.name), "slow start", "done: full weight".into());
        }
        self.ramp.store(share.to_bits(), Ordering::Relaxed);
        true
    }

    /// Publishes the weight in force.
    pub fn publish_effective_weight(&self, weight: f64) {
        self.metrics.effective_weight.set(weight);
    }

    // --- load and counters ---------------------------------------------------

    pub fn inflight(&self) -> i64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Counts an answered attempt by status.
    pub fn count_response(&self, status: u16, failed: bool) {
        self.stats.requests_total.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.stats.errors_total.fetch_add(1, Ordering::Relaxed);
        }
        self.count_code(status);
    }

    /// Counts an attempt that got no answer (refused, timed out, broken).
    pub fn count_unanswered(&self) {
        self.stats.errors_total.fetch_add(1, Ordering::Relaxed);
        self.stats.unanswered_total.fetch_add(1, Ordering::Relaxed);
        self.metrics.unanswered.inc();
    }

    /// Counts an attempt whose answer broke off after its header.
    pub fn count_broken_body(&self) {
        self.stats.errors_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed attempt that was retried on another upstream.
    pub fn count_retry(&self, reason: RetryReason) {
        self.stats.retries_total.fetch_add(1, Ordering::Relaxed);
        self.metrics.retries[reason as usize].inc();
    }

    /// Observes a whole response's duration.
    pub fn observe_duration(&self, seconds: f64) {
        self.metrics.duration.observe(seconds);
    }

    /// The duration histogram's cumulative buckets, for the dashboard.
    pub fn duration_buckets(&self) -> Vec<(f64, u64)> {
        use prometheus::core::Metric;
        let m = self.metrics.duration.metric();
        m.get_histogram()
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .collect()
    }

    /// Increments `hlb_requests_total{code=status}`: a lock-free lookup of the
    /// resolved series; a code not seen before is resolved once.
    fn count_code(&self, status: u16) {
        if let Some((_, c)) = self
            .metrics
            .by_code
            .load()
            .iter()
            .find(|(s, _)| *s == status)
        {
            c.inc();
            return;
        }
        let counter = self
            .metrics
            .requests
            .with_label_values(&[self.name.as_str(), &status.to_string()]);
        counter.inc();
        self.metrics.by_code.rcu(|codes| {
            let mut codes = Vec::clone(codes);
            if !codes.iter().any(|(s, _)| *s == status) {
                codes.push((status, counter.clone()));
            }
            codes
        });
    }
}

/// Counts one request in progress on an upstream for as long as it lives, so
/// failed and cancelled requests are counted out too.
#[derive(Debug)]
pub struct Inflight {
    upstream: Arc<Upstream>,
}

impl Inflight {
    pub fn new(upstream: Arc<Upstream>) -> Self {
        upstream.inflight.fetch_add(1, Ordering::Relaxed);
        upstream.metrics.inflight.inc();
        Inflight { upstream }
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.upstream.inflight.fetch_sub(1, Ordering::Relaxed);
        self.upstream.metrics.inflight.dec();
    }
}

/// A half-open breaker's one probe. Finished, it records its result; dropped
/// unfinished (the client went away), it is given back so the next request
/// can probe.
#[derive(Debug)]
pub struct Probe {
    upstream: Arc<Upstream>,
    finished: bool,
}

impl Probe {
    pub fn new(upstream: Arc<Upstream>) -> Self {
        Probe {
            upstream,
            finished: false,
        }
    }

    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// Records the probe's result.
    pub fn finish(mut self, ok: bool, now: Instant) {
        self.finished = true;
        self.upstream.record(ok, true, now);
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if !self.finished {
            self.upstream.release_probe();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Config;

    pub fn env(text: &str) -> UpstreamEnv {
        let c = Config::parse(text).unwrap().0;
        UpstreamEnv {
            breaker: c.lb.circuit_breaker.clone(),
            half_life: c.lb.dynamic_weights.half_life,
            penalty_cap: c.lb.timeouts.read.as_secs_f64(),
            metrics: Metrics::new(),
            events: Arc::new(Events::default()),
            sealer: None,
            changed: Arc::new(Notify::new()),
            slow_start: c.lb.slow_start,
        }
    }

    fn upstream() -> (Arc<Upstream>, UpstreamEnv) {
        let env = env("lb:\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:1\" }\n  circuit_breaker: { fail_threshold: 2, open_time: 1s }\n");
        let conf = UpstreamConfig::new("a", "127.0.0.1:1".parse().unwrap(), 3);
        (Arc::new(Upstream::new(&conf, &env)), env)
    }

    #[test]
    fn eligibility_combines_health_drain_and_breaker() {
        let (u, env) = upstream();
        let now = Instant::now();
        assert_eq!(u.admit(now), Admission::Allowed);
        u.set_health(false, "test");
        assert_eq!(u.admit(now), Admission::Refused);
        u.set_health(true, "test");
        u.set_drained(true);
        assert_eq!(u.admit(now), Admission::Refused);
        u.set_drained(false);
        u.record(false, false, now);
        assert_eq!(u.admit(now), Admission::Allowed);
        u.record(false, false, now);
        assert_eq!(u.admit(now), Admission::Refused);
        assert_eq!(u.breaker_state(), BreakerState::Open);
        let events = env.events.newest_first();
        assert_eq!(events[0].kind, "breaker");
        assert_eq!(events[1].detail, "up: test");
        assert_eq!(events[2].detail, "down: test");
        let text = env.metrics.render();
        assert!(
            text.contains("hlb_upstream_breaker_state{upstream=\"a\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn a_success_between_failures_resets_the_count() {
        let (u, _) = upstream();
        let now = Instant::now();
        u.record(false, false, now);
        u.record(true, false, now);
        u.record(false, false, now);
        assert_eq!(u.breaker_state(), BreakerState::Closed);
    }

    /// Opens `u`'s breaker (threshold 2, open 1 s) at `now`; returns when its
    /// probe is due.
    fn open_breaker(u: &Upstream, now: Instant) -> Instant {
        u.record(false, false, now);
        u.record(false, false, now);
        now + Duration::from_secs(2)
    }

    #[test]
    fn a_finished_probe_holds_no_reference() {
        let (u, _) = upstream();
        let later = open_breaker(&u, Instant::now());
        assert_eq!(u.admit(later), Admission::Probe);
        let probe = Probe::new(u.clone());
        assert_eq!(Arc::strong_count(&u), 2);
        probe.finish(true, later);
        assert_eq!(
            Arc::strong_count(&u),
            1,
            "the probe's reference is released"
        );
        assert_eq!(u.breaker_state(), BreakerState::Closed);
    }

    #[test]
    fn a_dropped_probe_is_given_back() {
        let (u, _) = upstream();
        let later = open_breaker(&u, Instant::now());
        assert_eq!(u.admit(later), Admission::Probe);
        assert_eq!(u.admit(later), Admission::Refused);
        drop(Probe::new(u.clone()));
        assert_eq!(u.admit(later), Admission::Probe);
    }

    #[test]
    fn inflight_guards_count_out_on_drop() {
        let (u, env) = upstream();
        let g1 = Inflight::new(u.clone());
        let g2 = Inflight::new(u.clone());
        assert_eq!(u.inflight(), 2);
        drop(g1);
        assert_eq!(u.inflight(), 1);
        drop(g2);
        assert_eq!(u.inflight(), 0);
        assert!(env
            .metrics
            .render()
            .contains("hlb_upstream_inflight{upstream=\"a\"} 0"));
    }

    #[test]
    fn responses_are_counted_by_code_without_formatting_twice() {
        let (u, env) = upstream();
        for _ in 0..3 {
            u.count_response(200, false);
        }
        u.count_response(503, true);
        u.count_unanswered();
        let text = env.metrics.render();
        assert!(
            text.contains("hlb_requests_total{code=\"200\",upstream=\"a\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("hlb_requests_total{code=\"503\",upstream=\"a\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hlb_requests_total{code=\"error\",upstream=\"a\"} 1"),
            "{text}"
        );
        assert_eq!(u.stats.errors_total.load(Ordering::Relaxed), 2);
        assert_eq!(u.metrics.by_code.load().len(), 2);
        u.retire_metrics(&env.metrics);
        assert!(!env.metrics.render().contains("upstream=\"a\""));
    }
}
