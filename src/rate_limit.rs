//! Per-client rate limits (`lb.rate_limit`) on pingora-limits' `Rate`, the
//! estimator Pingora's own rate-limiter example uses: counts per client address
//! in a fixed-size count-min sketch, so memory stays flat however many
//! addresses come.
//!
//! A client may make `burst` requests in any window of `burst /
//! requests_per_sec` seconds (the sliding count interpolates the previous
//! window, as Cloudflare's counter does): `requests_per_sec` sustained, `burst`
//! at once after a quiet spell. Only admitted requests are counted, so a client
//! that waits as `Retry-After` says is served then.

use std::hash::Hash;
use std::time::Duration;

use pingora_limits::rate::{Rate, RateComponents};

use crate::config::RateLimitConfig;

/// Columns of the sketch: with 4 rows, 4 × 32,768 counters per window, two
/// windows, 2 MiB in all. At 100,000 active addresses a light client's count
/// is overestimated by about one request.
const SLOTS: usize = 32_768;
const HASHES: usize = 4;

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refuse; the client may try again after this many whole seconds.
    Refuse {
        retry_after: u64,
    },
}

/// The pure rule: with `components` of the client's counts and the window
/// holding at most `burst` requests, whether one more fits.
pub fn judge(c: RateComponents, burst: f64) -> Verdict {
    let recent =
        c.prev_samples as f64 * (1.0 - c.current_interval_fraction) + c.curr_samples as f64;
    if recent < burst {
        return Verdict::Allow;
    }
    // The previous window's share fades by the end of this one: at the latest
    // then, there is room again.
    let left = c.interval.as_secs_f64() * (1.0 - c.current_interval_fraction);
    Verdict::Refuse {
        retry_after: left.ceil().max(1.0) as u64,
    }
}

pub struct RateLimiter {
    rate: Rate,
    burst: f64,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    pub fn new(conf: &RateLimitConfig) -> Self {
        let window = Duration::from_secs_f64((conf.burst / conf.requests_per_sec).max(0.001));
        RateLimiter {
            rate: Rate::new_with_estimator_config(window, HASHES, SLOTS),
            burst: conf.burst,
        }
    }

    /// Judges one request from `client`, counting it if allowed.
    pub fn check<K: Hash>(&self, client: &K) -> Verdict {
        let verdict = self.rate.rate_with(client, |c| judge(c, self.burst));
        if verdict == Verdict::Allow {
            self.rate.observe(client, 1);
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn components(prev: isize, curr: isize, fraction: f64) -> RateComponents {
        // RateComponents is non-exhaustive: made through a Rate's callback.
        let rate = Rate::new(Duration::from_secs(2));
        rate.rate_with(&0u8, |mut c| {
            c.prev_samples = prev;
            c.curr_samples = curr;
            c.current_interval_fraction = fraction;
            c
        })
    }

    #[test]
    fn the_window_holds_the_burst() {
        assert_eq!(judge(components(0, 199, 0.5), 200.0), Verdict::Allow);
        assert_eq!(
            judge(components(0, 200, 0.5), 200.0),
            Verdict::Refuse { retry_after: 1 }
        );
        // Half the previous window still counts half way through this one.
        assert_eq!(judge(components(200, 99, 0.5), 200.0), Verdict::Allow);
        assert_eq!(
            judge(components(200, 100, 0.25), 200.0),
            Verdict::Refuse { retry_after: 2 }
        );
    }

    #[test]
    fn clients_are_counted_apart() {
        let limiter = RateLimiter::new(&RateLimitConfig {
            requests_per_sec: 5.0,
            burst: 10.0,
        });
        let a: std::net::IpAddr = [10, 0, 0, 1].into();
        let b: std::net::IpAddr = [10, 0, 0, 2].into();
        let allowed = (0..30)
            .filter(|_| limiter.check(&a) == Verdict::Allow)
            .count();
        assert_eq!(allowed, 10);
        assert!(matches!(limiter.check(&a), Verdict::Refuse { .. }));
        assert_eq!(limiter.check(&b), Verdict::Allow);
    }
}
