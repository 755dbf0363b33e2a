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
//!
//! [`Ewma`] is the pure estimator; [`SharedEwma`] is the same estimator shared by
//! every request to one upstream, updated by compare-and-swap without a lock.

use std::sync::atomic::{AtomicU64, Ordering};
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

    /// The estimate and the time of its last sample, if any.
    pub fn state(&self) -> Option<(f64, Instant)> {
        self.value
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

    /// Replaces the estimate with `seconds` as of `now`: the estimate of an
    /// upstream that gets no client requests follows its probes instead.
    pub fn set(&mut self, seconds: f64, now: Instant) -> Result<(), SampleError> {
        let mut fresh = Ewma {
            tau: self.tau,
            value: None,
        };
        fresh.add(seconds, now)?;
        *self = fresh;
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

/// Packed value meaning "no sample yet".
const EMPTY: u64 = u64::MAX;

/// A peak EWMA shared by every request to one upstream. The estimate (as f32
/// seconds) and the time of its last sample (u32 milliseconds since `epoch`,
/// wrapping) are packed into one `AtomicU64`; each sample computes the next
/// state with [`Ewma`] and installs it by compare-and-swap, so neither readers
/// nor writers lock. The stamp wraps after 49 days: [`SharedEwma::forget_older_than`],
/// called by the weights tick, drops estimates long before that.
#[derive(Debug)]
pub struct SharedEwma {
    half_life: Duration,
    epoch: Instant,
    packed: AtomicU64,
}

impl SharedEwma {
    pub fn new(half_life: Duration, epoch: Instant) -> Self {
        SharedEwma {
            half_life,
            epoch,
            packed: AtomicU64::new(EMPTY),
        }
    }

    fn millis(&self, t: Instant) -> u32 {
        t.saturating_duration_since(self.epoch).as_millis() as u32
    }

    fn decode(&self, bits: u64, now: Instant) -> Ewma {
        let mut e = Ewma::new(self.half_life);
        if bits != EMPTY {
            let value = f32::from_bits((bits >> 32) as u32) as f64;
            let stamp_ms = bits as u32;
            let now_ms = self.millis(now);
            let behind = now_ms.wrapping_sub(stamp_ms);
            // A sample stamped after `now` (another thread's later clock read)
            // shows up as a huge wrapped age: read it as just now.
            let stamp = if behind <= u32::MAX / 2 {
                now.checked_sub(Duration::from_millis(behind as u64))
                    .unwrap_or(now)
            } else {
                now
            };
            e.value = Some((value, stamp));
        }
        e
    }

    fn encode(&self, e: &Ewma) -> u64 {
        match e.value {
            None => EMPTY,
            Some((v, stamp)) => ((v as f32).to_bits() as u64) << 32 | self.millis(stamp) as u64,
        }
    }

    /// Applies `step` to the estimate as of `now` until it is installed.
    fn update<T>(&self, now: Instant, step: impl Fn(&mut Ewma) -> T) -> T {
        let mut current = self.packed.load(Ordering::Relaxed);
        loop {
            let mut e = self.decode(current, now);
            let out = step(&mut e);
            let next = self.encode(&e);
            if next == current {
                return out;
            }
            match self.packed.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return out,
                Err(seen) => current = seen,
            }
        }
    }

    /// Adds a response time in seconds observed at `now`.
    pub fn add(&self, sample: f64, now: Instant) -> Result<(), SampleError> {
        self.update(now, |e| e.add(sample, now))
    }

    /// Replaces the estimate (see [`Ewma::set`]).
    pub fn set(&self, seconds: f64, now: Instant) -> Result<(), SampleError> {
        self.update(now, |e| e.set(seconds, now))
    }

    /// Adds a failure as a slow sample (see [`Ewma::add_penalty`]).
    pub fn add_penalty(&self, observed: f64, cap: f64, now: Instant) {
        self.update(now, |e| e.add_penalty(observed, cap, now))
    }

    /// The estimate decayed to `now` (see [`Ewma::get_at`]).
    pub fn get_at(&self, now: Instant) -> Option<f64> {
        self.decode(self.packed.load(Ordering::Relaxed), now)
            .get_at(now)
    }

    /// The estimate if its last sample is at most `max_age` old (see [`Ewma::recent`]).
    pub fn recent(&self, now: Instant, max_age: Duration) -> Option<f64> {
        self.decode(self.packed.load(Ordering::Relaxed), now)
            .recent(now, max_age)
    }

    /// Drops the estimate if its last sample is older than `max_age`.
    pub fn forget_older_than(&self, now: Instant, max_age: Duration) {
        self.update(now, |e| {
            if e.recent(now, max_age).is_none() {
                e.value = None;
            }
        })
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
    fn set_replaces_a_higher_or_lower_estimate() {
        let t = Instant::now();
        let mut e = Ewma::new(HALF);
        e.add(0.080, t).unwrap();
        e.set(0.005, t + ms(1)).unwrap();
        assert!(close(e.get_at(t + ms(1)).unwrap(), 0.005));
        assert!(e.set(f64::NAN, t).is_err());
        assert!(e.has_data(), "a bad value changes nothing");
        let shared = SharedEwma::new(HALF, t);
        shared.add(0.080, t).unwrap();
        shared.set(0.004, t + ms(2)).unwrap();
        assert!((shared.get_at(t + ms(2)).unwrap() - 0.004).abs() < 1e-6);
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

    #[test]
    fn the_shared_estimate_follows_the_pure_one() {
        let t = Instant::now();
        let shared = SharedEwma::new(HALF, t);
        let mut pure = Ewma::new(HALF);
        let samples = [(0, 0.010), (100, 0.200), (2_000, 0.050), (9_000, 0.020)];
        for (at, v) in samples {
            shared.add(v, t + ms(at)).unwrap();
            pure.add(v, t + ms(at)).unwrap();
            let (a, b) = (
                shared.get_at(t + ms(at)).unwrap(),
                pure.get_at(t + ms(at)).unwrap(),
            );
            assert!((a - b).abs() < b * 1e-6, "{a} vs {b}");
        }
        shared.add_penalty(0.001, 30.0, t + ms(9_000));
        assert!(shared.get_at(t + ms(9_000)).unwrap() > 0.039);
        assert_eq!(shared.add(f64::NAN, t), Err(SampleError::NaN));
    }

    #[test]
    fn old_shared_estimates_are_forgotten() {
        let t = Instant::now();
        let shared = SharedEwma::new(HALF, t);
        assert_eq!(shared.get_at(t), None);
        shared.add(0.080, t).unwrap();
        shared.forget_older_than(t + HALF, HALF * 10);
        assert!(shared.recent(t + HALF, HALF * 10).is_some());
        shared.forget_older_than(t + HALF * 11, HALF * 10);
        assert_eq!(shared.get_at(t + HALF * 11), None);
    }

    #[test]
    fn a_sample_stamped_after_the_read_counts_as_fresh() {
        let t = Instant::now();
        let shared = SharedEwma::new(HALF, t);
        shared.add(0.080, t + ms(50)).unwrap();
        let v = shared.get_at(t + ms(10)).unwrap();
        assert!((v - 0.080).abs() < 1e-6, "{v}");
    }

    #[test]
    fn concurrent_samples_are_all_applied() {
        let t = Instant::now();
        let shared = std::sync::Arc::new(SharedEwma::new(HALF, t));
        let threads: Vec<_> = (0..2)
            .map(|k| {
                let s = shared.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        s.add(0.001 * ((i + k) % 7 + 1) as f64, t + ms(i / 10))
                            .unwrap();
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        // Peaks win at once, so the estimate holds at least the largest sample's
        // decayed value and never more than the largest sample.
        let v = shared.get_at(t + ms(999)).unwrap();
        assert!(v > 0.0 && v <= 0.007 + 1e-9, "{v}");
    }
}
