//! Panic mode (Envoy's healthy-panic threshold): breakers must never leave
//! fewer than half of the healthy upstreams eligible. Past that point, failing
//! answers are more likely the requests' fault than the upstreams' (any
//! client can ask for a URL that errors), so selection overrules breakers and
//! balances over every healthy upstream, and an event says so.
//!
//! Reassessed whenever an upstream's breaker, health or drain changes, and at
//! least once a second; the request path reads one flag. SRV priorities'
//! standby is settled first, since a target held back is not in the count.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::balancer::standby::{standby, Member};
use crate::breaker::BreakerState;
use crate::state::SharedState;
use crate::upstream::Upstream;

/// Whether `eligible` of `healthy` upstreams (healthy and not drained) is too
/// few: fewer than half.
pub fn in_panic(healthy: usize, eligible: usize) -> bool {
    healthy > 0 && eligible * 2 < healthy
}

/// Reassesses panic mode from the table in force; on a change, sets the flag
/// and records an event.
pub fn assess(state: &SharedState) {
    // A recovered upstream's slow start is in force at once, not at the
    // next weights tick.
    if crate::weights::advance_ramps(state, std::time::Instant::now()) {
        state.balancer.refresh();
    }
    let table = state.balancer.load();
    assess_standby(table.upstreams());
    let (mut healthy, mut eligible) = (0, 0);
    for u in table.upstreams() {
        if u.is_available() {
            healthy += 1;
            if u.is_usable() {
                eligible += 1;
            }
        }
    }
    let panic = in_panic(healthy, eligible);
    if state.balancer.set_panic(panic) != panic {
        let detail = if panic {
            format!(
                "on: breakers leave {eligible} of {healthy} healthy upstreams eligible; \
                 balancing over all {healthy} healthy upstreams"
            )
        } else {
            format!("off: {eligible} of {healthy} healthy upstreams eligible")
        };
        log::warn!("panic mode {detail}");
        state.events.push(None, "panic", detail);
    }
}

/// Holds back SRV targets of a priority above their group's preferred one.
fn assess_standby(upstreams: &[Arc<Upstream>]) {
    if upstreams.iter().all(|u| u.group.is_none()) {
        return;
    }
    let members: Vec<Member> = upstreams
        .iter()
        .map(|u| Member {
            group: u.group.as_deref(),
            priority: u.priority(),
            eligible: u.is_healthy() && !u.is_drained() && u.breaker_state() != BreakerState::Open,
            healthy: u.is_healthy() && !u.is_drained(),
        })
        .collect();
    for (u, standby) in upstreams.iter().zip(standby(&members)) {
        u.set_standby(standby);
    }
}

/// Runs [`assess`] on every eligibility change, and at least once a second.
pub struct PanicService {
    state: Arc<SharedState>,
}

impl PanicService {
    pub fn new(state: Arc<SharedState>) -> Self {
        PanicService { state }
    }
}

#[async_trait]
impl BackgroundService for PanicService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let changed = self.state.eligibility_changed();
        loop {
            assess(&self.state);
            tokio::select! {
                _ = changed.notified() => {}
                // Open breakers come due without a transition: look anyway.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::time::Instant;

    #[test]
    fn the_threshold_is_half_of_the_healthy() {
        assert!(!in_panic(0, 0), "nothing healthy: a 503, not a panic");
        assert!(!in_panic(2, 1));
        assert!(in_panic(2, 0));
        assert!(in_panic(3, 1));
        assert!(!in_panic(4, 2));
        assert!(in_panic(5, 2));
    }

    #[test]
    fn open_breakers_on_most_upstreams_start_a_panic_and_an_event() {
        let text = "lb:\n  circuit_breaker: { fail_threshold: 1 }\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:1\" }\n    - { name: b, addr: \"127.0.0.1:2\" }\n    - { name: c, addr: \"127.0.0.1:3\" }\n";
        let s = SharedState::new(Config::parse(text).unwrap().0);
        let now = Instant::now();
        s.upstream("a").unwrap().record(false, false, now);
        assess(&s);
        assert!(!s.balancer.in_panic(), "2 of 3 eligible");
        s.upstream("b").unwrap().record(false, false, now);
        assess(&s);
        assert!(s.balancer.in_panic(), "1 of 3 eligible");
        let e = &s.events.newest_first()[0];
        assert_eq!(e.kind, "panic");
        assert!(
            e.detail.starts_with("on: breakers leave 1 of 3"),
            "{}",
            e.detail
        );
        // A drained upstream is not healthy-and-available: 1 of 2 is enough.
        s.upstream("a").unwrap().set_drained(true);
        assess(&s);
        assert!(!s.balancer.in_panic());
        assert!(s.events.newest_first()[0].detail.starts_with("off"));
    }
}
