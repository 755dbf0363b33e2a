//! End to end: retries on failed answers (`retry_on`) within the budget
//! (`retry_budget`): an idempotent request answered with a listed status is
//! tried on another upstream, a POST never is, and when every upstream fails
//! the retries stay a small share of the requests.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::Router;
use common::*;

/// An upstream answering `status` to everything but `/health`, counting the
/// requests it gets.
async fn counting(status: u16) -> (SocketAddr, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let app = Router::new().fallback(move |uri: axum::http::Uri| {
        let counter = counter.clone();
        async move {
            if uri.path() == "/health" {
                return (StatusCode::OK, "ok");
            }
            counter.fetch_add(1, Ordering::SeqCst);
            (StatusCode::from_u16(status).unwrap(), "answer")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, hits)
}

/// Retries on 500, nothing else in the way: no breaker, no ejection.
fn body(extra: &str, upstreams: &[(&str, SocketAddr, u32)]) -> String {
    format!(
        "  algorithm: round_robin\n{extra}  retry_on: [connect, reset, 500]\n  \
         circuit_breaker: {{ fail_threshold: 100000, failure_status: [500] }}\n  \
         outlier: {{ max_ejection_percent: 0 }}\n  upstreams:\n{}",
        upstreams_yaml(upstreams)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_answer_is_retried_elsewhere_for_a_get_and_never_for_a_post() {
    let (bad, bad_hits) = counting(500).await;
    let (good, good_hits) = counting(200).await;
    let lb = Lb::start(&body(
        "  retries: 1\n",
        &[("bad", bad, 1), ("good", good, 1)],
    ))
    .await;
    let client = reqwest::Client::new();
    for _ in 0..40 {
        let r = client.get(lb.url("/item")).send().await.unwrap();
        assert_eq!(r.status(), 200, "a GET was not retried past the 500");
    }
    assert!(
        bad_hits.load(Ordering::SeqCst) >= 10,
        "the failing upstream was never tried"
    );
    // 100 POSTs reach the upstreams exactly 100 times; those the failing one
    // answers are answered 500.
    let before = bad_hits.load(Ordering::SeqCst) + good_hits.load(Ordering::SeqCst);
    let mut failed = 0;
    for _ in 0..100 {
        let r = client
            .post(lb.url("/order"))
            .body("x")
            .send()
            .await
            .unwrap();
        if r.status() == 500 {
            failed += 1;
        }
    }
    let after = bad_hits.load(Ordering::SeqCst) + good_hits.load(Ordering::SeqCst);
    assert_eq!(after - before, 100, "a POST was sent twice");
    assert!(failed > 0, "no POST met the failing upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_upstream_fails_retries_stay_within_the_budget() {
    let mut ups = Vec::new();
    let mut counters = Vec::new();
    for _ in 0..4 {
        let (addr, hits) = counting(500).await;
        ups.push(addr);
        counters.push(hits);
    }
    let names = ["a", "b", "c", "d"];
    let list: Vec<(&str, SocketAddr, u32)> =
        names.iter().zip(&ups).map(|(n, a)| (*n, *a, 1)).collect();
    let lb = Lb::start(&body(
        "  retries: 3\n  retry_budget: { ratio: 0.2, min_per_sec: 1 }\n",
        &list,
    ))
    .await;
    let client = reqwest::Client::new();
    for _ in 0..600 {
        let r = client.get(lb.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 500);
    }
    let attempts: u64 = counters.iter().map(|c| c.load(Ordering::SeqCst)).sum();
    // Without a budget: 4 attempts each, 2,400. Within it: 20% of the
    // requests plus 10 in reserve over any 10 s.
    assert!(
        (600..=600 + 120 + 10 + 20).contains(&attempts),
        "{attempts} attempts for 600 requests"
    );
    let metrics = lb.metrics().await;
    let exhausted = metric_value(&metrics, "hlb_retry_budget_exhausted_total");
    assert!(exhausted > Some(0.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_503_with_nowhere_left_to_go_reaches_the_client_as_the_upstreams_own() {
    // b is drained: when a answers 503, no eligible upstream is left to
    // retry on, so the client gets a's own answer, not ours, and no retry
    // budget is spent.
    let (a, a_hits) = counting(503).await;
    let (b, b_hits) = counting(200).await;
    let body = format!(
        "  algorithm: round_robin\n  retries: 2\n  retry_on: [connect, reset, 503]\n  \
         circuit_breaker: {{ fail_threshold: 100000, failure_status: [500] }}\n  \
         outlier: {{ max_ejection_percent: 0 }}\n  upstreams:\n{}",
        upstreams_yaml(&[("a", a, 1), ("b", b, 1)])
    );
    let lb = Lb::start_with(&body, "  admin_token: t0ken\n").await;
    let client = reqwest::Client::new();
    let drained = client
        .post(lb.url_dashboard("/api/upstreams/b/drain"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(drained.status(), 200);
    for i in 0..10 {
        let r = client.get(lb.url("/item")).send().await.unwrap();
        assert_eq!(r.status(), 503, "request {i}");
        assert_eq!(
            r.text().await.unwrap(),
            "answer",
            "request {i}: a's own body"
        );
    }
    assert_eq!(a_hits.load(Ordering::SeqCst), 10);
    assert_eq!(b_hits.load(Ordering::SeqCst), 0);
    let metrics = lb.metrics().await;
    for series in ["hlb_no_upstream_total", "hlb_retry_budget_exhausted_total"] {
        assert_eq!(metric_value(&metrics, series), Some(0.0), "{metrics}");
    }
}
