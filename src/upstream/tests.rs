//! Unit tests of one upstream: its gates, breaker, load and counters.

use super::*;
use crate::breaker::Admission;
use crate::config::Config;

pub fn env(text: &str) -> UpstreamEnv {
    let c = Config::parse(text).unwrap().0.lb.pools.remove(0);
    UpstreamEnv {
        pool: c.name.as_str().into(),
        breaker: c.circuit_breaker.clone(),
        half_life: c.dynamic_weights.half_life,
        penalty_cap: c.timeouts.read.as_secs_f64(),
        metrics: Metrics::new(),
        events: Arc::new(Events::default()),
        sealer: None,
        signal: Arc::new(GateSignal::default()),
        queue: None,
        slow_start: c.slow_start,
    }
}

fn upstream() -> (Arc<Upstream>, UpstreamEnv) {
    let env = env("lb:\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:1\" }\n  circuit_breaker: { fail_threshold: 2, open_time: 1s }\n");
    let conf = UpstreamConfig::new("a", "127.0.0.1:1".parse().unwrap(), 3);
    (Arc::new(Upstream::new(&conf, &env)), env)
}

#[test]
fn the_gate_combines_health_drain_ejection_and_breaker() {
    let (u, env) = upstream();
    let now = Instant::now();
    assert_eq!(u.gate(now), Gate::Eligible);
    u.set_health(false, "test");
    assert_eq!(u.gate(now), Gate::Out);
    u.set_health(true, "test");
    u.set_drained(true);
    assert_eq!(u.gate(now), Gate::Out);
    u.set_drained(false);
    u.eject(now, Duration::from_secs(1), "test");
    assert_eq!(u.gate(now), Gate::Tripped);
    assert_eq!(u.next_gate_change(now), u.ejected_until(now));
    assert_eq!(u.gate(now + Duration::from_secs(1)), Gate::Eligible);
    u.after_interval(now + Duration::from_secs(1), true);
    u.record(false, false, now);
    assert_eq!(u.gate(now), Gate::Eligible);
    u.record(false, false, now);
    assert_eq!(u.gate(now), Gate::Tripped);
    assert_eq!(u.breaker_state(), BreakerState::Open);
    let due = u.next_gate_change(now).expect("an open breaker comes due");
    assert_eq!(u.gate(due), Gate::ProbeDue);
    assert_eq!(u.gate(due - Duration::from_millis(2)), Gate::Tripped);
    let events = env.events.newest_first();
    assert_eq!(events[0].kind, "breaker");
    assert_eq!(events[3].detail, "up: test");
    assert_eq!(events[4].detail, "down: test");
    let text = env.metrics.render();
    assert!(
        text.contains("hlb_upstream_breaker_state{pool=\"default\",upstream=\"a\"} 2"),
        "{text}"
    );
}

/// Counts the signals it is given.
#[derive(Default)]
struct Count(std::sync::atomic::AtomicUsize);

impl GateObserver for Count {
    fn gate_changed(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn every_gate_change_is_signalled() {
    let (u, env) = upstream();
    let count = Arc::new(Count::default());
    let observer: Arc<dyn GateObserver> = count.clone();
    env.signal.attach(Arc::downgrade(&observer));
    let seen = || count.0.load(Ordering::SeqCst);
    let now = Instant::now();
    u.set_drained(true);
    assert_eq!(seen(), 1);
    u.set_drained(true);
    assert_eq!(seen(), 1, "no change, no signal");
    u.set_drained(false);
    u.set_health(false, "test");
    assert_eq!(seen(), 3);
    u.set_health(true, "test");
    let later = open_breaker(&u, now);
    assert_eq!(seen(), 5, "the breaker opened");
    assert_eq!(u.claim_probe(later), Admission::Probe);
    assert_eq!(seen(), 6, "half-open with its probe out");
    u.record(true, true, later);
    assert_eq!(seen(), 7, "closed");
    u.eject(later, Duration::from_secs(1), "test");
    assert_eq!(seen(), 8);
}

#[test]
fn a_success_between_failures_resets_the_count() {
    let (u, _) = upstream();
    let now = Instant::now();
    u.record(false, false, now);
    u.record(true, false, now);
    u.record(false, false, now);
    assert_eq!(u.breaker_state(), BreakerState::Closed);
}

/// Opens `u`'s breaker (threshold 2, open 1 s) at `now`; returns when its
/// probe is due.
fn open_breaker(u: &Upstream, now: Instant) -> Instant {
    u.record(false, false, now);
    u.record(false, false, now);
    now + Duration::from_secs(2)
}

#[test]
fn a_finished_probe_holds_no_reference() {
    let (u, _) = upstream();
    let later = open_breaker(&u, Instant::now());
    assert_eq!(u.gate(later), Gate::ProbeDue);
    assert_eq!(u.claim_probe(later), Admission::Probe);
    let probe = Probe::new(u.clone());
    assert_eq!(Arc::strong_count(&u), 2);
    probe.finish(true, later);
    assert_eq!(
        Arc::strong_count(&u),
        1,
        "the probe's reference is released"
    );
    assert_eq!(u.breaker_state(), BreakerState::Closed);
}

#[test]
fn a_dropped_probe_is_given_back() {
    let (u, _) = upstream();
    let later = open_breaker(&u, Instant::now());
    assert_eq!(u.claim_probe(later), Admission::Probe);
    assert_eq!(u.gate(later), Gate::Tripped, "its probe is out");
    assert_eq!(u.claim_probe(later), Admission::Refused);
    drop(Probe::new(u.clone()));
    assert_eq!(u.gate(later), Gate::ProbeDue);
    assert_eq!(u.claim_probe(later), Admission::Probe);
}

#[test]
fn inflight_guards_count_out_on_drop() {
    let (u, env) = upstream();
    let g1 = Inflight::new(u.clone());
    let g2 = Inflight::new(u.clone());
    assert_eq!(u.inflight(), 2);
    drop(g1);
    assert_eq!(u.inflight(), 1);
    drop(g2);
    assert_eq!(u.inflight(), 0);
    assert!(env
        .metrics
        .render()
        .contains("hlb_upstream_inflight{pool=\"default\",upstream=\"a\"} 0"));
}

#[test]
fn responses_are_counted_by_code_without_formatting_twice() {
    let (u, env) = upstream();
    for _ in 0..3 {
        u.count_response(200, false);
    }
    u.count_response(503, true);
    u.count_unanswered();
    let text = env.metrics.render();
    assert!(
        text.contains("hlb_requests_total{code=\"200\",pool=\"default\",upstream=\"a\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("hlb_requests_total{code=\"503\",pool=\"default\",upstream=\"a\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("hlb_requests_total{code=\"error\",pool=\"default\",upstream=\"a\"} 1"),
        "{text}"
    );
    assert_eq!(u.stats.errors_total.load(Ordering::Relaxed), 2);
    assert_eq!(u.metrics.by_code.codes().len(), 2);
    u.retire_metrics(&env.metrics);
    assert!(!env.metrics.render().contains("upstream=\"a\""));
}

#[test]
fn a_member_on_probation_serves_at_once_and_its_first_failure_takes_it_out() {
    let (u, env) = upstream();
    let now = Instant::now();
    u.on_probation(2);
    assert_eq!(u.gate(now), Gate::Eligible, "taken on trust");
    u.first_check(false, 2);
    assert_eq!(u.gate(now), Gate::Out);
    assert!(u.is_awaiting_checks());
    assert!(env.events.newest_first()[0]
        .detail
        .contains("its first health check failed"));
    u.first_check(true, 2);
    assert_eq!(u.gate(now), Gate::Out, "one pass of two");
    u.first_check(true, 2);
    assert_eq!(u.gate(now), Gate::Eligible);
    // A passed first check ends the probation: failures are the breaker's
    // and the checks' again.
    let (v, _) = upstream();
    v.on_probation(2);
    v.first_check(true, 2);
    v.fail_probation("a connection to it failed");
    assert_eq!(v.gate(now), Gate::Eligible);
    // Before any check, a failed connection takes it out.
    let (w, _) = upstream();
    w.on_probation(2);
    w.fail_probation("a connection to it failed");
    assert_eq!(w.gate(now), Gate::Out);
}
