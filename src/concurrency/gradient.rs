//! The concurrency limit one upstream is allowed, learned from its latency
//! (Netflix concurrency-limits' gradient2, Envoy's adaptive concurrency):
//! each window's mean response time against the floor the upstream answers
//! at unloaded; the limit grows while latency stays within a tolerance of
//! that floor and shrinks in proportion as it rises past it.
//!
//! The floor is measured as Envoy does: now and then the limit is pinned low
//! (a quarter of it, at least three requests) for two windows (the first lets
//! requests begun under the full limit end) and the second window's mean is
//! the new floor. A floor learned only from
//! windows under load would creep up with the queue it lets build; one never
//! measured again would hold a server that became slower for good to a limit
//! of one.

use std::time::{Duration, Instant};

/// The limit an upstream starts with, before anything is learned.
pub const INITIAL: f64 = 20.0;
/// Never fewer requests at once than this.
pub const MIN: f64 = 1.0;
/// Never more.
pub const MAX: f64 = 1000.0;
/// Latency up to this times the floor counts as unloaded: some queueing is
/// what keeps a server's workers busy.
const TOLERANCE: f64 = 1.2;
/// The most one window can shrink the target (to half).
const MIN_GRADIENT: f64 = 0.5;
/// How much of each window's target the limit takes (gradient2's smoothing).
const SMOOTHING: f64 = 0.2;
/// Fewer samples than this in a window say nothing.
const MIN_SAMPLES: u32 = 5;
/// A floor measurement lets through this share of the limit…
const PIN_SHARE: f64 = 0.25;
/// …but at least this many requests at once (Envoy's `min_concurrency`).
const PIN_AT_LEAST: f64 = 3.0;
/// The first floor measurement comes this soon after traffic starts; each
/// next one twice as late, up to [`FLOOR_EVERY`].
const FIRST_FLOOR: Duration = Duration::from_secs(1);
/// How often the floor is measured again once settled: a server that became
/// slower for good is re-learned within this.
const FLOOR_EVERY: Duration = Duration::from_secs(10);

/// One window's measure of an upstream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Answers (not failures) in the window.
    pub samples: u32,
    /// Their mean time to the answer's header, seconds.
    pub mean: f64,
    /// The most requests it had at once in the window.
    pub peak: u32,
}

/// Where the floor measurement stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Floor {
    /// Next measured at this instant (or later, when there is traffic).
    Due(Instant),
    /// The limit is pinned low; the first window drains, the second measures;
    /// `limit` is restored after.
    Draining {
        limit: f64,
    },
    Measuring {
        limit: f64,
    },
}

/// One upstream's limit and the floor it is measured against.
#[derive(Debug, Clone)]
pub struct Gradient {
    limit: f64,
    /// The response time at unloaded, seconds (infinite until measured).
    floor: f64,
    measure: Floor,
    /// Wait before the next measurement.
    every: Duration,
}

impl Gradient {
    pub fn new(now: Instant) -> Self {
        Gradient {
            limit: INITIAL,
            floor: f64::INFINITY,
            measure: Floor::Due(now + FIRST_FLOOR),
            every: FIRST_FLOOR,
        }
    }

    /// The limit in force: whole requests, at least one.
    pub fn limit(&self) -> u32 {
        self.limit.round().max(MIN) as u32
    }

    /// The response time it answers at unloaded, once measured.
    pub fn floor(&self) -> Option<f64> {
        self.floor.is_finite().then_some(self.floor)
    }

    /// Takes one window's measure at `now` and returns the new limit.
    pub fn update(&mut self, w: Window, now: Instant) -> u32 {
        let told = w.samples >= MIN_SAMPLES && w.mean > 0.0;
        match self.measure {
            Floor::Draining { limit } => {
                self.measure = Floor::Measuring { limit };
                return self.limit();
            }
            Floor::Measuring { limit } => {
                if told {
                    self.floor = w.mean;
                }
                self.limit = limit;
                self.every = (self.every * 2).min(FLOOR_EVERY);
                self.measure = Floor::Due(now + self.every);
                return self.limit();
            }
            Floor::Due(at) if told && now >= at => {
                self.measure = Floor::Draining { limit: self.limit };
                self.limit = (self.limit * PIN_SHARE).max(PIN_AT_LEAST).min(self.limit);
                return self.limit();
            }
            Floor::Due(_) => {}
        }
        if !told {
            return self.limit();
        }
        // Any window faster than the floor lowers it at once.
        self.floor = self.floor.min(w.mean);
        let gradient = (TOLERANCE * self.floor / w.mean).clamp(MIN_GRADIENT, 1.0);
        let target = if gradient < 1.0 {
            self.limit * gradient
        } else if f64::from(w.peak) < self.limit / 2.0 {
            // Not using half of what it may: its load, not the upstream,
            // is what limits it, so the window says nothing about more.
            self.limit
        } else {
            // Room to find out whether more would be served as fast.
            self.limit + self.limit.sqrt()
        };
        self.limit = (self.limit * (1.0 - SMOOTHING) + target * SMOOTHING).clamp(MIN, MAX);
        self.limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(100);

    /// How long the floor tests wait for two measurements, settled.
    fn two_floors() -> usize {
        (2 * FLOOR_EVERY.as_millis() / TICK.as_millis() + 20) as usize
    }

    /// A server with `capacity` workers answering in `base` seconds, that
    /// shares its time among all requests beyond them, with offered load
    /// always more than the limit lets through: each window's mean.
    fn saturated(g: &Gradient, capacity: u32, base: f64) -> Window {
        let n = g.limit();
        let mean = base * (f64::from(n) / f64::from(capacity)).max(1.0);
        Window {
            samples: 100,
            mean,
            peak: n,
        }
    }

    /// Runs `windows` windows against a saturated server of `capacity`:
    /// the limits taken.
    fn run(g: &mut Gradient, now: &mut Instant, capacity: u32, windows: usize) -> Vec<u32> {
        (0..windows)
            .map(|_| {
                *now += TICK;
                let w = saturated(g, capacity, 0.020);
                g.update(w, *now)
            })
            .collect()
    }

    /// Whether `limits` stay near `capacity`: never far past the latency
    /// tolerance, and below three quarters of it only while the floor is
    /// measured (two windows in a hundred, more while it is first learned).
    fn near(limits: &[u32], capacity: u32) -> bool {
        let cap = f64::from(capacity);
        let low = limits
            .iter()
            .filter(|&&l| f64::from(l) < cap * 0.75)
            .count();
        let high = limits.iter().any(|&l| f64::from(l) > cap * 1.5 + 2.0);
        !high && low * 100 <= limits.len() * 3
    }

    #[test]
    fn under_saturation_the_limit_settles_near_the_capacity() {
        let mut now = Instant::now();
        for (capacity, start) in [(8, INITIAL), (60, INITIAL), (3, INITIAL)] {
            let mut g = Gradient::new(now);
            g.limit = start;
            let seen = run(&mut g, &mut now, capacity, 600);
            let tail = &seen[300..];
            assert!(near(tail, capacity), "{capacity}: {tail:?}");
            assert_eq!(g.floor(), Some(0.020));
        }
    }

    #[test]
    fn it_follows_a_capacity_that_falls_and_recovers() {
        let mut now = Instant::now();
        let mut g = Gradient::new(now);
        run(&mut g, &mut now, 100, 600);
        let fell = run(&mut g, &mut now, 5, 300);
        assert!(near(&fell[200..], 5), "{fell:?}");
        let recovered = run(&mut g, &mut now, 40, 300);
        assert!(near(&recovered[200..], 40), "{recovered:?}");
    }

    #[test]
    fn an_idle_or_lightly_used_upstream_keeps_its_limit() {
        let mut now = Instant::now();
        let mut g = Gradient::new(now);
        for _ in 0..50 {
            now += TICK;
            // Too few samples, then few requests at once.
            g.update(
                Window {
                    samples: 2,
                    mean: 0.5,
                    peak: 1,
                },
                now,
            );
            g.update(
                Window {
                    samples: 50,
                    mean: 0.010,
                    peak: 3,
                },
                now,
            );
        }
        assert_eq!(g.limit(), INITIAL as u32);
    }

    #[test]
    fn a_server_slower_for_good_is_relearned_at_its_next_floor_measurement() {
        let mut now = Instant::now();
        let mut g = Gradient::new(now);
        let w = |mean| Window {
            samples: 50,
            mean,
            peak: 1000,
        };
        for _ in 0..50 {
            now += TICK;
            g.update(w(0.010), now);
        }
        let before = g.limit();
        // Three times slower at any load: at first it looks like overload.
        for _ in 0..two_floors() {
            now += TICK;
            g.update(w(0.030), now);
        }
        assert_eq!(g.floor(), Some(0.030));
        assert!(g.limit() > before / 2, "{before} → {}", g.limit());
    }
}
