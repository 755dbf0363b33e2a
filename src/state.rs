//! The one state object the proxy, the background tasks and the dashboard share.
//! Counters and flags are atomics and tables are swapped whole; the breaker's
//! small mutex is held only for a state check, never across a request.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::{Histogram, IntGauge};
use serde::Serialize;

use crate::balancer::Balancer;
use crate::breaker::{Admission, Breaker, BreakerState, Transition};
use crate::config::{Algorithm, Config, StickyMode};
use crate::ewma::Ewma;
use crate::metrics::Metrics;
use crate::sticky::{CookieSticky, IpHash, StickyResult};

/// The stickiness in force.
#[derive(Debug)]
pub enum Sticky {
    Off,
    Cookie(CookieSticky),
    Ip(IpHash),
}

/// Per-upstream counters, written by the proxy's logging phase.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// Responses received from this upstream (any status).
    pub requests_total: AtomicU64,
    /// Responses counted as failures (a status in `failure_status`, or an error
    /// after connecting), plus connect failures.
    pub errors_total: AtomicU64,
    /// Connect failures after which the request was retried elsewhere.
    pub retries_total: AtomicU64,
    /// Attempts that failed to connect (also in `errors_total`).
    pub connect_failures_total: AtomicU64,
}

/// One configured upstream. Its id is its index in [`SharedState::upstreams`].
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    /// The operator's weight: from the config, changed at run time by the admin API.
    pub base_weight: AtomicU32,
    /// Verdict of the active health checks (starts healthy, as Pingora's does).
    pub healthy: AtomicBool,
    /// Taken out of rotation by the operator.
    pub drained: AtomicBool,
    /// The breaker; locked only to admit a request when not closed, and to record.
    breaker: Mutex<Breaker>,
    /// The breaker's state, readable without the lock (`BreakerState` as u8).
    breaker_state: AtomicU8,
    /// Peak EWMA of response time (time to response header).
    ewma: Mutex<Ewma>,
    /// Requests in progress, counted by [`Inflight`] guards.
    inflight: AtomicI64,
    /// `hlb_upstream_inflight` for this upstream, resolved once.
    inflight_gauge: IntGauge,
    /// `hlb_request_duration_seconds` for this upstream, resolved once.
    pub duration: Histogram,
    pub stats: UpstreamStats,
}

impl Upstream {
    pub fn breaker_state(&self) -> BreakerState {
        BreakerState::from_u8(self.breaker_state.load(Ordering::Relaxed))
    }

    fn breaker(&self) -> MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ewma(&self) -> MutexGuard<'_, Ewma> {
        self.ewma.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn inflight(&self) -> i64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// The latency estimate in seconds, decayed since its last sample (P2C's
    /// view), if any sample has been seen.
    pub fn latency_estimate(&self, now: Instant) -> Option<f64> {
        self.ewma().get_at(now)
    }

    /// The latency estimate as of its last sample, unless that is older than
    /// `max_age` (the view `dynamic` and the dashboard use).
    pub fn recent_latency(&self, now: Instant, max_age: Duration) -> Option<f64> {
        self.ewma().recent(now, max_age)
    }
}

/// Counts one request in progress on an upstream for as long as it lives, so
/// that failed and cancelled requests are counted out too.
#[derive(Debug)]
pub struct Inflight {
    state: Arc<SharedState>,
    id: usize,
}

impl Inflight {
    pub fn new(state: Arc<SharedState>, id: usize) -> Self {
        let u = &state.upstreams[id];
        u.inflight.fetch_add(1, Ordering::Relaxed);
        u.inflight_gauge.inc();
        Inflight { state, id }
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        let u = &self.state.upstreams[self.id];
        u.inflight.fetch_sub(1, Ordering::Relaxed);
        u.inflight_gauge.dec();
    }
}

/// Something that happened, for the events timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub time: f64,
    /// The upstream concerned, if any.
    pub upstream: Option<String>,
    /// `health`, `breaker`, `admin`, `reload`, …
    pub kind: &'static str,
    pub detail: String,
}

/// How many events are kept.
pub const EVENTS_KEPT: usize = 500;

/// Everything the parts of one process share.
#[derive(Debug)]
pub struct SharedState {
    pub config: Config,
    /// Fixed for the life of the process, in config order.
    pub upstreams: Vec<Upstream>,
    pub balancer: Balancer,
    pub metrics: Metrics,
    pub sticky: Sticky,
    /// Sticky outcomes by [`StickyResult`] (hit, new, moved, invalid).
    sticky_counts: [AtomicU64; 4],
    /// Newest last; bounded to [`EVENTS_KEPT`].
    events: Mutex<VecDeque<Event>>,
    /// Set when the process starts handing over or stopping: answers then ask
    /// clients to close their connections. Atomic for the request path, a watch
    /// for tasks that wait on it.
    draining: AtomicBool,
    draining_watch: tokio::sync::watch::Sender<bool>,
    /// Latency estimate (f64 bits, seconds) assumed for upstreams without
    /// samples: the mean of the others, so a new upstream is neither flooded nor
    /// starved. Updated by the weights tick.
    neutral_latency: AtomicU64,
}

/// Estimate assumed before any upstream has answered.
const DEFAULT_LATENCY: f64 = 0.001;

impl SharedState {
    pub fn new(config: Config) -> Self {
        let metrics = Metrics::new();
        let upstreams: Vec<Upstream> = config
            .lb
            .upstreams
            .iter()
            .map(|u| {
                metrics.upstream_up.with_label_values(&[&u.name]).set(1);
                metrics
                    .upstream_breaker_state
                    .with_label_values(&[&u.name])
                    .set(0);
                metrics
                    .upstream_weight
                    .with_label_values(&[u.name.as_str(), "base"])
                    .set(u.weight as f64);
                Upstream {
                    name: u.name.clone(),
                    addr: u.addr,
                    base_weight: AtomicU32::new(u.weight),
                    healthy: AtomicBool::new(true),
                    drained: AtomicBool::new(false),
                    breaker: Mutex::new(Breaker::new(&config.lb.circuit_breaker)),
                    breaker_state: AtomicU8::new(BreakerState::Closed as u8),
                    ewma: Mutex::new(Ewma::new(config.lb.dynamic_weights.half_life)),
                    inflight: AtomicI64::new(0),
                    inflight_gauge: metrics.upstream_inflight.with_label_values(&[&u.name]),
                    duration: metrics
                        .request_duration_seconds
                        .with_label_values(&[&u.name]),
                    stats: UpstreamStats::default(),
                }
            })
            .collect();
        let weights: Vec<u32> = config.lb.upstreams.iter().map(|u| u.weight).collect();
        let balancer = Balancer::new(config.lb.algorithm, &weights);
        let sticky = match config.lb.sticky.mode {
            StickyMode::Off => Sticky::Off,
            StickyMode::Cookie => {
                let secret = match &config.lb.sticky.secret {
                    Some(s) => s.as_bytes().to_vec(),
                    None => {
                        log::warn!(
                            "sticky cookies: no lb.sticky.secret or {} set; using a random \
                             secret, so sessions will not survive a reload or be shared \
                             with other instances",
                            crate::config::SECRET_ENV
                        );
                        rand::random::<[u8; 32]>().to_vec()
                    }
                };
                let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
                Sticky::Cookie(CookieSticky::new(&secret, &names))
            }
            StickyMode::Ip => {
                let ring: Vec<(SocketAddr, u32)> = config
                    .lb
                    .upstreams
                    .iter()
                    .map(|u| (u.addr, u.weight))
                    .collect();
                Sticky::Ip(IpHash::new(&ring))
            }
        };
        let state = SharedState {
            config,
            upstreams,
            balancer,
            metrics,
            sticky,
            sticky_counts: Default::default(),
            events: Mutex::new(VecDeque::with_capacity(EVENTS_KEPT)),
            neutral_latency: AtomicU64::new(DEFAULT_LATENCY.to_bits()),
            draining: AtomicBool::new(false),
            draining_watch: tokio::sync::watch::channel(false).0,
        };
        state.publish_effective_weights();
        state
    }

    /// Whether upstream `id` may take a request now: healthy, not drained, and its
    /// breaker admits it. This is the one place eligibility is decided.
    pub fn admit(&self, id: usize, now: Instant) -> Admission {
        let u = &self.upstreams[id];
        if !u.healthy.load(Ordering::Relaxed) || u.drained.load(Ordering::Relaxed) {
            return Admission::Refused;
        }
        if u.breaker_state() == BreakerState::Closed {
            return Admission::Allowed;
        }
        let (admission, transition) = u.breaker().admit(now);
        if let Some(t) = transition {
            self.breaker_changed(id, t);
        }
        admission
    }

    /// Records a request's outcome on upstream `id` for its breaker.
    pub fn record(&self, id: usize, ok: bool, probe: bool, now: Instant) {
        let u = &self.upstreams[id];
        if !probe && u.breaker_state() != BreakerState::Closed {
            // A late result of a request admitted before the breaker opened.
            return;
        }
        let transition = u.breaker().record(ok, probe, now);
        if let Some(t) = transition {
            self.breaker_changed(id, t);
        }
    }

    /// A probe ended without a result.
    pub fn release_probe(&self, id: usize) {
        self.upstreams[id].breaker().release_probe();
    }

    fn breaker_changed(&self, id: usize, t: Transition) {
        let u = &self.upstreams[id];
        u.breaker_state.store(t.to as u8, Ordering::Relaxed);
        self.metrics
            .upstream_breaker_state
            .with_label_values(&[&u.name])
            .set(t.to.as_metric());
        log::warn!(
            "upstream {}: breaker {} -> {} ({})",
            u.name,
            t.from.as_str(),
            t.to.as_str(),
            t.detail
        );
        self.push_event(
            Some(&u.name),
            "breaker",
            format!("{} → {}: {}", t.from.as_str(), t.to.as_str(), t.detail),
        );
    }

    /// Sets the health-check verdict of every upstream at `addr`; records flips.
    pub fn set_health(&self, addr: SocketAddr, healthy: bool, detail: &str) {
        for u in self.upstreams.iter().filter(|u| u.addr == addr) {
            if u.healthy.swap(healthy, Ordering::Relaxed) != healthy {
                self.metrics
                    .upstream_up
                    .with_label_values(&[&u.name])
                    .set(healthy as i64);
                let verdict = if healthy { "up" } else { "down" };
                log::warn!("upstream {}: health {verdict} ({detail})", u.name);
                self.push_event(Some(&u.name), "health", format!("{verdict}: {detail}"));
            }
        }
    }

    /// Records the response time (seconds, to the response header) of a request
    /// to `id`; a failed request counts as a penalty sample.
    pub fn observe_latency(&self, id: usize, seconds: f64, failed: bool, now: Instant) {
        let mut ewma = self.upstreams[id].ewma();
        if failed {
            let cap = self.config.lb.timeouts.read.as_secs_f64();
            ewma.add_penalty(seconds, cap, now);
        } else if let Err(e) = ewma.add(seconds, now) {
            log::debug!("upstream {}: {e}", self.upstreams[id].name);
        }
    }

    /// The latency estimate used for selection: the EWMA, or the neutral value
    /// for an upstream without samples.
    fn latency_for_selection(&self, id: usize, now: Instant) -> f64 {
        self.upstreams[id]
            .latency_estimate(now)
            .unwrap_or_else(|| f64::from_bits(self.neutral_latency.load(Ordering::Relaxed)))
    }

    /// P2C's cost of sending to `id` now: latency × (in-flight + 1) / weight.
    pub fn cost(&self, id: usize, now: Instant) -> f64 {
        let u = &self.upstreams[id];
        let weight = u.base_weight.load(Ordering::Relaxed).max(1) as f64;
        let load = (u.inflight().max(0) + 1) as f64;
        self.latency_for_selection(id, now) * load / weight
    }

    /// Whether `id` could take traffic, ignoring a breaker that is due a probe:
    /// the set over which the fastest latency is taken.
    fn usable(&self, id: usize) -> bool {
        let u = &self.upstreams[id];
        u.healthy.load(Ordering::Relaxed)
            && !u.drained.load(Ordering::Relaxed)
            && u.breaker_state() == BreakerState::Closed
    }

    /// The weights tick: refreshes the neutral estimate and the latency metrics
    /// and, for `dynamic`, recomputes effective weights as base × clamp(fastest
    /// EWMA / own EWMA, min_factor, 1). Returns the latency factors by id.
    pub fn refresh_weights(&self, now: Instant) -> Vec<f64> {
        let max_age = self.latency_max_age();
        let estimates: Vec<Option<f64>> = self
            .upstreams
            .iter()
            .map(|u| u.recent_latency(now, max_age))
            .collect();
        let known: Vec<f64> = estimates.iter().flatten().copied().collect();
        if !known.is_empty() {
            let mean = known.iter().sum::<f64>() / known.len() as f64;
            self.neutral_latency
                .store(mean.max(1e-6).to_bits(), Ordering::Relaxed);
        }
        for (u, e) in self.upstreams.iter().zip(&estimates) {
            if let Some(e) = e {
                self.metrics
                    .upstream_latency_ewma_seconds
                    .with_label_values(&[&u.name])
                    .set(*e);
            }
        }
        let min_factor = self.config.lb.dynamic_weights.min_factor;
        let fastest = (0..self.upstreams.len())
            .filter(|&id| self.usable(id))
            .filter_map(|id| estimates[id])
            .fold(f64::INFINITY, f64::min);
        let factors: Vec<f64> = estimates
            .iter()
            .map(|e| match e {
                Some(own) if fastest.is_finite() && *own > 0.0 => {
                    (fastest / own).clamp(min_factor, 1.0)
                }
                _ => 1.0,
            })
            .collect();
        if self.balancer.algorithm() == Algorithm::Dynamic {
            let effective: Vec<f64> = self
                .upstreams
                .iter()
                .zip(&factors)
                .map(|(u, f)| u.base_weight.load(Ordering::Relaxed) as f64 * f)
                .collect();
            self.balancer.set_effective_weights(&effective);
        }
        self.publish_effective_weights();
        factors
    }

    /// Estimates older than this are forgotten by `dynamic`: ten half-lives.
    fn latency_max_age(&self) -> Duration {
        self.config.lb.dynamic_weights.half_life * 10
    }

    /// Publishes the selection weights in force to the metrics.
    pub fn publish_effective_weights(&self) {
        let table = self.balancer.table();
        for (id, u) in self.upstreams.iter().enumerate() {
            self.metrics
                .upstream_weight
                .with_label_values(&[u.name.as_str(), "effective"])
                .set(table.effective(id));
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Marks the process as handing over or stopping.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.draining_watch.send_replace(true);
    }

    pub fn draining_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.draining_watch.subscribe()
    }

    /// The id of the upstream called `name`.
    pub fn upstream_id(&self, name: &str) -> Option<usize> {
        self.upstreams.iter().position(|u| u.name == name)
    }

    /// Sets an upstream's base weight and puts the new weights in force.
    pub fn set_base_weight(&self, id: usize, weight: u32) {
        let u = &self.upstreams[id];
        u.base_weight.store(weight, Ordering::Relaxed);
        self.metrics
            .upstream_weight
            .with_label_values(&[u.name.as_str(), "base"])
            .set(weight as f64);
        if self.balancer.algorithm() == Algorithm::Dynamic {
            self.refresh_weights(Instant::now());
        } else {
            let base: Vec<u32> = self
                .upstreams
                .iter()
                .map(|u| u.base_weight.load(Ordering::Relaxed))
                .collect();
            self.balancer.set_weights(&base);
            self.publish_effective_weights();
        }
    }

    /// Why upstream `id` gets the traffic it gets, in a sentence for the dashboard.
    fn reason(&self, id: usize, table: &crate::balancer::Table, now: Instant) -> String {
        let u = &self.upstreams[id];
        if u.drained.load(Ordering::Relaxed) {
            return "drained by the operator: takes no new requests".into();
        }
        if !u.healthy.load(Ordering::Relaxed) {
            return format!(
                "out of rotation: GET {} is failing",
                self.config.lb.health_check.path
            );
        }
        match u.breaker_state() {
            BreakerState::Open => {
                let wait = u
                    .breaker()
                    .open_until()
                    .map(|t| t.saturating_duration_since(now).as_secs_f64())
                    .unwrap_or(0.0);
                return format!(
                    "out of rotation: circuit breaker open after failures; next probe in {wait:.1} s"
                );
            }
            BreakerState::HalfOpen => {
                return "probing: one request at a time tests whether it has recovered".into();
            }
            BreakerState::Closed => {}
        }
        let base = u.base_weight.load(Ordering::Relaxed);
        match self.balancer.algorithm() {
            Algorithm::RoundRobin => "equal turns with every eligible upstream".into(),
            Algorithm::Weighted => {
                let total: u32 = table.weights.iter().sum();
                let share = table.weights[id] as f64 * 100.0 / total.max(1) as f64;
                format!("weight {base}: {share:.0}% of requests")
            }
            Algorithm::Dynamic => {
                let factor = table.effective(id) / base.max(1) as f64;
                let max_age = self.latency_max_age();
                match u.recent_latency(now, max_age) {
                    Some(own) => {
                        let fastest = (0..self.upstreams.len())
                            .filter(|&i| self.usable(i))
                            .filter_map(|i| self.upstreams[i].recent_latency(now, max_age))
                            .fold(f64::INFINITY, f64::min);
                        format!(
                            "weight {base} × latency factor {factor:.2} (fastest {:.1} ms / own {:.1} ms, at least {}) = {:.2}",
                            fastest * 1e3,
                            own * 1e3,
                            self.config.lb.dynamic_weights.min_factor,
                            table.effective(id)
                        )
                    }
                    None => format!("weight {base}: no latency samples yet, full weight"),
                }
            }
            Algorithm::P2c => format!(
                "chosen per request when cheaper: latency × (in-flight + 1) / weight = {:.2} ms",
                self.cost(id, now) * 1e3
            ),
        }
    }

    /// Counts one sticky outcome.
    pub fn count_sticky(&self, result: StickyResult) {
        self.sticky_counts[result as usize].fetch_add(1, Ordering::Relaxed);
        self.metrics
            .sticky_total
            .with_label_values(&[result.as_str()])
            .inc();
    }

    fn sticky_snapshot(&self) -> StickySnapshot {
        let n = |r: StickyResult| self.sticky_counts[r as usize].load(Ordering::Relaxed);
        let (hit, new, moved, invalid) = (
            n(StickyResult::Hit),
            n(StickyResult::New),
            n(StickyResult::Moved),
            n(StickyResult::Invalid),
        );
        let total = hit + new + moved + invalid;
        StickySnapshot {
            hit,
            new,
            moved,
            invalid,
            hit_ratio: if total == 0 {
                None
            } else {
                Some(hit as f64 / total as f64)
            },
        }
    }

    pub fn push_event(&self, upstream: Option<&str>, kind: &'static str, detail: String) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() == EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(Event {
            time: unix_time(),
            upstream: upstream.map(str::to_string),
            kind,
            detail,
        });
    }

    /// Events, newest first.
    pub fn events(&self) -> Vec<Event> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.iter().rev().cloned().collect()
    }

    /// The JSON snapshot served at `/api/state`.
    pub fn snapshot(&self) -> Snapshot {
        let table = self.balancer.table();
        let now = Instant::now();
        let max_age = self.latency_max_age();
        Snapshot {
            time: unix_time(),
            algorithm: self.balancer.algorithm().as_str(),
            sticky: self.config.lb.sticky.mode.as_str(),
            sticky_stats: self.sticky_snapshot(),
            upstreams: self
                .upstreams
                .iter()
                .enumerate()
                .map(|(id, u)| UpstreamSnapshot {
                    name: u.name.clone(),
                    addr: u.addr.to_string(),
                    health: if u.healthy.load(Ordering::Relaxed) {
                        "up"
                    } else {
                        "down"
                    },
                    breaker: u.breaker_state().as_str(),
                    drained: u.drained.load(Ordering::Relaxed),
                    base_weight: u.base_weight.load(Ordering::Relaxed),
                    effective_weight: if self.usable(id) {
                        (table.effective(id) * 100.0).round() / 100.0
                    } else {
                        0.0
                    },
                    inflight: u.inflight().max(0),
                    rps: 0.0,
                    error_rate: 0.0,
                    latency_ms: LatencySnapshot {
                        ewma: u
                            .recent_latency(now, max_age)
                            .map(|s| (s * 1e5).round() / 100.0),
                        p50: None,
                        p95: None,
                        p99: None,
                    },
                    reason: self.reason(id, &table, now),
                    requests_total: u.stats.requests_total.load(Ordering::Relaxed),
                    errors_total: u.stats.errors_total.load(Ordering::Relaxed),
                    retries_total: u.stats.retries_total.load(Ordering::Relaxed),
                })
                .collect(),
            events: self.events(),
        }
    }
}

/// Seconds since the Unix epoch, with milliseconds.
pub fn unix_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub time: f64,
    pub algorithm: &'static str,
    /// `off`, `cookie` or `ip`.
    pub sticky: &'static str,
    pub sticky_stats: StickySnapshot,
    pub upstreams: Vec<UpstreamSnapshot>,
    /// Newest first.
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamSnapshot {
    pub name: String,
    pub addr: String,
    /// `up` or `down`, from active health checks.
    pub health: &'static str,
    /// `closed`, `half_open` or `open`.
    pub breaker: &'static str,
    pub drained: bool,
    pub base_weight: u32,
    /// Weight in force: base × latency factor for `dynamic`; 0 while out of
    /// rotation (down, breaker open, drained).
    pub effective_weight: f64,
    pub inflight: i64,
    /// Responses per second over the last few seconds (filled by the dashboard).
    pub rps: f64,
    /// Share of those responses that were failures.
    pub error_rate: f64,
    pub latency_ms: LatencySnapshot,
    /// Why this upstream gets the traffic it gets.
    pub reason: String,
    pub requests_total: u64,
    pub errors_total: u64,
    pub retries_total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StickySnapshot {
    pub hit: u64,
    pub new: u64,
    pub moved: u64,
    pub invalid: u64,
    /// hit / all sticky decisions; null before the first.
    pub hit_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencySnapshot {
    /// Peak EWMA in milliseconds; null before the first sample.
    pub ewma: Option<f64>,
    /// Percentiles over the last few seconds, from the duration histogram.
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SharedState {
        let text = "lb:\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:1\" }\n    - { name: b, addr: \"127.0.0.1:2\" }\n  circuit_breaker: { fail_threshold: 2, open_time: 1s }\n";
        SharedState::new(Config::parse(text).unwrap().0)
    }

    #[test]
    fn eligibility_combines_health_drain_and_breaker() {
        let s = state();
        let now = Instant::now();
        assert_eq!(s.admit(0, now), Admission::Allowed);
        s.set_health(s.upstreams[0].addr, false, "test");
        assert_eq!(s.admit(0, now), Admission::Refused);
        s.set_health(s.upstreams[0].addr, true, "test");
        s.upstreams[0].drained.store(true, Ordering::Relaxed);
        assert_eq!(s.admit(0, now), Admission::Refused);
        s.upstreams[0].drained.store(false, Ordering::Relaxed);
        s.record(0, false, false, now);
        s.record(0, false, false, now);
        assert_eq!(s.admit(0, now), Admission::Refused);
        assert_eq!(s.admit(1, now), Admission::Allowed);
        assert_eq!(s.upstreams[0].breaker_state(), BreakerState::Open);
    }

    #[test]
    fn flips_and_transitions_are_events_newest_first() {
        let s = state();
        let now = Instant::now();
        s.set_health(s.upstreams[1].addr, false, "GET /health failed twice");
        s.set_health(s.upstreams[1].addr, false, "again");
        s.record(0, false, false, now);
        s.record(0, false, false, now);
        let events = s.events();
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].kind, "breaker");
        assert_eq!(events[0].upstream.as_deref(), Some("a"));
        assert_eq!(events[1].kind, "health");
        assert_eq!(events[1].detail, "down: GET /health failed twice");
        let text = s.metrics.render();
        assert!(text.contains("hlb_upstream_up{upstream=\"b\"} 0"), "{text}");
        assert!(
            text.contains("hlb_upstream_breaker_state{upstream=\"a\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn dynamic_factors_follow_latency_and_are_clamped() {
        let text = "lb:\n  algorithm: dynamic\n  dynamic_weights: { min_factor: 0.05 }\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:1\", weight: 4 }\n    - { name: b, addr: \"127.0.0.1:2\", weight: 4 }\n    - { name: c, addr: \"127.0.0.1:3\", weight: 4 }\n    - { name: d, addr: \"127.0.0.1:4\", weight: 4 }\n";
        let s = SharedState::new(Config::parse(text).unwrap().0);
        let now = Instant::now();
        s.observe_latency(0, 0.010, false, now);
        s.observe_latency(1, 0.040, false, now);
        s.observe_latency(2, 10.0, false, now);
        let f = s.refresh_weights(now);
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 0.25).abs() < 1e-9, "{f:?}");
        assert_eq!(f[2], 0.05, "clamped to min_factor");
        assert_eq!(f[3], 1.0, "no samples: neutral");
        let table = s.balancer.table();
        assert_eq!(table.effective(0), 4.0);
        assert_eq!(table.effective(1), 1.0);
        assert_eq!(table.effective(2), 0.2);
        // The slow one recovers: its weight comes back.
        let later = now + std::time::Duration::from_secs(60);
        s.observe_latency(0, 0.010, false, later);
        s.observe_latency(2, 0.010, false, later);
        let f = s.refresh_weights(later);
        assert!(f[2] > 0.9, "{f:?}");
    }

    #[test]
    fn inflight_guards_count_out_on_drop() {
        let s = Arc::new(state());
        let g1 = Inflight::new(s.clone(), 0);
        let g2 = Inflight::new(s.clone(), 0);
        assert_eq!(s.upstreams[0].inflight(), 2);
        drop(g1);
        assert_eq!(s.upstreams[0].inflight(), 1);
        assert!(s.cost(0, Instant::now()) > s.cost(1, Instant::now()));
        drop(g2);
        assert_eq!(s.upstreams[0].inflight(), 0);
    }

    #[test]
    fn the_event_ring_is_bounded() {
        let s = state();
        for i in 0..EVENTS_KEPT + 10 {
            s.push_event(None, "admin", format!("{i}"));
        }
        let events = s.events();
        assert_eq!(events.len(), EVENTS_KEPT);
        assert_eq!(events[0].detail, format!("{}", EVENTS_KEPT + 9));
    }
}
