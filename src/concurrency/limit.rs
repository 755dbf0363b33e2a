//! One upstream's concurrency limit as the request path reads it (one atomic
//! load), and the window of answers the limit is learned from: the request
//! path adds to it with a few atomic adds; the limits' tick takes it whole
//! every window.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use prometheus::IntGauge;

use super::gradient::{Gradient, Window};

#[derive(Debug)]
pub struct Limit {
    /// The limit in force.
    limit: AtomicU32,
    /// The window so far: answers' total time (microseconds), their number,
    /// and the most requests in flight at once.
    sum_us: AtomicU64,
    samples: AtomicU32,
    peak: AtomicU32,
    /// Touched only by the tick.
    gradient: Mutex<Gradient>,
    /// `hlb_upstream_concurrency_limit`.
    gauge: IntGauge,
}

impl Limit {
    pub fn new(gauge: IntGauge, now: Instant) -> Self {
        let gradient = Gradient::new(now);
        gauge.set(i64::from(gradient.limit()));
        Limit {
            limit: AtomicU32::new(gradient.limit()),
            sum_us: AtomicU64::new(0),
            samples: AtomicU32::new(0),
            peak: AtomicU32::new(0),
            gradient: Mutex::new(gradient),
            gauge,
        }
    }

    pub fn get(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Whether one more request may go to an upstream with `inflight`.
    pub fn admits(&self, inflight: i64) -> bool {
        inflight < i64::from(self.get())
    }

    /// A request started on it; `inflight` counts it.
    pub fn started(&self, inflight: i64) {
        self.peak.fetch_max(
            inflight.clamp(0, i64::from(u32::MAX)) as u32,
            Ordering::Relaxed,
        );
    }

    /// An answer's header came after `seconds`.
    pub fn answered(&self, seconds: f64) {
        self.sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.samples.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends the window at `now` (with `inflight` now, the next window's
    /// first peak) and puts the limit it teaches in force: the new limit,
    /// and whether it rose.
    pub fn tick(&self, inflight: i64, now: Instant) -> (u32, bool) {
        let samples = self.samples.swap(0, Ordering::Relaxed);
        let sum = self.sum_us.swap(0, Ordering::Relaxed);
        let peak = self.peak.swap(
            inflight.clamp(0, i64::from(u32::MAX)) as u32,
            Ordering::Relaxed,
        );
        let window = Window {
            samples,
            mean: if samples == 0 {
                0.0
            } else {
                sum as f64 / 1e6 / f64::from(samples)
            },
            peak,
        };
        let mut g = self.gradient.lock().unwrap_or_else(|p| p.into_inner());
        let limit = g.update(window, now);
        let before = self.limit.swap(limit, Ordering::Relaxed);
        self.gauge.set(i64::from(limit));
        (limit, limit > before)
    }

    /// The response time it answers at unloaded, once measured (seconds).
    pub fn floor(&self) -> Option<f64> {
        self.gradient
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .floor()
    }
}
