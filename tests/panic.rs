//! End to end: panic mode is decided the moment breakers change, not on a
//! timer, so no request meets our own 503 while upstreams still answer; and
//! it ends, with an event, once the upstreams recover and their breakers
//! close through probes.

mod common;

use common::*;
use mock_backend::BehaviourPatch;

fn failing(rate: f64) -> BehaviourPatch {
    BehaviourPatch {
        error_rate: Some(rate),
        ..Default::default()
    }
}

fn panic_events(state: &serde_json::Value) -> Vec<String> {
    state["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "panic")
        .map(|e| e["detail"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_starts_within_one_request_and_ends_once_upstreams_recover() {
    let mocks = [mock("a").await, mock("b").await, mock("c").await];
    for m in &mocks {
        m.set(&failing(1.0)).unwrap();
    }
    let body = format!(
        "  algorithm: round_robin\n  retries: 0\n  \
         circuit_breaker: {{ fail_threshold: 1, open_time: 1s, max_open_time: 1s, failure_status: [500] }}\n  \
         outlier: {{ max_ejection_percent: 0 }}\n  upstreams:\n{}",
        upstreams_yaml(&[
            ("a", mocks[0].addr(), 1),
            ("b", mocks[1].addr(), 1),
            ("c", mocks[2].addr(), 1)
        ])
    );
    let lb = Lb::start(&body).await;
    let client = reqwest::Client::new();
    // Every answer fails: the first opens one breaker, the second another,
    // which leaves one of three eligible. From then on panic mode must
    // already hold: each request still reaches an upstream (its 500), never
    // our own 503.
    for i in 0..30 {
        let r = client.get(lb.url("/item")).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, 500, "request {i}: {text}");
        assert!(text.contains("\"server\""), "request {i}: {text}");
    }
    let state = lb.state().await;
    assert_eq!(state["panic"], true, "{state}");
    let events = panic_events(&state);
    assert!(events.iter().any(|e| e.starts_with("on: ")), "{events:?}");
    let metrics = lb.metrics().await;
    assert_eq!(
        metric_value(&metrics, "hlb_no_upstream_total"),
        Some(0.0),
        "{metrics}"
    );
    // Healed, the breakers' probes close them, and panic mode ends.
    for m in &mocks {
        m.set(&failing(0.0)).unwrap();
    }
    wait_for("panic mode to end and every breaker to close", || async {
        let _ = client.get(lb.url("/item")).send().await;
        let state = lb.state().await;
        state["panic"] == false
            && state["upstreams"]
                .as_array()
                .unwrap()
                .iter()
                .all(|u| u["breaker"] == "closed")
    })
    .await;
    let events = panic_events(&lb.state().await);
    assert!(events[0].starts_with("off: "), "{events:?}");
    // Out of panic, a breaker opens again as it should: one upstream failing
    // everything is taken out and gets no more than its one failure.
    mocks[2].set(&failing(1.0)).unwrap();
    let started = std::time::Instant::now();
    let mut failed = 0;
    for _ in 0..60 {
        let r = client.get(lb.url("/item")).send().await.unwrap();
        failed += u64::from(r.status() != 200);
    }
    // Its first failure opens the breaker; after that only its probe, once
    // a second, reaches it.
    let allowed = 2 + started.elapsed().as_secs();
    assert!(
        failed <= allowed,
        "{failed} of 60 failed in {:?}: c was not taken out",
        started.elapsed()
    );
    assert_eq!(lb.state().await["panic"], false);
}
