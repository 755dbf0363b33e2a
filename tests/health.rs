//! End to end: active health checks, the circuit breaker and the fast 503, with
//! mock upstreams switched live.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mock_backend::BehaviourPatch;

const HEALTH: &str = "  health_check: { path: /health, interval: 200ms, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2 }\n";

async fn get_backend(client: &reqwest::Client, lb: &Lb) -> (u16, String) {
    let resp = client.get(lb.url("/")).send().await.unwrap();
    (resp.status().as_u16(), backend_of(&resp))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_check_takes_an_upstream_out_and_back() {
    let (a, b) = (mock("a").await, mock("b").await);
    let body = format!(
        "  algorithm: weighted\n{HEALTH}  upstreams:\n{}",
        upstreams_yaml(&[("a", a.addr(), 1), ("b", b.addr(), 1)])
    );
    let lb = Lb::start(&body).await;
    let client = reqwest::Client::new();

    b.set(&BehaviourPatch {
        healthy: Some(false),
        ..Default::default()
    })
    .unwrap();
    let started = Instant::now();
    // Leaves the rotation within interval × threshold plus a margin.
    let deadline = Duration::from_millis(200 * 2) + Duration::from_secs(3);
    let mut last_b = started;
    loop {
        let (status, backend) = get_backend(&client, &lb).await;
        assert_eq!(status, 200);
        if backend == "b" {
            last_b = Instant::now();
        }
        if lb.upstream_state("b").await["health"] == "down" {
            break;
        }
        assert!(started.elapsed() < deadline, "b never marked down");
    }
    eprintln!(
        "b left the rotation {:?} after its /health started failing",
        last_b - started
    );
    for _ in 0..40 {
        let (status, backend) = get_backend(&client, &lb).await;
        assert_eq!((status, backend.as_str()), (200, "a"));
    }

    b.set(&BehaviourPatch {
        healthy: Some(true),
        ..Default::default()
    })
    .unwrap();
    wait_for("b back in rotation", || async {
        get_backend(&client, &lb).await.1 == "b"
    })
    .await;
    let state = lb.state().await;
    let kinds: Vec<(&str, &str)> = state["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["detail"].as_str().unwrap()))
        .collect();
    assert!(
        kinds[0].0 == "health" && kinds[0].1.starts_with("up"),
        "{kinds:?}"
    );
    assert!(
        kinds[1].0 == "health" && kinds[1].1.starts_with("down"),
        "{kinds:?}"
    );
    let metrics = lb.metrics().await;
    assert!(
        metrics.contains("hlb_upstream_up{pool=\"default\",upstream=\"b\"} 1"),
        "{metrics}"
    );
}

/// Upstream a answers 200, b only 500; the breaker opens after 3 failures for
/// 500 ms, doubling up to 4 s.
async fn healthy_and_failing() -> (mock_backend::MockServer, mock_backend::MockServer, Lb) {
    let (a, b) = (mock("a").await, mock("b").await);
    b.set(&BehaviourPatch {
        error_rate: Some(1.0),
        ..Default::default()
    })
    .unwrap();
    let body = format!(
        "  algorithm: weighted\n  circuit_breaker: {{ fail_threshold: 3, open_time: 500ms, max_open_time: 4s, failure_status: [500, 502, 503, 504] }}\n  upstreams:\n{}",
        upstreams_yaml(&[("a", a.addr(), 1), ("b", b.addr(), 1)])
    );
    let lb = Lb::start(&body).await;
    (a, b, lb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_stops_traffic_to_a_failing_upstream_and_probes_it_back() {
    let (_a, b, lb) = healthy_and_failing().await;
    let client = reqwest::Client::new();

    // Two seconds of sequential traffic: b fails 3 times, opens, and is probed
    // after 0.5 s and again after a further 1 s (the open time doubles).
    let started = Instant::now();
    let (mut to_b, mut total) = (0, 0);
    while started.elapsed() < Duration::from_secs(2) {
        let (status, backend) = get_backend(&client, &lb).await;
        total += 1;
        if backend == "b" {
            to_b += 1;
            assert_eq!(status, 500);
        } else {
            assert_eq!(status, 200);
        }
    }
    eprintln!("{to_b} of {total} requests reached the failing upstream in 2 s");
    assert!(total > 50, "too few requests to judge: {total}");
    assert!((3..=6).contains(&to_b), "{to_b} requests reached b");
    let state = lb.upstream_state("b").await;
    assert_ne!(state["breaker"], "closed", "{state}");

    // b recovers: a half-open probe succeeds and traffic returns.
    b.set(&BehaviourPatch {
        error_rate: Some(0.0),
        ..Default::default()
    })
    .unwrap();
    wait_for("b to take traffic again", || async {
        get_backend(&client, &lb).await == (200, "b".to_string())
    })
    .await;
    // The probe's success is recorded once its response is done: wait for it.
    wait_for("b's breaker to close", || async {
        lb.upstream_state("b").await["breaker"] == "closed"
    })
    .await;
    let events = lb.state().await["events"].clone();
    let details: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "breaker")
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert!(details[0].starts_with("half_open → closed"), "{details:?}");
    assert!(
        details.last().unwrap().starts_with("closed → open"),
        "{details:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_upstream_costs_no_request() {
    let (a, b, c) = (mock("a").await, mock("b").await, mock("c").await);
    let body = format!(
        "  algorithm: weighted\n  retries: 2\n{HEALTH}  upstreams:\n{}",
        upstreams_yaml(&[("a", a.addr(), 1), ("b", b.addr(), 1), ("c", c.addr(), 1)])
    );
    let lb = Lb::start(&body).await;
    let client = reqwest::Client::new();
    for _ in 0..30 {
        assert_eq!(get_backend(&client, &lb).await.0, 200);
    }
    b.kill();
    for i in 0..150 {
        let (status, backend) = get_backend(&client, &lb).await;
        assert_eq!(status, 200, "request {i} after the kill");
        assert_ne!(backend, "b");
    }
    wait_for("b removed", || async {
        let s = lb.upstream_state("b").await;
        s["health"] == "down" || s["breaker"] == "open"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_down_gives_a_fast_503() {
    let (a, b) = (mock("a").await, mock("b").await);
    let body = format!(
        "{HEALTH}  upstreams:\n{}",
        upstreams_yaml(&[("a", a.addr(), 1), ("b", b.addr(), 1)])
    );
    let lb = Lb::start(&body).await;
    for m in [&a, &b] {
        m.set(&BehaviourPatch {
            healthy: Some(false),
            ..Default::default()
        })
        .unwrap();
    }
    wait_for("both down", || async {
        let s = lb.state().await;
        s["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["health"] == "down")
    })
    .await;
    let resp = reqwest::get(lb.url("/")).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert!(resp.text().await.unwrap().contains("no upstream available"));
    let metrics = lb.metrics().await;
    assert_eq!(
        metric_value(&metrics, "hlb_no_upstream_total"),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_lets_no_burst_through_under_concurrency() {
    let (_a, _b, lb) = healthy_and_failing().await;
    const CLIENTS: usize = 8;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let url = lb.url("/");
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let (mut to_b, mut total) = (0usize, 0usize);
            while started.elapsed() < Duration::from_secs(2) {
                let resp = client.get(&url).send().await.unwrap();
                total += 1;
                if backend_of(&resp) == "b" {
                    to_b += 1;
                }
            }
            (to_b, total)
        }));
    }
    let (mut to_b, mut total) = (0, 0);
    for t in tasks {
        let (b, n) = t.await.unwrap();
        to_b += b;
        total += n;
    }
    eprintln!("{to_b} of {total} concurrent requests reached the failing upstream in 2 s");
    // Requests already on their way when the breaker opened may still land, one
    // per client at most; after that only single probes.
    assert!(to_b <= 3 + CLIENTS + 2, "{to_b} requests reached b");
}

/// An application server named `name`: `/bad` answers `status`, anything else
/// 200, with `X-Backend: name`.
async fn app(name: &'static str, status: u16) -> std::net::SocketAddr {
    use axum::http::StatusCode;
    let router = axum::Router::new().fallback(move |uri: axum::http::Uri| async move {
        let code = if uri.path() == "/bad" {
            StatusCode::from_u16(status).unwrap()
        } else {
            StatusCode::OK
        };
        (code, [("x-backend", name)], "answer\n")
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

/// Sends `n` requests to `path`; returns the statuses seen.
async fn statuses(client: &reqwest::Client, lb: &Lb, path: &str, n: usize) -> Vec<u16> {
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        seen.push(
            client
                .get(lb.url(path))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_the_application_fails_does_not_open_the_breakers() {
    // Any application has a URL that answers 500; by default only gateway
    // errors (and no answer at all) count against an upstream.
    let (a, b) = (app("a", 500).await, app("b", 500).await);
    let body = format!(
        "  circuit_breaker: {{ fail_threshold: 2 }}\n  upstreams:\n{}",
        upstreams_yaml(&[("a", a, 1), ("b", b, 1)])
    );
    let lb = Lb::start(&body).await;
    let client = reqwest::Client::new();
    assert!(statuses(&client, &lb, "/bad", 20)
        .await
        .iter()
        .all(|s| *s == 500));
    assert!(statuses(&client, &lb, "/", 20)
        .await
        .iter()
        .all(|s| *s == 200));
    for name in ["a", "b"] {
        let u = lb.upstream_state(name).await;
        assert_eq!(u["breaker"], "closed", "{u}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_keeps_serving_when_breakers_would_take_every_upstream_out() {
    // A URL answering 502 everywhere opens every breaker; panic mode then
    // balances over all healthy upstreams instead of answering 503.
    let (a, b) = (app("a", 502).await, app("b", 502).await);
    let body = format!(
        "  algorithm: round_robin\n  retries: 0\n  circuit_breaker: {{ fail_threshold: 1, open_time: 30s, max_open_time: 60s }}\n  upstreams:\n{}",
        upstreams_yaml(&[("a", a, 1), ("b", b, 1)])
    );
    let lb = Lb::start(&body).await;
    let client = reqwest::Client::new();
    statuses(&client, &lb, "/bad", 4).await;
    lb.wait_upstream("a", "a's breaker open", |u| u["breaker"] == "open")
        .await;
    lb.wait_upstream("b", "b's breaker open", |u| u["breaker"] == "open")
        .await;
    wait_for("panic mode", || async {
        lb.state().await["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "panic")
    })
    .await;
    let served = statuses(&client, &lb, "/", 20).await;
    assert!(served.iter().all(|s| *s == 200), "{served:?}");
    let events = lb.state().await["events"].clone();
    let panic = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "panic")
        .unwrap();
    assert!(
        panic["detail"]
            .as_str()
            .unwrap()
            .starts_with("on: breakers and ejections leave 0 of 2"),
        "{panic}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_upstream_ramps_back_to_its_share_under_slow_start() {
    let (a, b) = (mock("a").await, mock("b").await);
    let body = format!(
        "  algorithm: weighted\n  slow_start: 6s\n{HEALTH}  upstreams:\n{}",
        upstreams_yaml(&[("a", a.addr(), 4), ("b", b.addr(), 4)])
    );
    let lb = Lb::start(&body).await;
    let patch = |healthy| BehaviourPatch {
        healthy: Some(healthy),
        ..Default::default()
    };
    b.set(&patch(false)).unwrap();
    lb.wait_upstream("b", "down", |u| u["health"] == "down")
        .await;
    b.set(&patch(true)).unwrap();
    // Back up, it takes a fraction of its weight at first, not all of it at
    // once (without slow start its effective weight is 4 the moment it is up) ...
    let up = lb
        .wait_upstream("b", "up on part of its weight", |u| {
            u["health"] == "up" && u["effective_weight"].as_f64() < Some(4.0)
        })
        .await;
    assert!(
        up["reason"].as_str().unwrap().starts_with("slow start"),
        "{up}"
    );
    // ... and all of it once the window has passed.
    lb.wait_upstream("b", "full weight", |u| u["effective_weight"] == 4.0)
        .await;
    let events = lb.state().await["events"].to_string();
    assert!(events.contains("ramping from 10%"), "{events}");
    assert!(events.contains("done: full weight"), "{events}");
}
