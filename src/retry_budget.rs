//! The retry budget (Linkerd's): over the last 10 s, retries may number at
//! most `ratio` × requests plus `min_per_sec` × 10, so that when every
//! upstream fails, retries cannot multiply the load on them. Ten one-second
//! buckets of atomic counters: the request path never locks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::config::RetryBudgetConfig;

const WINDOW_SECS: u64 = 10;

#[derive(Debug, Default)]
struct Bucket {
    /// The second it counts (since the budget's epoch), plus one; 0 unused.
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    /// Retries allowed in any window whatever the traffic.
    reserve: f64,
    buckets: [Bucket; WINDOW_SECS as usize],
    epoch: Instant,
}

impl RetryBudget {
    pub fn new(conf: &RetryBudgetConfig, epoch: Instant) -> Self {
        RetryBudget {
            ratio: conf.ratio,
            reserve: conf.min_per_sec * WINDOW_SECS as f64,
            buckets: Default::default(),
            epoch,
        }
    }

    /// The bucket of `now`'s second, emptied first if it held an older one.
    fn bucket(&self, now: Instant) -> &Bucket {
        let second = now.saturating_duration_since(self.epoch).as_secs() + 1;
        let b = &self.buckets[(second % WINDOW_SECS) as usize];
        let seen = b.second.load(Ordering::Relaxed);
        if seen != second
            && b.second
                .compare_exchange(seen, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            b.requests.store(0, Ordering::Relaxed);
            b.retries.store(0, Ordering::Relaxed);
        }
        b
    }

    /// Counts one request.
    pub fn request(&self, now: Instant) {
        self.bucket(now).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether one more retry fits the budget at `now`; if so it is counted.
    pub fn try_retry(&self, now: Instant) -> bool {
        let second = now.saturating_duration_since(self.epoch).as_secs() + 1;
        let (mut requests, mut retries) = (0u64, 0u64);
        for b in &self.buckets {
            let s = b.second.load(Ordering::Relaxed);
            if s != 0 && s + WINDOW_SECS > second && s <= second {
                requests += b.requests.load(Ordering::Relaxed);
                retries += b.retries.load(Ordering::Relaxed);
            }
        }
        if (retries + 1) as f64 > self.ratio * requests as f64 + self.reserve {
            return false;
        }
        self.bucket(now).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn budget(ratio: f64, min_per_sec: f64) -> (RetryBudget, Instant) {
        let t = Instant::now();
        (
            RetryBudget::new(&RetryBudgetConfig { ratio, min_per_sec }, t),
            t,
        )
    }

    #[test]
    fn retries_are_a_share_of_requests_plus_a_reserve() {
        let (b, t) = budget(0.2, 1.0);
        for _ in 0..100 {
            b.request(t);
        }
        // 20% of 100 plus 10 in reserve.
        let allowed = (0..100).filter(|_| b.try_retry(t)).count();
        assert_eq!(allowed, 30);
    }

    #[test]
    fn the_window_forgets_after_ten_seconds() {
        let (b, t) = budget(0.0, 0.5);
        assert_eq!((0..10).filter(|_| b.try_retry(t)).count(), 5);
        let later = t + Duration::from_secs(10);
        assert!(b.try_retry(later), "the old retries have left the window");
        let (b, t) = budget(0.5, 0.0);
        for _ in 0..10 {
            b.request(t);
        }
        assert_eq!(
            (0..10)
                .filter(|_| b.try_retry(t + Duration::from_secs(9)))
                .count(),
            5
        );
        assert!(!b.try_retry(t + Duration::from_secs(9)));
        assert!(
            !b.try_retry(t + Duration::from_secs(10)),
            "no requests left in the window"
        );
    }
}
