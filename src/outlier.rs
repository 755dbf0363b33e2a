//! The ejection tick: every `lb.outlier.interval`, each upstream's attempts
//! and failures since the last tick are judged by `balancer::outlier`, and
//! the verdicts applied (an event each way). Panic mode still overrules
//! ejections: they count as ineligible, like open breakers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::balancer::outlier::{judge, Candidate};
use crate::pool::Pool;

/// Counts by upstream name at the last tick: (attempts, failures).
pub type Seen = HashMap<String, (u64, u64)>;

/// One tick at `now`: judges the interval since `seen` and applies it.
pub fn tick(pool: &Pool, seen: &mut Seen, now: Instant) {
    let conf = &pool.config().outlier;
    let table = pool.load();
    let upstreams = table.upstreams();
    let mut next = Seen::with_capacity(upstreams.len());
    let candidates: Vec<Candidate> = upstreams
        .iter()
        .map(|u| {
            let stats = &u.stats;
            let load =
                |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            let attempts = load(&stats.requests_total) + load(&stats.unanswered_total);
            let failures = load(&stats.errors_total);
            let (a0, f0) = seen.get(&u.name).copied().unwrap_or((attempts, failures));
            next.insert(u.name.clone(), (attempts, failures));
            Candidate {
                attempts: attempts.saturating_sub(a0),
                failures: failures.saturating_sub(f0),
                ejected: u.is_ejected_at(now),
                ejections: u.ejections(),
            }
        })
        .collect();
    *seen = next;
    let verdicts = judge(conf, &candidates);
    for ((u, c), verdict) in upstreams.iter().zip(&candidates).zip(verdicts) {
        match verdict {
            Some(length) => {
                let why = format!(
                    "{} of {} attempts failed in the last {:?} ({:.0}%, threshold {:.0}%)",
                    c.failures,
                    c.attempts,
                    conf.interval,
                    c.failures as f64 * 100.0 / c.attempts.max(1) as f64,
                    conf.failure_rate * 100.0
                );
                u.eject(now, length, &why);
            }
            None => {
                let healthy = c.attempts < conf.min_requests
                    || (c.failures as f64 / c.attempts.max(1) as f64) < conf.failure_rate;
                u.after_interval(now, healthy);
            }
        }
    }
}

pub struct OutlierService {
    pool: Arc<Pool>,
}

impl OutlierService {
    pub fn new(pool: Arc<Pool>) -> Self {
        OutlierService { pool }
    }
}

#[async_trait]
impl BackgroundService for OutlierService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let conf = self.pool.config().outlier;
        if conf.max_ejection_percent == 0 {
            let _ = shutdown.changed().await;
            return;
        }
        let mut seen = Seen::new();
        let mut interval = tokio::time::interval(conf.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => tick(&self.pool, &mut seen, Instant::now()),
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::state::SharedState;
    use std::time::Duration;

    #[test]
    fn a_failing_upstream_is_ejected_refused_and_back_after_its_time() {
        let text = "lb:\n  outlier: { failure_rate: 0.5, min_requests: 10, interval: 1s, ejection_time: 2s, max_ejection_percent: 50 }\n  circuit_breaker: { fail_threshold: 1000 }\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:1\" }\n    - { name: b, addr: \"127.0.0.1:2\" }\n";
        let s = SharedState::new(Config::parse(text).unwrap().0);
        let (a, b) = (s.upstream("a").unwrap(), s.upstream("b").unwrap());
        let now = Instant::now();
        let mut seen = Seen::new();
        tick(s.pool(), &mut seen, now);
        for i in 0..20 {
            a.count_response(200, false);
            b.count_response(if i % 2 == 0 { 500 } else { 200 }, i % 2 == 0);
        }
        let later = now + Duration::from_secs(1);
        tick(s.pool(), &mut seen, later);
        assert!(b.is_ejected_at(later) && !a.is_ejected_at(later));
        assert_eq!(b.gate(later), crate::upstream::Gate::Tripped);
        assert_eq!(s.pool().table().weights[1], 0, "published: not picked");
        assert!(s
            .metrics
            .render()
            .contains("hlb_upstream_ejected{pool=\"default\",upstream=\"b\"} 1"));
        // Its two seconds pass: back, with an event.
        let back = later + Duration::from_secs(2);
        tick(s.pool(), &mut seen, back);
        assert!(!b.is_ejected_at(back));
        assert_eq!(s.events.newest_first()[0].detail, "back in rotation");
        // Failing again: twice as long.
        for _ in 0..20 {
            b.count_response(500, true);
        }
        let again = back + Duration::from_secs(1);
        tick(s.pool(), &mut seen, again);
        assert!(s.events.newest_first()[0]
            .detail
            .starts_with("ejected for 4s"));
    }
}
