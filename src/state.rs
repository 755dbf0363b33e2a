//! The one state object the proxy, the background tasks and the dashboard share.
//! Counters and flags are atomics and tables are swapped whole; the breaker's
//! small mutex is held only for a state check, never across a request.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::balancer::Balancer;
use crate::breaker::{Admission, Breaker, BreakerState, Transition};
use crate::config::Config;
use crate::metrics::Metrics;

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
    pub stats: UpstreamStats,
}

impl Upstream {
    pub fn breaker_state(&self) -> BreakerState {
        BreakerState::from_u8(self.breaker_state.load(Ordering::Relaxed))
    }

    fn breaker(&self) -> MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
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
    /// Newest last; bounded to [`EVENTS_KEPT`].
    events: Mutex<VecDeque<Event>>,
}

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
                    .set(u.weight as i64);
                Upstream {
                    name: u.name.clone(),
                    addr: u.addr,
                    base_weight: AtomicU32::new(u.weight),
                    healthy: AtomicBool::new(true),
                    drained: AtomicBool::new(false),
                    breaker: Mutex::new(Breaker::new(&config.lb.circuit_breaker)),
                    breaker_state: AtomicU8::new(BreakerState::Closed as u8),
                    stats: UpstreamStats::default(),
                }
            })
            .collect();
        let weights: Vec<u32> = config.lb.upstreams.iter().map(|u| u.weight).collect();
        let balancer = Balancer::new(config.lb.algorithm, &weights);
        let state = SharedState {
            config,
            upstreams,
            balancer,
            metrics,
            events: Mutex::new(VecDeque::with_capacity(EVENTS_KEPT)),
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

    /// Publishes the selection weights in force to the metrics.
    pub fn publish_effective_weights(&self) {
        let table = self.balancer.table();
        for (id, u) in self.upstreams.iter().enumerate() {
            let w = table.weights.get(id).copied().unwrap_or(0);
            self.metrics
                .upstream_weight
                .with_label_values(&[u.name.as_str(), "effective"])
                .set(w as i64);
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
        Snapshot {
            time: unix_time(),
            algorithm: self.balancer.algorithm().as_str(),
            sticky: self.config.lb.sticky.mode.as_str(),
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
                    effective_weight: table.weights.get(id).copied().unwrap_or(0),
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

#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub time: f64,
    pub algorithm: &'static str,
    pub sticky: &'static str,
    pub upstreams: Vec<UpstreamSnapshot>,
    /// Newest first.
    pub events: Vec<Event>,
}

#[derive(Debug, Serialize)]
pub struct UpstreamSnapshot {
    pub name: String,
    pub addr: String,
    /// `up` or `down`, from active health checks.
    pub health: &'static str,
    /// `closed`, `half_open` or `open`.
    pub breaker: &'static str,
    pub drained: bool,
    pub base_weight: u32,
    pub effective_weight: u32,
    pub requests_total: u64,
    pub errors_total: u64,
    pub retries_total: u64,
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
