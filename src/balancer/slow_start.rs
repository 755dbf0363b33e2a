//! Slow start (`lb.slow_start`, as Envoy's slow_start_window and nginx's
//! slow_start): an upstream that joins or comes back healthy takes 10% of its
//! weight at first and ramps linearly to all of it over the window, so a cold
//! server (empty caches, JIT, connection pools) is not handed its full share at
//! once. The ramp is applied with the weights tick and on every health change.

use std::time::Duration;

/// The share of its weight an upstream ramping for `elapsed` of a `window`
/// gets: 10% at the start, 100% at the end and after.
pub fn ramp(elapsed: Duration, window: Duration) -> f64 {
    if window.is_zero() || elapsed >= window {
        return 1.0;
    }
    0.1 + 0.9 * elapsed.as_secs_f64() / window.as_secs_f64()
}

/// Fixed-point scale of selection weights for the WRR and P2C algorithms when
/// slow start is on, so a weight-1 upstream can take a tenth of its share.
pub const RAMP_SCALE: u32 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ramp_runs_from_a_tenth_to_all_over_the_window() {
        let w = Duration::from_secs(30);
        assert_eq!(ramp(Duration::ZERO, w), 0.1);
        assert!((ramp(Duration::from_secs(10), w) - 0.4).abs() < 1e-9);
        assert!((ramp(Duration::from_secs(15), w) - 0.55).abs() < 1e-9);
        assert_eq!(ramp(w, w), 1.0);
        assert_eq!(ramp(Duration::from_secs(100), w), 1.0);
        assert_eq!(ramp(Duration::ZERO, Duration::ZERO), 1.0, "off");
    }
}
