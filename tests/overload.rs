//! End to end: overload with `concurrency: { adaptive: true }`. An upstream
//! that serves only a few requests at once at full speed (beyond them it
//! shares its time, so more only queue) is offered more: its concurrency
//! limit, learned from its latency, falls toward that capacity, and the
//! requests beyond it get a fast 503 with `Retry-After` on a connection kept
//! open. One with room to spare sees its limit grow past where it starts.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use mock_backend::Behaviour;

/// How long a limit may take to be learned on a busy machine: a few floor
/// measurements (at 1, 3, 7… seconds).
const LEARN: Duration = Duration::from_secs(60);

/// What clients saw: (status, Retry-After, Connection, body) per answer.
type Seen = Arc<Mutex<Vec<(u16, Option<String>, Option<String>, String)>>>;

/// `clients` closed-loop clients until `stop`; after a 503 each pauses a
/// little, as a client honouring `Retry-After` would (though not a second).
fn load(
    lb: &Lb,
    clients: usize,
    stop: Arc<AtomicBool>,
    seen: Seen,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let (url, stop, seen) = (lb.url("/work"), stop.clone(), seen.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let resp = client.get(&url).send().await.expect("request");
                    let status = resp.status().as_u16();
                    let header = |n: &str| {
                        resp.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let (retry_after, connection) = (header("retry-after"), header("connection"));
                    let body = resp.text().await.unwrap_or_default();
                    seen.lock()
                        .unwrap()
                        .push((status, retry_after, connection, body));
                    if status == 503 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect()
}

/// Waits until upstream `name`'s concurrency limit satisfies `ok` on five
/// reads in a row, over a second: settled, not a floor measurement's
/// moment (the limit is pinned low for two tenths of a second then).
async fn wait_limit(lb: &Lb, name: &str, what: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let start = Instant::now();
    let mut in_a_row = 0;
    loop {
        let u = lb.upstream_state(name).await;
        let limit = u["concurrency_limit"].as_u64().expect("a limit");
        in_a_row = if ok(limit) { in_a_row + 1 } else { 0 };
        if in_a_row == 5 {
            return limit;
        }
        assert!(start.elapsed() < LEARN, "timed out waiting for {what}: {u}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn config(upstream: &mock_backend::MockServer) -> String {
    format!(
        "  algorithm: p2c\n  concurrency: {{ adaptive: true, queue_timeout: 10ms }}\n  upstreams:\n{}",
        upstreams_yaml(&[("a", upstream.addr(), 1)])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_limit_requests_get_a_fast_503_and_the_limit_falls_toward_the_capacity() {
    const CAPACITY: u64 = 4;
    let upstream = mock_with(
        "a",
        Behaviour {
            latency_ms: 50,
            capacity: CAPACITY,
            ..Default::default()
        },
    )
    .await;
    let lb = Lb::start(&config(&upstream)).await;
    let start = lb.upstream_state("a").await;
    assert_eq!(start["concurrency_limit"], 20, "{start}");
    let queue = &lb.state().await["pools"][0]["queue"];
    assert_eq!(queue["timeout_ms"], 10.0, "{queue}");

    // Four times what it serves at full speed.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::default();
    let clients = load(&lb, 4 * CAPACITY as usize, stop.clone(), seen.clone());
    let limit = wait_limit(&lb, "a", "the limit to fall toward the capacity", |l| {
        l <= 2 * CAPACITY
    })
    .await;
    // Answers from here on are under the learned limit.
    let from = seen.lock().unwrap().len();
    wait_for("refusals under the learned limit", || {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap()[from..]
                .iter()
                .filter(|s| s.0 == 503)
                .count()
                >= 20
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }

    let after = seen.lock().unwrap()[from..].to_vec();
    let served = after.iter().filter(|s| s.0 == 200).count();
    assert!(served > 0, "the upstream still serves at its capacity");
    for (status, retry_after, connection, body) in &after {
        assert!(*status == 200 || *status == 503, "status {status}: {body}");
        if *status == 503 {
            assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
            assert!(body.contains("concurrency limit"), "{body}");
            assert_ne!(
                connection.as_deref(),
                Some("close"),
                "refused on a kept connection"
            );
        }
    }
    let metrics = lb.metrics().await;
    let gauge = metric_value(
        &metrics,
        r#"hlb_upstream_concurrency_limit{pool="default",upstream="a"}"#,
    )
    .expect("hlb_upstream_concurrency_limit");
    assert!(
        gauge <= (2 * CAPACITY) as f64 + 1.0,
        "{gauge} (limit seen {limit})"
    );
    let refused = metric_value(&metrics, r#"hlb_overload_refused_total{pool="default"}"#)
        .expect("hlb_overload_refused_total");
    assert!(refused >= 20.0, "{refused}");
    assert!(metrics.contains(r#"hlb_queue_wait_seconds_count{pool="default"}"#));
    let queue = &lb.state().await["pools"][0]["queue"];
    assert!(queue["refused_total"].as_u64().unwrap() >= 20, "{queue}");
    let u = lb.upstream_state("a").await;
    assert!(
        u["reason"].as_str().unwrap().contains("concurrency limit"),
        "{u}"
    );
    let events = lb.state().await["events"].clone();
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "overload"
                && e["detail"].as_str().unwrap().contains("concurrency limit")),
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_grows_toward_a_capacity_above_where_it_starts() {
    let upstream = mock_with(
        "a",
        Behaviour {
            latency_ms: 100,
            capacity: 60,
            ..Default::default()
        },
    )
    .await;
    let lb = Lb::start(&config(&upstream)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::default();
    // More clients than the limit it starts with, fewer than the capacity.
    let clients = load(&lb, 45, stop.clone(), seen.clone());
    wait_limit(&lb, "a", "the limit to grow past 20", |l| l >= 28).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
}
