//! Unit tests of the pool: selection over the published set, republication
//! on every gate change, panic mode that starts and ends with the gates, and
//! replacement of the set.

use std::time::Duration;

use super::*;
use crate::upstream::tests::env;
use crate::upstream::{GateSignal, UpstreamEnv};

fn configs(weights: &[u32]) -> Vec<UpstreamConfig> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let addr = format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
            UpstreamConfig::new(format!("u{i}"), addr, w)
        })
        .collect()
}

/// A pool over `weights` from the config file, attached to its upstreams'
/// signal as in the process.
fn pool_with(algorithm: Algorithm, weights: &[u32], extra: &str) -> (Arc<Pool>, UpstreamEnv) {
    let text = format!("lb:\n  upstreams:\n    - {{ name: a, addr: \"127.0.0.1:1\" }}\n{extra}");
    let mut env = env(&text);
    env.signal = Arc::new(GateSignal::default());
    let mut conf = crate::config::Config::parse(&text)
        .unwrap()
        .0
        .lb
        .pools
        .remove(0);
    conf.algorithm = algorithm;
    let desired = Desired {
        file: configs(weights),
        ..Desired::default()
    };
    let pool = Arc::new(Pool::new(
        Policy::new(conf),
        desired,
        env.clone(),
        SetRules {
            passes: 2,
            max_upstreams: 6,
            own: vec!["127.0.0.1:8080".parse().unwrap()],
        },
    ));
    let observer: Arc<dyn GateObserver> = pool.clone();
    env.signal.attach(Arc::downgrade(&observer));
    (pool, env)
}

fn pool(algorithm: Algorithm, weights: &[u32]) -> (Arc<Pool>, UpstreamEnv) {
    pool_with(algorithm, weights, "")
}

fn picks(p: &Pool, n: usize) -> Vec<usize> {
    let t = p.table();
    let now = Instant::now();
    (0..n)
        .filter_map(|_| p.pick(&t, |_| false, now).map(|k| k.index))
        .collect()
}

#[test]
fn weighted_follows_the_cycle() {
    let (p, _) = pool(Algorithm::Weighted, &[5, 3, 2]);
    let got = picks(&p, 1000);
    let count = |i| got.iter().filter(|&&x| x == i).count();
    assert_eq!((count(0), count(1), count(2)), (500, 300, 200));
}

#[test]
fn round_robin_ignores_weights() {
    let (p, _) = pool(Algorithm::RoundRobin, &[5, 3, 2]);
    assert_eq!(picks(&p, 6), [0, 1, 2, 0, 1, 2]);
}

#[test]
fn skipped_upstreams_are_passed_over() {
    let (p, _) = pool(Algorithm::Weighted, &[5, 3, 2]);
    let t = p.table();
    let now = Instant::now();
    for _ in 0..100 {
        assert_ne!(p.pick(&t, |i| i == 0, now).unwrap().index, 0);
    }
    assert_eq!(p.pick(&t, |_| true, now), None);
}

#[test]
fn a_rarely_scheduled_upstream_is_still_found() {
    let (p, _) = pool(Algorithm::Weighted, &[10_000, 1]);
    let pick = p.pick(&p.table(), |i| i != 1, Instant::now());
    assert_eq!(pick.map(|k| k.index), Some(1));
}

#[test]
fn a_gate_change_is_published_before_the_next_pick() {
    let (p, _) = pool(Algorithm::Weighted, &[1, 1, 1, 1]);
    let u1 = p.table().upstreams()[1].clone();
    u1.set_drained(true);
    let t = p.table();
    assert_eq!(t.gates[1], Gate::Out);
    assert_eq!(t.weights[1], 0);
    assert!(picks(&p, 300).iter().all(|&i| i != 1));
    u1.set_drained(false);
    assert_eq!(p.table().gates[1], Gate::Eligible);
    assert!(picks(&p, 4).contains(&1));
}

#[test]
fn factors_steer_dynamic_and_publish_rebuilds_only_on_change() {
    let (p, _) = pool(Algorithm::Dynamic, &[1, 1]);
    let now = Instant::now();
    p.table().upstreams()[1].set_factor(0.05);
    assert!(p.publish(now));
    assert!(!p.publish(now), "unchanged");
    let got = picks(&p, 1050);
    assert_eq!(got.iter().filter(|&&i| i == 1).count(), 50);
    assert_eq!(p.table().effective(1), 0.05);
    p.table().upstreams()[1].set_factor(1.0);
    p.publish(now);
    assert_eq!(picks(&p, 100).iter().filter(|&&i| i == 1).count(), 50);
}

#[test]
fn a_sidelined_upstream_serves_only_when_every_other_is_ruled_out() {
    let now = Instant::now();
    for algorithm in [Algorithm::Dynamic, Algorithm::P2c] {
        let (p, _) = pool(algorithm, &[1, 1, 1]);
        p.table().upstreams()[2].set_sidelined(true, "test");
        assert!(p.publish(now));
        let t = p.table();
        assert_eq!(t.effective(2), 0.0);
        assert_eq!(t.sidelined, [2]);
        assert!(picks(&p, 300).iter().all(|&i| i != 2), "{algorithm:?}");
        assert_eq!(p.pick(&t, |i| i != 2, now).map(|k| k.index), Some(2));
        assert_eq!(p.pick(&t, |_| true, now), None);
    }
    // The other algorithms take no account of latency.
    let (p, _) = pool(Algorithm::Weighted, &[1, 1]);
    p.table().upstreams()[1].set_sidelined(true, "test");
    p.publish(now);
    assert_eq!(p.table().effective(1), 1.0);
}

#[test]
fn p2c_prefers_the_cheaper_upstream() {
    use rand::SeedableRng;
    let (p, _) = pool(Algorithm::P2c, &[1, 1, 1]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let now = Instant::now();
    let t = p.table();
    t.upstreams()[0].observe_latency(0.5, false, now);
    t.upstreams()[1].observe_latency(0.1, false, now);
    t.upstreams()[2].observe_latency(9.0, false, now);
    let got: Vec<usize> = (0..300)
        .filter_map(|_| p.pick_with_rng(&mut rng, &t, |_| false, now))
        .map(|k| k.index)
        .collect();
    assert!(!got.contains(&2));
    assert!(got.iter().filter(|&&i| i == 1).count() > 150);
}

const BREAKER: &str = "  circuit_breaker: { fail_threshold: 1, open_time: 1s }\n";

#[test]
fn panic_starts_the_moment_breakers_leave_too_few_and_ends_when_they_close() {
    let (p, env) = pool_with(Algorithm::Weighted, &[1, 1, 1], BREAKER);
    let t0 = Instant::now();
    let ups = p.table().upstreams().to_vec();
    ups[0].record(false, false, t0);
    assert!(!p.in_panic(), "2 of 3 eligible");
    ups[1].record(false, false, t0);
    assert!(p.in_panic(), "1 of 3 eligible: in panic with no tick");
    let event = &env.events.newest_first()[0];
    assert_eq!(event.kind, "panic");
    assert!(event.detail.starts_with("on: "), "{}", event.detail);
    // In panic every healthy upstream takes requests, the open ones too.
    let got = picks(&p, 30);
    assert!((0..3).all(|i| got.contains(&i)), "{got:?}");
    // Past the open time the pick republishes and claims the probes; a
    // success closes each breaker, and panic ends with an event.
    let t1 = t0 + Duration::from_secs(2);
    let t = p.current(t1);
    assert_eq!(t.gates[0], Gate::ProbeDue);
    let mut probes = 0;
    for _ in 0..10 {
        let t = p.current(t1);
        let pick = p.pick(&t, |_| false, t1).unwrap();
        if pick.probe {
            probes += 1;
            ups[pick.index].record(true, true, t1);
        }
    }
    assert_eq!(probes, 2, "one probe per open breaker");
    assert!(!p.in_panic());
    let events = env.events.newest_first();
    let event = events.iter().find(|e| e.kind == "panic").unwrap();
    assert!(event.detail.starts_with("off: 2 of 3"), "{}", event.detail);
}

#[test]
fn a_drained_upstream_is_not_counted_as_healthy_in_panic() {
    let (p, _) = pool_with(Algorithm::Weighted, &[1, 1, 1], BREAKER);
    let now = Instant::now();
    let ups = p.table().upstreams().to_vec();
    ups[0].record(false, false, now);
    ups[1].record(false, false, now);
    assert!(p.in_panic());
    ups[0].set_drained(true);
    assert!(!p.in_panic(), "1 of 2 healthy is enough");
    assert!(picks(&p, 30).iter().all(|&i| i == 2));
}

#[test]
fn a_claimed_probe_is_not_claimed_twice() {
    let (p, _) = pool_with(Algorithm::Weighted, &[1, 1, 1, 1], BREAKER);
    let t0 = Instant::now();
    let u0 = p.table().upstreams()[0].clone();
    u0.record(false, false, t0);
    let t1 = t0 + Duration::from_secs(2);
    // A table published while the probe was due, read by two requests.
    let stale = p.current(t1).clone();
    assert_eq!(stale.gates[0], Gate::ProbeDue);
    assert_eq!(claim(&stale, 0, t1), Some(true));
    assert_eq!(
        claim(&stale, 0, t1),
        None,
        "the second request goes elsewhere"
    );
    for _ in 0..20 {
        let pick = p.pick(&stale, |_| false, t1).unwrap();
        assert_ne!(pick.index, 0);
    }
    assert_eq!(p.table().gates[0], Gate::Tripped, "republished: probe out");
}

#[test]
fn an_ejection_that_runs_out_is_republished_by_the_next_pick() {
    let (p, _) = pool(Algorithm::Weighted, &[1, 1, 1, 1]);
    let t0 = Instant::now();
    p.table().upstreams()[3].eject(t0, Duration::from_secs(1), "test");
    assert_eq!(p.table().gates[3], Gate::Tripped);
    let t1 = t0 + Duration::from_millis(1500);
    assert!(p.table().next_change.is_some_and(|t| t <= t1));
    assert_eq!(p.current(t1).gates[3], Gate::Eligible);
}

#[test]
fn replace_keeps_the_state_of_unchanged_upstreams() {
    let (p, env) = pool(Algorithm::Weighted, &[1, 1, 1]);
    let before = p.table();
    let u1 = before.upstreams()[1].clone();
    u1.set_drained(true);
    // u0 keeps its address with a new weight, u1 moves, u2 leaves, u3 arrives.
    let mut next = configs(&[4, 1, 1, 2]);
    next[1].addr = "127.0.0.1:2999".parse().unwrap();
    next.remove(2);
    let change = p.replace(&next, |c| Upstream::new(c, &env));
    assert_eq!(change.kept, 1);
    let added: Vec<&str> = change.added.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(added, ["u1", "u3"]);
    let removed: Vec<&str> = change.removed.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(removed, ["u1", "u2"]);
    let after = p.table();
    assert!(Arc::ptr_eq(&after.upstreams()[0], &before.upstreams()[0]));
    assert_eq!(after.upstreams()[0].base_weight(), 4);
    assert!(
        !after.upstreams()[1].is_drained(),
        "a moved upstream starts afresh"
    );
    assert_eq!(after.members.index_of("u3"), Some(2));
    assert_eq!(after.members.index_of("u2"), None);
    let got = picks(&p, 700);
    assert_eq!(got.iter().filter(|&&i| i == 0).count(), 400);
    // The old table still reads consistently for whoever holds it.
    assert_eq!(before.upstreams()[2].name, "u2");
}

#[test]
fn a_same_name_replacement_keeps_the_series_right() {
    let (p, env) = pool_with(Algorithm::Weighted, &[1, 1], BREAKER);
    let old = p.table().upstreams()[1].clone();
    let inflight = crate::upstream::Inflight::new(old.clone());
    let mut next = configs(&[1, 1]);
    next[1].addr = "127.0.0.1:2999".parse().unwrap();
    let change = p
        .edit(
            "test",
            |_| false,
            |d| {
                d.file = next;
                Ok::<(), ()>(())
            },
        )
        .unwrap();
    assert_eq!(change.removed.len(), 1);
    let series = |name: &str| {
        let text = env.metrics.render();
        let line = format!("{name}{{pool=\"default\",upstream=\"u1\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(line.as_str()).map(str::to_string))
            .unwrap_or_else(|| panic!("no {line} in {text}"))
    };
    assert_eq!(series("hlb_upstream_inflight"), "1", "still in flight");
    // The old instance's late failure opens its own breaker only.
    old.record(false, false, Instant::now());
    drop(inflight);
    assert_eq!(series("hlb_upstream_inflight"), "0", "never negative");
    assert_eq!(series("hlb_upstream_breaker_state"), "0", "the new one's");
}

#[test]
fn an_edit_composes_the_sources_and_newcomers_wait_for_their_checks() {
    let (p, env) = pool(Algorithm::Weighted, &[1, 1]);
    let refused = p.edit(
        "admin",
        |_| false,
        |d| {
            if d.names("u0") {
                return Err("taken");
            }
            Ok(())
        },
    );
    assert_eq!(refused.err(), Some(EditError::Refused("taken")));
    let change = p
        .edit(
            "admin",
            |name| name == "x",
            |d| {
                d.admin
                    .add(UpstreamConfig::new("x", "127.0.0.1:9".parse().unwrap(), 1));
                d.admin.remove("u0");
                Ok::<(), ()>(())
            },
        )
        .unwrap();
    let t = p.table();
    let names: Vec<&str> = t.upstreams().iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["u1", "x"]);
    let x = &change.added[0];
    assert!(
        x.is_awaiting_checks() && x.is_drained(),
        "joins drained, unchecked"
    );
    assert_eq!(t.gates[1], Gate::Out);
    let kinds: Vec<String> = env
        .events
        .newest_first()
        .iter()
        .map(|e| e.detail.clone())
        .collect();
    assert!(
        kinds.iter().any(|d| d.ends_with("removed by admin")),
        "{kinds:?}"
    );
    assert!(
        !env.metrics.render().contains("upstream=\"u0\""),
        "u0's series retired"
    );
}

#[test]
fn an_edit_past_the_cap_changes_nothing_and_says_so() {
    let (p, env) = pool(Algorithm::Weighted, &[1, 1, 1, 1, 1]);
    let add = |name: &str| {
        let c = UpstreamConfig::new(name, "127.0.0.1:9".parse().unwrap(), 1);
        p.edit(
            "admin",
            |_| false,
            move |d| {
                d.admin.add(c);
                Ok::<(), ()>(())
            },
        )
    };
    assert!(add("x").is_ok(), "6 is the cap");
    assert_eq!(
        add("y").err(),
        Some(EditError::OverCap { wanted: 7, cap: 6 })
    );
    assert_eq!(p.table().upstreams().len(), 6);
    assert!(!p.desired().names("y"));
    assert!(env.events.newest_first()[0]
        .detail
        .contains("over lb.limits.max_upstreams (6)"));
}

#[test]
fn an_upstream_at_our_own_listener_is_refused_from_any_source() {
    let (p, env) = pool(Algorithm::Weighted, &[1]);
    p.edit(
        "dns api.test:8080",
        |_| false,
        |d| {
            d.set_members(
                "api",
                vec![UpstreamConfig::new(
                    "api@127.0.0.1:8080",
                    "127.0.0.1:8080".parse().unwrap(),
                    1,
                )],
            );
            Ok::<(), ()>(())
        },
    )
    .unwrap();
    assert_eq!(p.table().upstreams().len(), 1, "not taken");
    let e = &env.events.newest_first()[0];
    assert!(e.detail.contains("own listener"), "{}", e.detail);
}
