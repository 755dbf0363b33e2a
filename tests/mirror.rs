//! End to end: an upstream slow on its real paths whose `/health` stays fast
//! (a service slowed by its database). Sidelined, it is measured with copies
//! of client requests, not its health checks: it stays out while slow, no
//! client request reaches it, no POST is ever copied, and it comes back once
//! the copies show it fast.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use mock_backend::{Behaviour, BehaviourPatch};

const FAST_MS: u64 = 5;
/// Well past the 5× line, so that a busy machine inflating the fast
/// upstreams' estimates does not bring it back within it.
const SLOW_MS: u64 = 100;

/// (when, the upstream that answered, whether it was a POST)
type Log = Arc<Mutex<Vec<(Instant, String, bool)>>>;

/// Closed-loop clients until `stop`: `gets` sending GET, `posts` sending POST.
fn load(
    lb: &Lb,
    gets: usize,
    posts: usize,
    stop: Arc<AtomicBool>,
    log: Log,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..gets + posts)
        .map(|i| {
            let post = i >= gets;
            let (url, stop, log) = (lb.url("/items?page=2"), stop.clone(), log.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let req = if post {
                        client.post(&url).body("order=1")
                    } else {
                        client.get(&url)
                    };
                    let resp = req.send().await.expect("request");
                    assert_eq!(resp.status(), 200);
                    let backend = backend_of(&resp).to_string();
                    log.lock().unwrap().push((Instant::now(), backend, post));
                }
            })
        })
        .collect()
}

/// Requests answered by `name` after `since`, of all answered after it.
fn answered_by(log: &Log, name: &str, since: Instant) -> (usize, usize) {
    let log = log.lock().unwrap();
    let window: Vec<_> = log.iter().filter(|(t, _, _)| *t >= since).collect();
    let by = window.iter().filter(|(_, b, _)| b == name).count();
    (by, window.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_with_a_fast_health_check_stays_out_until_copies_show_it_fast() {
    let ([_a, _b, slow], upstreams) = two_fast_one_slow(
        FAST_MS,
        Behaviour {
            latency_ms: SLOW_MS,
            health_latency: false,
            ..Default::default()
        },
    )
    .await;
    // Health checks every second: a fast `/health` would bring it back
    // within a few of them if they were the evidence.
    let body = format!(
        "  algorithm: dynamic\n  health_check: {{ interval: 1s }}\n  upstreams:\n{upstreams}"
    );
    let lb = Lb::start(&body).await;
    let stop = Arc::new(AtomicBool::new(false));
    let log: Log = Arc::default();
    let tasks = load(&lb, 6, 2, stop.clone(), log.clone());

    lb.wait_upstream("slow", "the slow upstream to be sidelined", |u| {
        u["sidelined"] == true
    })
    .await;
    // Requests already sent to it finish; after that none is sent, over
    // several rounds of health checks and copies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let quiet_from = Instant::now();
    let posts_before = slow.served("POST");
    let gets_before = slow.served("GET");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (reached, n) = answered_by(&log, "slow", quiet_from);
    let state = lb.upstream_state("slow").await;
    assert!(n > 300, "too little traffic to judge: {n}");
    assert_eq!(
        reached,
        0,
        "{reached} of {n} client requests reached the sidelined upstream: {state}\nevents: {}",
        lb.state().await["events"]
    );
    assert_eq!(state["sidelined"], true, "{state}");
    assert_eq!(state["measured_by"], "mirrored", "{state}");
    let mirrored = state["mirrored_total"].as_u64().unwrap();
    assert!(mirrored >= 2, "copies sent: {state}");
    assert!(
        state["reason"]
            .as_str()
            .unwrap()
            .contains("copies of client requests"),
        "{state}"
    );
    // The copies reached it as GETs (answers dropped: no client saw one);
    // no POST was ever copied.
    assert!(slow.served("GET") > gets_before, "no copy arrived");
    assert_eq!(slow.served("POST"), posts_before, "a POST was copied");
    let metrics = lb.metrics().await;
    assert!(
        metrics.contains("hlb_mirrored_total{pool=\"default\",upstream=\"slow\"}"),
        "{metrics}"
    );

    // Fast again: the copies show it, and it gets client requests back.
    slow.set(&BehaviourPatch {
        latency_ms: Some(FAST_MS),
        ..Default::default()
    })
    .unwrap();
    let recovered_at = Instant::now();
    wait_for(
        "the recovered upstream to get client requests again",
        || {
            let log = log.clone();
            async move {
                let since = (Instant::now() - Duration::from_secs(1)).max(recovered_at);
                let (by, n) = answered_by(&log, "slow", since);
                n > 50 && by as f64 / n as f64 > 0.15
            }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
}
