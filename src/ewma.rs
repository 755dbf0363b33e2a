//! Peak EWMA of an upstream's response time (Finagle's and Linkerd's estimator),
//! with time passed in.
//!
//! - A sample above the estimate replaces it at once (the "peak"): an upstream
//!   that turns slow is seen as slow from its first slow answer.
//! - A sample below it pulls the estimate down smoothly, weighted by how long ago
//!   the last sample was: after one `half_life` of silence a new sample counts
//!   half.
//! - Read at a later time, the estimate decays toward zero with the same
//!   half-life, so an upstream that gets no traffic (because it looked slow) is
//!   eventually tried again instead of being shunned forever.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SampleError {
    #[error("latency sample is not a number")]
    NaN,
    #[error("latency sample is negative or infinite: {0}")]
    OutOfRange(f64),
}

#[derive(Debug, Clone)]
pub struct Ewma {
    /// Time constant: half_life / ln 2.
    tau: f64,
    /// Estimate in seconds at `stamp`; None until the first sample.
    value: Option<(f64, Instant)>,
}

impl Ewma {
    pub fn new(half_life: Duration) -> Self {
        Ewma {
            tau: half_life.as_secs_f64().max(1e-3) / std::f64::consts::LN_2,
            value: None,
        }
    }

    /// Whether any sample has been recorded.
    pub fn has_data(&self) -> bool {
        self.value.is_some()
    }

    /// The estimate in seconds as of `now`, decayed since the last sample; None
    /// before the first sample. Reading changes nothing.
    pub fn get_at(&self, now: Instant) -> Option<f64> {
        let (v, stamp) = self.value?;
        let dt = now.saturating_duration_since(stamp).as_secs_f64();
        Some(v * (-dt / self.tau).exp())
    }

    /// The estimate as of the last sample, without decay, if that sample is at
    /// most `max_age` old at `now`. This is what `dynamic` weighs by: a slow
    /// upstream must not look fast merely because it was spared traffic.
    pub fn recent(&self, now: Instant, max_age: Duration) -> Option<f64> {
        let (v, stamp) = self.value?;
        (now.saturating_duration_since(stamp) <= max_age).then_some(v)
    }

    /// Adds a response time in seconds observed at `now`.
    pub fn add(&mut self, sample: f64, now: Instant) -> Result<(), SampleError> {
        if sample.is_nan() {
            return Err(SampleError::NaN);
        }
        if !(0.0..f64::INFINITY).contains(&sample) {
            return Err(SampleError::OutOfRange(sample));
        }
        let next = match self.get_at(now) {
            None => sample,
            Some(current) if sample > current => sample,
            Some(current) => {
                let (_, stamp) = self.value.expect("has a value");
                let dt = now.saturating_duration_since(stamp).as_secs_f64();
                let w = (-dt / self.tau).exp();
                current * w + sample * (1.0 - w)
            }
        };
        self.value = Some((next, now));
        Ok(())
    }

    /// Counts a failure (error status, timeout, refused connection) as a slow
    /// sample: twice the current estimate or the observed time, whichever is
    /// larger, capped at `cap` — so a failing upstream looks slow however fast it
    /// fails.
    pub fn add_penalty(&mut self, observed: f64, cap: f64, now: Instant) {
        let current = self.get_at(now).unwrap_or(0.0);
        let penalty = (2.0 * current).max(observed).max(1e-3).min(cap);
        let _ = self.add(penalty, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HALF: Duration = Duration::from_secs(5);

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9_f64.max(b.abs() * 1e-6)
    }

    #[test]
    fn first_sample_is_the_estimate() {
        let t = Instant::now();
        let mut e = Ewma::new(HALF);
        assert_eq!(e.get_at(t), None);
        e.add(0.020, t).unwrap();
        assert!(close(e.get_at(t).unwrap(), 0.020));
    }

    #[test]
    fn a_slower_sample_is_taken_at_once() {
        let t = Instant::now();
        let mut e = Ewma::new(HALF);
        e.add(0.010, t).unwrap();
        e.add(0.200, t + ms(1)).unwrap();
        assert!(close(e.get_at(t + ms(1)).unwrap(), 0.200));
    }

    #[test]
    fn a_faster_sample_pulls_down_by_elapsed_time() {
        let t = Instant::now();
        let mut e = Ewma::new(HALF);
        e.add(0.100, t).unwrap();
        // One half-life later the old estimate has decayed to 0.05 and the new
        // sample counts half: 0.05 * 0.5 + 0.01 * 0.5.
        e.add(0.010, t + HALF).unwrap();
        assert!(
            close(e.get_at(t + HALF).unwrap(), 0.030),
            "{:?}",
            e.get_at(t + HALF)
        );
        // A sample right after another barely moves it.
        let before = e.get_at(t + HALF).unwrap();
        e.add(0.001, t + HALF + ms(1)).unwrap();
        assert!(e.get_at(t + HALF + ms(1)).unwrap() > before * 0.99);
    }

    #[test]
    fn reading_decays_without_mutating() {
        let t = Instant::now();
        let mut e = Ewma::new(HALF);
        e.add(0.080, t).unwrap();
        assert!(close(e.get_at(t + HALF).unwrap(), 0.040));
        assert!(close(e.get_at(t + HALF * 2).unwrap(), 0.020));
        // Reading earlier again gives the same answer: nothing changed.
        assert!(close(e.get_at(t + HALF).unwrap(), 0.040));
    }

    #[test]
    fn recent_is_undecayed_and_forgets_stale_values() {
        let t = Instant::now();
        let mut e = Ewma::new(HALF);
        e.add(0.080, t).unwrap();
        assert_eq!(e.recent(t + HALF, HALF * 10), Some(0.080));
        assert_eq!(e.recent(t + HALF * 11, HALF * 10), None);
    }

    #[test]
    fn bad_samples_are_rejected() {
        let t = Instant::now();
        let mut e = Ewma::new(HALF);
        assert_eq!(e.add(f64::NAN, t), Err(SampleError::NaN));
        assert!(matches!(e.add(-1.0, t), Err(SampleError::OutOfRange(_))));
        assert!(matches!(
            e.add(f64::INFINITY, t),
            Err(SampleError::OutOfRange(_))
        ));
        assert!(!e.has_data());
    }

    #[test]
    fn penalties_make_a_fast_failure_look_slow() {
        let t = Instant::now();
        let mut e = Ewma::new(HALF);
        e.add(0.010, t).unwrap();
        e.add_penalty(0.001, 30.0, t);
        assert!(close(e.get_at(t).unwrap(), 0.020));
        e.add_penalty(0.001, 30.0, t);
        assert!(close(e.get_at(t).unwrap(), 0.040));
        for _ in 0..40 {
            e.add_penalty(0.001, 1.0, t);
        }
        assert!(close(e.get_at(t).unwrap(), 1.0));
    }
}
