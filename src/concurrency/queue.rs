//! A pool's short queue: a request that finds every eligible upstream at its
//! concurrency limit waits here for a place, at most `queue_timeout`, then
//! gets a fast 503. One that could not be served within that time at the
//! pace places free up is refused at once, so refusals stay fast under
//! sustained overload. Waiters are woken first come, first served.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus::{Histogram, IntCounter};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// The share of the timeout a request let in is expected to wait at most.
const EXPECTED_WITHIN: f64 = 0.5;

#[derive(Debug)]
pub struct Queue {
    timeout: Duration,
    waiting: AtomicUsize,
    /// Woken, one waiter at a time, as requests end; all at once when a
    /// limit rises.
    freed: Notify,
    /// Served after waiting.
    waited_total: AtomicU64,
    /// `hlb_queue_wait_seconds{pool}`: how long each waiter waited.
    wait: Histogram,
    /// `hlb_overload_refused_total{pool}`: refused for overload, at once or
    /// after waiting (the dashboard's count too).
    refused: IntCounter,
}

/// One request's place in the queue, given up when dropped.
#[derive(Debug)]
pub struct Place<'q>(&'q Queue);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the queue decided about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Wait,
    /// It could not be served in time: refuse it now.
    Refuse,
}

impl Queue {
    pub fn new(timeout: Duration, wait: Histogram, refused: IntCounter) -> Self {
        Queue {
            timeout,
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
            waited_total: AtomicU64::new(0),
            wait,
            refused,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Whether a request finding every upstream full should wait, with
    /// places freeing up at `per_sec` (each upstream's limit over its
    /// response time): only if the ones ahead of it and itself would be
    /// served within half the timeout. Places free up in bursts, not at an
    /// even pace: the other half is the margin that keeps a request let in
    /// from being refused late.
    pub fn admit(&self, per_sec: f64) -> Admission {
        let ahead = (self.waiting() + 1) as f64;
        let within = self.timeout.as_secs_f64() * EXPECTED_WITHIN;
        if self.timeout.is_zero() || per_sec <= 0.0 || ahead / per_sec > within {
            Admission::Refuse
        } else {
            Admission::Wait
        }
    }

    /// Takes a place in the queue.
    pub fn enter(&self) -> Place<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Place(self)
    }

    /// A future woken when a place may have freed up; enable it before
    /// looking, so that a place freed meanwhile is not missed.
    pub fn notified(&self) -> Notified<'_> {
        self.freed.notified()
    }

    /// A request on one of the pool's upstreams ended.
    pub fn freed(&self) {
        if self.waiting() > 0 {
            self.freed.notify_one();
        }
    }

    /// A limit rose: every waiter looks again.
    pub fn grew(&self) {
        self.freed.notify_waiters();
    }

    /// A waiter got a place after `waited`.
    pub fn served(&self, waited: Duration) {
        self.waited_total.fetch_add(1, Ordering::Relaxed);
        self.wait.observe(waited.as_secs_f64());
    }

    /// A request was refused, after waiting `waited` (None: at once).
    pub fn refused(&self, waited: Option<Duration>) {
        self.refused.inc();
        if let Some(w) = waited {
            self.wait.observe(w.as_secs_f64());
        }
    }

    /// Refused, and served after waiting, since start.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.refused.get(),
            self.waited_total.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(timeout_ms: u64) -> Queue {
        let wait = Histogram::with_opts(prometheus::HistogramOpts::new("w", "w")).unwrap();
        Queue::new(
            Duration::from_millis(timeout_ms),
            wait,
            IntCounter::new("r", "r").unwrap(),
        )
    }

    #[test]
    fn a_request_waits_only_if_the_ones_ahead_free_up_in_time() {
        let q = queue(10);
        // 1,000 places a second: five can be served within half of 10 ms.
        let places: Vec<_> = (0..4).map(|_| q.enter()).collect();
        assert_eq!(q.admit(1000.0), Admission::Wait);
        let fifth = q.enter();
        assert_eq!(q.admit(1000.0), Admission::Refuse);
        drop(fifth);
        drop(places);
        assert_eq!(q.waiting(), 0);
        assert_eq!(q.admit(0.0), Admission::Refuse, "nothing frees up");
        assert_eq!(queue(0).admit(1e9), Admission::Refuse, "no queue");
    }

    #[tokio::test]
    async fn an_ended_request_wakes_one_waiter() {
        let q = queue(10);
        let _place = q.enter();
        let woken = q.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        q.freed();
        tokio::time::timeout(Duration::from_secs(5), woken)
            .await
            .expect("woken");
    }
}
