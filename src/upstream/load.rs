//! An upstream's load and speed: requests in flight (an RAII guard) and its
//! concurrency limit, the peak-EWMA latency estimate, its health checks'
//! response times, and whether it is sidelined as too slow for client
//! requests.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Upstream;

/// How long a mirrored sample stands against health-check times: a few
/// mirroring rounds (one a second), whatever the check interval.
const MIRRORED_FOR: Duration = Duration::from_secs(5);

impl Upstream {
    pub fn inflight(&self) -> i64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Whether it has as many requests as its concurrency limit allows.
    pub fn at_limit(&self) -> bool {
        self.limit
            .as_ref()
            .is_some_and(|(l, _)| !l.admits(self.inflight()))
    }

    /// Its concurrency limit, with `concurrency.adaptive`.
    pub fn concurrency_limit(&self) -> Option<u32> {
        self.limit.as_ref().map(|(l, _)| l.get())
    }

    /// The response time its limit is measured against (seconds), once
    /// learned.
    pub fn latency_floor(&self) -> Option<f64> {
        self.limit.as_ref().and_then(|(l, _)| l.floor())
    }

    /// Ends its limit's window at `now`: whether the limit rose.
    pub fn tick_limit(&self, now: Instant) -> bool {
        self.limit
            .as_ref()
            .is_some_and(|(l, _)| l.tick(self.inflight(), now).1)
    }

    /// Records a response time (seconds, to the response header); a failure
    /// counts as a penalty sample.
    pub fn observe_latency(&self, seconds: f64, failed: bool, now: Instant) {
        self.probes.live_at(now);
        if failed {
            self.ewma.add_penalty(seconds, self.penalty_cap, now);
            return;
        }
        if let Some((limit, _)) = &self.limit {
            limit.answered(seconds);
        }
        if let Err(e) = self.ewma.add(seconds, now) {
            log::debug!("upstream {}: {e}", self.name);
        }
    }

    /// Records the time a mirrored copy of a client request took on it
    /// while sidelined (seconds, to its whole answer; a failure or a 5xx is
    /// a penalty sample): the real request path's measure, which health
    /// checks are only a hint beside.
    pub fn observe_mirrored(&self, seconds: f64, failed: bool, now: Instant) {
        self.probes.mirrored_at(now);
        self.stats.mirrored_total.fetch_add(1, Ordering::Relaxed);
        self.metrics.mirrored.inc();
        if failed {
            self.ewma.add_penalty(seconds, self.penalty_cap, now);
        } else if let Err(e) = self.ewma.add(seconds, now) {
            log::debug!("upstream {}: mirrored {e}", self.name);
        }
    }

    /// What its estimate rests on at `now`: client requests, mirrored
    /// copies of them (while sidelined), or health checks alone.
    pub fn measured_by(&self, now: Instant, stale_after: Duration) -> &'static str {
        if self.probes.live_within(now, stale_after) && !self.is_sidelined() {
            "clients"
        } else if self
            .probes
            .mirrored_within(now, stale_after.max(MIRRORED_FOR))
        {
            "mirrored"
        } else {
            "probes"
        }
    }

    /// Records a passed health check's response time. With no client sample
    /// within `stale_after` (idle), or, while sidelined, neither a mirrored
    /// nor a client one for a few seconds, the estimate follows the typical
    /// probe time, times `scale` (client time over probe time).
    pub fn observe_probe(&self, seconds: f64, now: Instant, scale: f64, stale_after: Duration) {
        let Some(typical) = self.probes.push(seconds) else {
            return;
        };
        self.metrics.probe.set(typical);
        let measured = if self.is_sidelined() {
            // Client samples from just before it was sidelined stand until
            // copies of client requests take over: health-check times are
            // the evidence only when there is no traffic to measure it by.
            let fresh = stale_after.max(MIRRORED_FOR);
            self.probes.mirrored_within(now, fresh) || self.probes.live_within(now, fresh)
        } else {
            self.probes.live_within(now, stale_after)
        };
        if !measured {
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
}

/// Counts one request in progress on an upstream for as long as it lives, so
/// failed and cancelled requests are counted out too.
#[derive(Debug)]
pub struct Inflight {
    upstream: Arc<Upstream>,
}

impl Inflight {
    pub fn new(upstream: Arc<Upstream>) -> Self {
        let before = upstream.inflight.fetch_add(1, Ordering::Relaxed);
        if let Some((limit, _)) = &upstream.limit {
            limit.started(before + 1);
        }
        upstream.metrics.inflight.inc();
        Inflight { upstream }
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.upstream.inflight.fetch_sub(1, Ordering::Relaxed);
        // The series is shared with a successor of the same name, which
        // counts its own: each instance adds and takes away only its own.
        self.upstream.metrics.inflight.dec();
        if let Some((_, queue)) = &self.upstream.limit {
            queue.freed();
        }
    }
}
