//! The weights tick: a Pingora background service that, every
//! `lb.dynamic_weights.interval`, ages the latency estimates, recomputes
//! `dynamic`'s factors (a pure function in `balancer::dynamic`) and puts the
//! new weights in force through the balancer's swapped table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::balancer::dynamic;
use crate::config::Algorithm;
use crate::state::SharedState;

/// Estimates older than this many half-lives are forgotten by `dynamic`.
const MAX_AGE_HALF_LIVES: u32 = 10;

/// How old a latency estimate may be and still count.
pub fn latency_max_age(state: &SharedState) -> Duration {
    state.config.lb.dynamic_weights.half_life * MAX_AGE_HALF_LIVES
}

/// One tick at `now`.
pub fn tick(state: &SharedState, now: Instant) {
    let table = state.balancer.table();
    let max_age = latency_max_age(state);
    let upstreams = table.upstreams();
    let mut estimates = Vec::with_capacity(upstreams.len());
    let mut usable = Vec::with_capacity(upstreams.len());
    for u in upstreams {
        u.age_latency(now, max_age);
        estimates.push(u.recent_latency(now, max_age));
        usable.push(u.is_usable());
    }
    let out = dynamic::factors(
        &estimates,
        &usable,
        state.config.lb.dynamic_weights.min_factor,
    );
    if let Some(neutral) = out.neutral {
        state.balancer.set_neutral_latency(neutral);
    }
    let ramped = advance_ramps(state, now);
    if state.balancer.algorithm() == Algorithm::Dynamic {
        for (u, f) in upstreams.iter().zip(&out.factors) {
            u.set_factor(*f);
        }
        state.balancer.refresh();
    } else if ramped {
        state.balancer.refresh();
    }
}

/// Moves every slow start on to `now`; true if any upstream is ramping (the
/// table then needs refreshing).
pub fn advance_ramps(state: &SharedState, now: Instant) -> bool {
    if state.config.lb.slow_start.is_zero() {
        return false;
    }
    let table = state.balancer.load();
    let mut changed = false;
    for u in table.upstreams() {
        changed |= u.advance_ramp(now);
    }
    changed
}

pub struct WeightsService {
    state: Arc<SharedState>,
}

impl WeightsService {
    pub fn new(state: Arc<SharedState>) -> Self {
        WeightsService { state }
    }
}

#[async_trait]
impl BackgroundService for WeightsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut interval = tokio::time::interval(self.state.config.lb.dynamic_weights.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => tick(&self.state, Instant::now()),
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_tick_puts_latency_factors_in_force_and_forgets_old_estimates() {
        let text = "lb:\n  algorithm: dynamic\n  dynamic_weights: { min_factor: 0.05, half_life: 1s }\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:1\", weight: 4 }\n    - { name: b, addr: \"127.0.0.1:2\", weight: 4 }\n";
        let s = SharedState::new(Config::parse(text).unwrap().0);
        let now = Instant::now();
        let t = s.balancer.table();
        t.upstreams()[0].observe_latency(0.010, false, now);
        t.upstreams()[1].observe_latency(0.040, false, now);
        tick(&s, now);
        let t = s.balancer.table();
        assert_eq!(t.effective(0), 4.0);
        assert_eq!(t.effective(1), 1.0);
        let text = s.metrics.render();
        assert!(
            text.contains("hlb_upstream_weight{kind=\"effective\",upstream=\"b\"} 1"),
            "{text}"
        );
        // Ten half-lives later without samples, both are forgotten: full weight.
        tick(&s, now + Duration::from_secs(11));
        let t = s.balancer.table();
        assert_eq!(t.effective(1), 4.0);
        assert_eq!(t.upstreams()[1].recent_latency(now, Duration::MAX), None);
    }

    #[test]
    fn a_recovered_upstream_ramps_from_a_tenth_of_its_weight() {
        let text = "lb:\n  algorithm: weighted\n  slow_start: 10s\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:1\", weight: 2 }\n    - { name: b, addr: \"127.0.0.1:2\", weight: 2 }\n";
        let s = SharedState::new(Config::parse(text).unwrap().0);
        let b = s.upstream("b").unwrap();
        b.set_health(false, "test");
        let now = Instant::now();
        b.set_health(true, "test");
        tick(&s, now);
        let t = s.balancer.table();
        assert_eq!(t.effective(0), 2.0, "a is not ramping");
        assert!((t.effective(1) - 0.2).abs() < 0.11, "{}", t.effective(1));
        tick(&s, now + Duration::from_secs(5));
        let t = s.balancer.table();
        assert!(
            (t.effective(1) - 1.1).abs() < 0.11,
            "half way: {}",
            t.effective(1)
        );
        tick(&s, now + Duration::from_secs(10));
        assert_eq!(s.balancer.table().effective(1), 2.0);
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
