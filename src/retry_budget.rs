//! The retry budget (Linkerd's): over the last 10 s, retries may number at
//! most `ratio` × requests plus `min_per_sec` × 10, so that when every
//! upstream fails, retries cannot multiply the load on them.
//!
//! Ten one-second buckets. Each count is one atomic word holding its second
//! and its value together, so a bucket rolling over to a new second can never
//! lose a count another thread adds at that moment; counting a request takes
//! no lock. Retries (rare: only on failures) are checked and added under one
//! mutex, so two cannot both take the last place in the budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::config::RetryBudgetConfig;

const WINDOW_SECS: u64 = 10;

/// Bits of a count word that hold the value; the second is above them.
const VALUE_BITS: u32 = 32;
const VALUE_MASK: u64 = (1 << VALUE_BITS) - 1;

/// One count for one second: `second << VALUE_BITS | value`, where `second`
/// counts from the budget's epoch, plus one (0: never used).
#[derive(Debug, Default)]
struct Count(AtomicU64);

impl Count {
    /// Adds one for `second`, starting afresh if the word held an older one.
    fn add(&self, second: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some(if w >> VALUE_BITS == second {
                    w + u64::from(w & VALUE_MASK < VALUE_MASK)
                } else {
                    (second << VALUE_BITS) | 1
                })
            });
    }

    /// Its value, if it counts a second within the window ending at `second`.
    fn within(&self, second: u64) -> u64 {
        let w = self.0.load(Ordering::Relaxed);
        let s = w >> VALUE_BITS;
        if s != 0 && s + WINDOW_SECS > second && s <= second {
            w & VALUE_MASK
        } else {
            0
        }
    }
}

#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    /// Retries allowed in any window whatever the traffic.
    reserve: f64,
    requests: [Count; WINDOW_SECS as usize],
    retries: [Count; WINDOW_SECS as usize],
    /// Makes a retry's check and its count one step.
    retry_lock: Mutex<()>,
    epoch: Instant,
}

impl RetryBudget {
    pub fn new(conf: &RetryBudgetConfig, epoch: Instant) -> Self {
        RetryBudget {
            ratio: conf.ratio,
            reserve: conf.min_per_sec * WINDOW_SECS as f64,
            requests: Default::default(),
            retries: Default::default(),
            retry_lock: Mutex::new(()),
            epoch,
        }
    }

    /// `now`'s second since the epoch, plus one.
    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs() + 1
    }

    /// Counts one request.
    pub fn request(&self, now: Instant) {
        let second = self.second(now);
        self.requests[(second % WINDOW_SECS) as usize].add(second);
    }

    /// Whether one more retry fits the budget at `now`; if so it is counted.
    pub fn try_retry(&self, now: Instant) -> bool {
        let second = self.second(now);
        let _one_at_a_time = self.retry_lock.lock().unwrap_or_else(|p| p.into_inner());
        let requests: u64 = self.requests.iter().map(|c| c.within(second)).sum();
        let retries: u64 = self.retries.iter().map(|c| c.within(second)).sum();
        if (retries + 1) as f64 > self.ratio * requests as f64 + self.reserve {
            return false;
        }
        self.retries[(second % WINDOW_SECS) as usize].add(second);
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

    #[test]
    fn counts_from_many_threads_across_a_rollover_are_all_kept() {
        let (b, t) = budget(1.0, 0.0);
        let b = std::sync::Arc::new(b);
        // Seconds 1 to 4 all land in fresh buckets while four threads count.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for k in 0..4000u64 {
                        b.request(t + Duration::from_millis(k));
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let last = t + Duration::from_millis(3999);
        let allowed = (0..20_000).filter(|_| b.try_retry(last)).count();
        assert_eq!(allowed, 16_000, "ratio 1: one retry per request counted");
    }

    #[test]
    fn two_threads_never_both_take_the_last_place() {
        for _ in 0..50 {
            let (b, t) = budget(0.0, 0.1);
            let b = std::sync::Arc::new(b);
            let both: usize = (0..2)
                .map(|_| {
                    let b = b.clone();
                    std::thread::spawn(move || b.try_retry(t))
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| usize::from(h.join().unwrap()))
                .sum();
            assert_eq!(both, 1, "a reserve of one retry");
        }
    }
}
