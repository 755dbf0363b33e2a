//! The weights tick: a Pingora background service that, every
//! `lb.dynamic_weights.interval`, ages the latency estimates, measures how
//! probes compare with client requests, recomputes `dynamic`'s factors and
//! which upstreams are sidelined (pure functions in `balancer`), and puts the
//! new weights in force through the balancer's swapped table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::balancer::sideline::{self, Candidate};
use crate::balancer::{dynamic, probe};
use crate::config::Algorithm;
use crate::pool::{Pool, Table};
use crate::upstream::Gate;

/// Estimates older than this many half-lives are forgotten by `dynamic`.
const MAX_AGE_HALF_LIVES: u32 = 10;

/// How old a latency estimate may be and still count.
pub fn latency_max_age(pool: &Pool) -> Duration {
    pool.config().dynamic_weights.half_life * MAX_AGE_HALF_LIVES
}

/// One tick at `now`.
pub fn tick(pool: &Pool, now: Instant) {
    let table = pool.table();
    let max_age = latency_max_age(pool);
    let upstreams = table.upstreams();
    let mut estimates = Vec::with_capacity(upstreams.len());
    let mut usable = Vec::with_capacity(upstreams.len());
    // Eligible now, not due a probe: the set `dynamic` takes the fastest from.
    for (u, gate) in upstreams.iter().zip(&table.gates) {
        u.age_latency(now, max_age);
        estimates.push(u.recent_latency(now, max_age));
        usable.push(*gate == Gate::Eligible);
    }
    let out = dynamic::factors(
        &estimates,
        &usable,
        pool.config().dynamic_weights.min_factor,
    );
    if let Some(neutral) = out.neutral {
        pool.set_neutral_latency(neutral);
    }
    let stale_after = pool.config().health_check.interval;
    let pairs = upstreams
        .iter()
        .filter(|u| !u.is_sidelined() && u.serves_clients(now, stale_after))
        .filter_map(|u| Some((u.recent_latency(now, max_age)?, u.probe_latency()?)));
    if let Some(scale) = probe::scale(pairs) {
        pool.set_probe_scale(scale);
    }
    let mut changed = advance_ramps(pool, now);
    let algorithm = pool.algorithm();
    if algorithm.is_latency_aware() {
        changed |= apply_sidelines(pool, &table, &estimates, &usable);
    }
    if algorithm == Algorithm::Dynamic {
        for (u, f) in upstreams.iter().zip(&out.factors) {
            u.set_factor(*f);
        }
        changed = true;
    }
    if changed {
        pool.publish(now);
    }
}

/// Sidelines the upstreams too slow for client requests and brings back the
/// ones probes show fast again; true if any changed.
fn apply_sidelines(pool: &Pool, table: &Table, estimates: &[Option<f64>], usable: &[bool]) -> bool {
    let min_factor = pool.config().dynamic_weights.min_factor;
    let upstreams = table.upstreams();
    let candidates: Vec<Candidate> = upstreams
        .iter()
        .zip(estimates.iter().zip(usable))
        .zip(&table.gates)
        .map(|((u, (estimate, usable)), gate)| Candidate {
            estimate: *estimate,
            available: gate.is_healthy(),
            usable: *usable,
            sidelined: u.is_sidelined(),
            probe: u.probe_latency(),
        })
        .collect();
    let fastest = sideline::fastest(&candidates).unwrap_or(0.0);
    let mut changed = false;
    for ((u, c), out) in upstreams
        .iter()
        .zip(&candidates)
        .zip(sideline::sidelined(&candidates, min_factor))
    {
        let own = c.estimate.unwrap_or(0.0) * 1e3;
        let why = if out {
            format!(
                "{own:.1} ms is over {:.0}× the fastest ({:.1} ms): no client requests; \
                 copies of them (or probes, without traffic) every {:?} will bring it back",
                1.0 / min_factor,
                fastest * 1e3,
                crate::health::PROBE_EVERY,
            )
        } else {
            format!(
                "measured at {own:.1} ms against the fastest {:.1} ms: back in rotation",
                fastest * 1e3
            )
        };
        changed |= u.set_sidelined(out, &why);
    }
    changed
}

/// Moves every slow start on to `now`; true if any upstream is ramping (the
/// table then needs refreshing).
pub fn advance_ramps(pool: &Pool, now: Instant) -> bool {
    if pool.config().slow_start.is_zero() {
        return false;
    }
    let table = pool.load();
    let mut changed = false;
    for u in table.upstreams() {
        changed |= u.advance_ramp(now);
    }
    changed
}

pub struct WeightsService {
    pool: Arc<Pool>,
}

impl WeightsService {
    pub fn new(pool: Arc<Pool>) -> Self {
        WeightsService { pool }
    }
}

#[async_trait]
impl BackgroundService for WeightsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut interval = tokio::time::interval(self.pool.config().dynamic_weights.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => tick(&self.pool, Instant::now()),
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

    #[test]
    fn the_tick_puts_latency_factors_in_force_and_forgets_old_estimates() {
        let text = "lb:\n  algorithm: dynamic\n  dynamic_weights: { min_factor: 0.05, half_life: 1s }\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:1\", weight: 4 }\n    - { name: b, addr: \"127.0.0.1:2\", weight: 4 }\n";
        let s = SharedState::new(Config::parse(text).unwrap().0);
        let now = Instant::now();
        let t = s.pool().table();
        t.upstreams()[0].observe_latency(0.010, false, now);
        t.upstreams()[1].observe_latency(0.040, false, now);
        tick(s.pool(), now);
        let t = s.pool().table();
        assert_eq!(t.effective(0), 4.0);
        assert_eq!(t.effective(1), 1.0);
        let text = s.metrics.render();
        assert!(
            text.contains(
                "hlb_upstream_weight{kind=\"effective\",pool=\"default\",upstream=\"b\"} 1"
            ),
            "{text}"
        );
        // Ten half-lives later without samples, both are forgotten: full weight.
        tick(s.pool(), now + Duration::from_secs(11));
        let t = s.pool().table();
        assert_eq!(t.effective(1), 4.0);
        assert_eq!(t.upstreams()[1].recent_latency(now, Duration::MAX), None);
    }

    #[test]
    fn probes_from_before_it_was_sidelined_do_not_bring_it_back() {
        let text = "lb:\n  algorithm: p2c\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:1\" }\n    - { name: b, addr: \"127.0.0.1:2\" }\n    - { name: c, addr: \"127.0.0.1:3\" }\n";
        let s = SharedState::new(Config::parse(text).unwrap().0);
        let t0 = Instant::now();
        let stale = Duration::from_secs(5);
        let (a, b, c) = (
            s.upstream("a").unwrap(),
            s.upstream("b").unwrap(),
            s.upstream("c").unwrap(),
        );
        for k in 0..3 {
            c.observe_probe(0.005, t0 + Duration::from_millis(k), 1.0, stale);
        }
        let t1 = t0 + Duration::from_secs(1);
        for u in [&a, &b] {
            u.observe_latency(0.005, false, t1);
        }
        c.observe_latency(0.050, false, t1);
        tick(s.pool(), t1);
        assert!(c.is_sidelined());
        // Its next probe is slow: with the fast ones before, the median would
        // say fast.
        let t2 = t1 + Duration::from_secs(1);
        c.observe_probe(0.050, t2, 1.0, stale);
        for u in [&a, &b] {
            u.observe_latency(0.005, false, t2);
        }
        tick(s.pool(), t2);
        assert!(c.is_sidelined(), "came back on probes taken before");
        // Two fast probes of three since, while its last client sample is
        // fresh: still out (health checks are a hint while there is
        // traffic to measure it by).
        let t3 = t2 + Duration::from_secs(1);
        c.observe_probe(0.005, t3, 1.0, stale);
        c.observe_probe(0.005, t3 + Duration::from_millis(1), 1.0, stale);
        for u in [&a, &b] {
            u.observe_latency(0.005, false, t3);
        }
        tick(s.pool(), t3 + Duration::from_millis(1));
        assert!(c.is_sidelined(), "came back on health checks alone");
        // No client sample and no copy for a few seconds (no traffic to
        // copy): the probes are the evidence, and two fast of three: back.
        let t3 = t1 + Duration::from_secs(6);
        c.observe_probe(0.005, t3, 1.0, stale);
        c.observe_probe(0.005, t3 + Duration::from_millis(1), 1.0, stale);
        for u in [&a, &b] {
            u.observe_latency(0.005, false, t3);
        }
        tick(s.pool(), t3 + Duration::from_millis(1));
        assert!(!c.is_sidelined());
    }

    #[test]
    fn copies_of_client_requests_keep_a_slow_upstream_out_and_bring_it_back() {
        let text = "lb:\n  algorithm: dynamic\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:1\" }\n    - { name: b, addr: \"127.0.0.1:2\" }\n    - { name: c, addr: \"127.0.0.1:3\" }\n";
        let s = SharedState::new(Config::parse(text).unwrap().0);
        let (a, b, c) = (
            s.upstream("a").unwrap(),
            s.upstream("b").unwrap(),
            s.upstream("c").unwrap(),
        );
        let stale = Duration::from_secs(1);
        let t0 = Instant::now();
        for u in [&a, &b] {
            u.observe_latency(0.005, false, t0);
        }
        c.observe_latency(0.050, false, t0);
        tick(s.pool(), t0);
        assert!(c.is_sidelined());
        // Ten seconds of copies measuring it slow, beside health checks
        // that answer at once: it stays out.
        for k in 1..=10 {
            let t = t0 + Duration::from_secs(k);
            c.observe_mirrored(0.050, false, t);
            c.observe_probe(0.0002, t, 1.0, stale);
            for u in [&a, &b] {
                u.observe_latency(0.005, false, t);
            }
            tick(s.pool(), t);
            assert!(c.is_sidelined(), "back after {k} s on fast health checks");
            assert_eq!(c.measured_by(t, stale), "mirrored");
        }
        // The copies see it fast: back.
        let mut t = t0 + Duration::from_secs(10);
        for _ in 0..20 {
            t += Duration::from_millis(500);
            c.observe_mirrored(0.005, false, t);
            for u in [&a, &b] {
                u.observe_latency(0.005, false, t);
            }
            tick(s.pool(), t);
        }
        assert!(!c.is_sidelined());
        assert_eq!(
            c.stats
                .mirrored_total
                .load(std::sync::atomic::Ordering::Relaxed),
            30
        );
    }

    #[test]
    fn a_recovered_upstream_ramps_from_a_tenth_of_its_weight() {
        let text = "lb:\n  algorithm: weighted\n  slow_start: 10s\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:1\", weight: 2 }\n    - { name: b, addr: \"127.0.0.1:2\", weight: 2 }\n";
        let s = SharedState::new(Config::parse(text).unwrap().0);
        let b = s.upstream("b").unwrap();
        b.set_health(false, "test");
        let now = Instant::now();
        b.set_health(true, "test");
        tick(s.pool(), now);
        let t = s.pool().table();
        assert_eq!(t.effective(0), 2.0, "a is not ramping");
        assert!((t.effective(1) - 0.2).abs() < 0.11, "{}", t.effective(1));
        tick(s.pool(), now + Duration::from_secs(5));
        let t = s.pool().table();
        assert!(
            (t.effective(1) - 1.1).abs() < 0.11,
            "half way: {}",
            t.effective(1)
        );
        tick(s.pool(), now + Duration::from_secs(10));
        assert_eq!(s.pool().table().effective(1), 2.0);
        let events: Vec<String> = s
            .events
            .newest_first()
            .iter()
            .map(|e| e.detail.clone())
            .collect();
        assert!(
            events.iter().any(|e| e == "done: full weight"),
            "{events:?}"
        );
    }
}
