//! Probe latency: the active health checks' own response times. They keep the
//! estimate of an upstream that gets no client requests (sidelined, or idle)
//! current, so learning that it recovered costs no client anything.
//!
//! Probes open a new connection and ask for the health path, so they differ
//! from client requests by a roughly fixed ratio: [`scale`] measures it on the
//! upstreams that have both, and a probe stands in for a client request at
//! that ratio.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Probes remembered per upstream.
const WINDOW: usize = 3;

/// The last few probe times of one upstream.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Window {
    last: [f64; WINDOW],
    len: usize,
    next: usize,
}

impl Window {
    pub fn push(&mut self, seconds: f64) {
        self.last[self.next] = seconds;
        self.next = (self.next + 1) % WINDOW;
        self.len = (self.len + 1).min(WINDOW);
    }

    /// The median of the last three (one stray probe moves nothing), or with
    /// fewer, the slowest of them; None before the first.
    pub fn typical(&self) -> Option<f64> {
        let mut v = self.last[..self.len].to_vec();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => None,
            WINDOW => Some(v[WINDOW / 2]),
            n => Some(v[n - 1]),
        }
    }
}

/// Client-request time over probe time, the median over `pairs` of
/// (client estimate, probe time), never under 1; None when there is no pair
/// to judge by. A client request does all a probe does and more, so a ratio
/// under 1 means the probes were slowed on this side (the background thread
/// waiting for a busy CPU adds the same milliseconds to every probe): scaled
/// down by it, a slow upstream's probes would read as fast.
pub fn scale(pairs: impl IntoIterator<Item = (f64, f64)>) -> Option<f64> {
    let mut ratios: Vec<f64> = pairs
        .into_iter()
        .filter(|(live, probe)| *live > 0.0 && *probe > 0.0)
        .map(|(live, probe)| live / probe)
        .filter(|r| r.is_finite())
        .collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    Some(ratios[ratios.len() / 2].max(1.0))
}

/// One upstream's probes, and when it last answered a client request.
#[derive(Debug)]
pub struct Probes {
    epoch: Instant,
    window: Mutex<Window>,
    /// Milliseconds since `epoch` of the last client sample, plus one (0: none).
    live_ms: AtomicU64,
    /// The same for the last mirrored copy's sample.
    mirrored_ms: AtomicU64,
}

impl Probes {
    pub fn new(epoch: Instant) -> Self {
        Probes {
            epoch,
            window: Mutex::default(),
            live_ms: AtomicU64::new(0),
            mirrored_ms: AtomicU64::new(0),
        }
    }

    fn millis(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }

    /// Notes a client request's sample at `now` (on the request path: one store).
    pub fn live_at(&self, now: Instant) {
        self.live_ms.store(self.millis(now), Ordering::Relaxed);
    }

    /// Whether client samples are fresh: one within `max_age` of `now`.
    pub fn live_within(&self, now: Instant, max_age: Duration) -> bool {
        let last = self.live_ms.load(Ordering::Relaxed);
        last != 0 && self.millis(now).saturating_sub(last) <= max_age.as_millis() as u64
    }

    /// Notes a mirrored copy's sample at `now`.
    pub fn mirrored_at(&self, now: Instant) {
        self.mirrored_ms.store(self.millis(now), Ordering::Relaxed);
    }

    /// Whether a mirrored copy measured it within `max_age` of `now`.
    pub fn mirrored_within(&self, now: Instant, max_age: Duration) -> bool {
        let last = self.mirrored_ms.load(Ordering::Relaxed);
        last != 0 && self.millis(now).saturating_sub(last) <= max_age.as_millis() as u64
    }

    /// Adds a probe's time; returns the typical probe time now.
    pub fn push(&self, seconds: f64) -> Option<f64> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.push(seconds);
        w.typical()
    }

    /// Forgets the probes so far: once an upstream is sidelined, only probes
    /// taken since count (an earlier fast one must not bring it straight back).
    pub fn clear(&self) {
        *self.window.lock().unwrap_or_else(|p| p.into_inner()) = Window::default();
    }

    /// The typical probe time, if any probe answered.
    pub fn typical(&self) -> Option<f64> {
        self.window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .typical()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_ignores_one_stray_probe() {
        let mut w = Window::default();
        assert_eq!(w.typical(), None);
        w.push(0.050);
        assert_eq!(w.typical(), Some(0.050));
        w.push(0.005);
        assert_eq!(w.typical(), Some(0.050), "with two, the slower");
        w.push(0.006);
        assert_eq!(w.typical(), Some(0.006), "two fast of three: fast");
        w.push(0.200);
        assert_eq!(w.typical(), Some(0.006), "one stray slow probe");
        w.push(0.210);
        assert_eq!(w.typical(), Some(0.200), "two slow of three: slow");
    }

    #[test]
    fn the_scale_is_the_median_ratio() {
        assert_eq!(scale([]), None);
        assert_eq!(scale([(0.010, 0.0)]), None, "no probe time: no ratio");
        let s = scale([(0.010, 0.005), (0.012, 0.004), (0.100, 0.001)]).unwrap();
        assert!((s - 3.0).abs() < 1e-9, "{s}");
        // Probes slower than client requests (a busy machine delaying the
        // probes): 1, never a shrinking factor.
        assert_eq!(scale([(0.0087, 0.072), (0.0087, 0.060)]), Some(1.0));
    }

    #[test]
    fn client_samples_age() {
        let t = Instant::now();
        let p = Probes::new(t);
        let second = Duration::from_secs(1);
        assert!(!p.live_within(t, second), "none yet");
        p.live_at(t + second);
        assert!(p.live_within(t + second * 2, second));
        assert!(!p.live_within(t + second * 3, second));
        assert_eq!(p.push(0.004), Some(0.004));
        assert_eq!(p.typical(), Some(0.004));
    }
}
