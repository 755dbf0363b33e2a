//! End to end: latency-aware balancing. Two upstreams of equal weight, one turns
//! 20× slower under concurrent load: its share must fall well below 50%, and rise
//! again once it is fast. Three upstreams, one 20× slower: once known it gets no
//! client request at all, and probes alone show when it is fast again.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use mock_backend::{Behaviour, BehaviourPatch};

const CLIENTS: usize = 8;
const FAST_MS: u64 = 5;
const SLOW_MS: u64 = 100;
/// How much slower the sidelined upstream is: well past the 5× line, so that a
/// busy machine (the suite runs tests side by side on two cores) inflating the
/// fast upstreams' estimates does not bring it back within it.
const SIDELINED_TIMES: u64 = 20;

type Log = Arc<Mutex<Vec<(Instant, bool)>>>;

/// Closed-loop clients sending until `stop`; logs (time, went to the slow one).
fn load(lb: &Lb, stop: Arc<AtomicBool>, log: Log) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CLIENTS)
        .map(|_| {
            let (url, stop, log) = (lb.url("/"), stop.clone(), log.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let resp = client.get(&url).send().await.expect("request");
                    assert_eq!(resp.status(), 200);
                    let slow = backend_of(&resp) == "slow";
                    log.lock().unwrap().push((Instant::now(), slow));
                }
            })
        })
        .collect()
}

/// Share of requests to the slow upstream among those logged after `since`.
fn slow_share(log: &Log, since: Instant) -> (f64, usize) {
    let log = log.lock().unwrap();
    let window: Vec<bool> = log
        .iter()
        .filter(|(t, _)| *t >= since)
        .map(|(_, s)| *s)
        .collect();
    let n = window.len();
    let slow = window.iter().filter(|s| **s).count();
    (if n == 0 { 0.0 } else { slow as f64 / n as f64 }, n)
}

async fn slow_upstream_loses_and_regains_share(algorithm: &str) {
    let fast = mock_with(
        "fast",
        Behaviour {
            latency_ms: FAST_MS,
            ..Default::default()
        },
    )
    .await;
    let slow = mock_with(
        "slow",
        Behaviour {
            latency_ms: SLOW_MS,
            ..Default::default()
        },
    )
    .await;
    let body = format!(
        "  algorithm: {algorithm}\n  dynamic_weights: {{ half_life: 1s, interval: 200ms, min_factor: 0.05 }}\n  upstreams:\n{}",
        upstreams_yaml(&[("fast", fast.addr(), 1), ("slow", slow.addr(), 1)])
    );
    let lb = Lb::start(&body).await;
    let stop = Arc::new(AtomicBool::new(false));
    let log: Log = Arc::default();
    let tasks = load(&lb, stop.clone(), log.clone());

    // Once the slowness is known its share falls well below the static 50%.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let measured_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (share, n) = slow_share(&log, measured_from);
    eprintln!(
        "{algorithm}: slow upstream share {:.2}% of {n} requests",
        share * 100.0
    );
    assert!(n > 100, "too little traffic to judge: {n}");
    assert!(share < 0.20, "{algorithm}: slow share {share}");
    let state = lb.upstream_state("slow").await;
    eprintln!("{algorithm}: slow upstream state {state}");
    if algorithm == "dynamic" {
        assert!(state["effective_weight"].as_f64().unwrap() < 0.2, "{state}");
    }

    // It recovers: its share comes back.
    slow.set(&BehaviourPatch {
        latency_ms: Some(FAST_MS),
        ..Default::default()
    })
    .unwrap();
    let recovered_at = Instant::now();
    wait_for("the recovered upstream to regain share", || {
        let log = log.clone();
        async move {
            let since = Instant::now() - Duration::from_secs(1);
            let (share, n) = slow_share(&log, since.max(recovered_at));
            n > 50 && share > 0.25
        }
    })
    .await;
    eprintln!(
        "{algorithm}: share regained {:?} after recovery",
        recovered_at.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_weights_follow_latency() {
    slow_upstream_loses_and_regains_share("dynamic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_follows_latency_and_load() {
    slow_upstream_loses_and_regains_share("p2c").await;
}

/// Three upstreams at 5 ms, one of them 20× slower from the start.
async fn sidelined_until_probes_show_it_fast(algorithm: &str) {
    let ([_a, _b, slow], upstreams) = two_fast_one_slow(
        FAST_MS,
        Behaviour {
            latency_ms: FAST_MS * SIDELINED_TIMES,
            ..Default::default()
        },
    )
    .await;
    // Default health checks (every 5 s): recovery is seen by the probes of
    // the sidelined upstream, once a second.
    let body = format!("  algorithm: {algorithm}\n  upstreams:\n{upstreams}");
    let lb = Lb::start(&body).await;
    let stop = Arc::new(AtomicBool::new(false));
    let log: Log = Arc::default();
    let tasks = load(&lb, stop.clone(), log.clone());

    let state = lb
        .wait_upstream("slow", "the slow upstream to be sidelined", |u| {
            u["sidelined"] == true
        })
        .await;
    let why = state["reason"].as_str().unwrap().to_string();
    assert!(why.starts_with("sidelined for latency"), "{why}");
    // Requests already sent to it finish; after that, none is sent.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let quiet_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (share, n) = slow_share(&log, quiet_from);
    assert!(n > 300, "too little traffic to judge: {n}");
    if share != 0.0 {
        // Say how: its state, and the events (sidelined / returned flips).
        let state = lb.state().await;
        panic!(
            "{algorithm}: {share} of {n} client requests reached the sidelined upstream\n\
             upstreams: {}\nevents: {}",
            state["upstreams"], state["events"]
        );
    }
    let probe = lb.upstream_state("slow").await["latency_ms"]["probe"]
        .as_f64()
        .unwrap();
    assert!(
        probe >= (FAST_MS * SIDELINED_TIMES) as f64 * 0.9,
        "probes see it slow: {probe} ms"
    );

    // Fast again: the probes see it, and it gets its share back.
    slow.set(&BehaviourPatch {
        latency_ms: Some(FAST_MS),
        ..Default::default()
    })
    .unwrap();
    let recovered_at = Instant::now();
    let (share, _) = slow_share(&log, quiet_from);
    assert_eq!(
        share, 0.0,
        "{algorithm}: no client request was spent finding out"
    );
    wait_for("the recovered upstream to regain its share", || {
        let log = log.clone();
        async move {
            let since = (Instant::now() - Duration::from_secs(1)).max(recovered_at);
            let (share, n) = slow_share(&log, since);
            n > 50 && share > 0.15
        }
    })
    .await;
    eprintln!(
        "{algorithm}: sidelined upstream back {:?} after it became fast",
        recovered_at.elapsed()
    );
    let events = lb.state().await["events"].to_string();
    assert!(events.contains("returned"), "{events}");
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_sidelines_a_slow_upstream_and_probes_bring_it_back() {
    sidelined_until_probes_show_it_fast("dynamic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_sidelines_a_slow_upstream_and_probes_bring_it_back() {
    sidelined_until_probes_show_it_fast("p2c").await;
}
