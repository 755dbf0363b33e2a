//! An upstream's weights: the operator's base weight, `dynamic`'s latency
//! factor, and the slow-start ramp of a new or recovered upstream.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Upstream;

impl Upstream {
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
        if !self.is_retired() {
            self.metrics.effective_weight.set(weight);
        }
    }
}
