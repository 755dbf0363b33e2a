//! End to end: failure-rate ejection. An upstream failing half its requests
//! (not in runs, so the breaker alone would not catch it) is ejected and gets
//! no requests; never more than `max_ejection_percent` of the upstreams are
//! out at once.

mod common;

use common::*;
use mock_backend::Behaviour;

fn lb_body(upstreams: &[(&str, std::net::SocketAddr, u32)]) -> String {
    format!(
        "  algorithm: round_robin\n  retries: 0\n  circuit_breaker: {{ fail_threshold: 1000, failure_status: [500] }}\n  \
         outlier: {{ failure_rate: 0.3, min_requests: 10, interval: 500ms, ejection_time: 5s, max_ejection_percent: 50 }}\n  \
         upstreams:\n{}",
        upstreams_yaml(upstreams)
    )
}

/// hybrid-lb over upstreams a, b and c of weight 1.
async fn three(
    a: &mock_backend::MockServer,
    b: &mock_backend::MockServer,
    c: &mock_backend::MockServer,
) -> Lb {
    Lb::start(&lb_body(&[
        ("a", a.addr(), 1),
        ("b", b.addr(), 1),
        ("c", c.addr(), 1),
    ]))
    .await
}

async fn flaky(name: &str) -> mock_backend::MockServer {
    mock_with(
        name,
        Behaviour {
            error_rate: 0.5,
            ..Default::default()
        },
    )
    .await
}

/// How many upstreams `/metrics` shows ejected.
fn ejected(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("hlb_upstream_ejected{") && l.ends_with(" 1"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_failing_half_its_requests_is_ejected_and_gets_none() {
    let (a, b, c) = (mock("a").await, mock("b").await, flaky("c").await);
    let lb = three(&a, &b, &c).await;
    let client = reqwest::Client::new();
    let lb_ref = &lb;
    let client_ref = &client;
    wait_for("c ejected", || async move {
        for _ in 0..10 {
            let _ = client_ref.get(lb_ref.url("/")).send().await;
        }
        ejected(&lb_ref.metrics().await)
            == ["hlb_upstream_ejected{pool=\"default\",upstream=\"c\"} 1"]
    })
    .await;
    for _ in 0..30 {
        let r = client.get(lb.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200, "a request went to the ejected upstream");
        assert_ne!(backend_of(&r), "c");
    }
    let c_state = lb.upstream_state("c").await;
    assert!(
        c_state["reason"].as_str().unwrap().contains("ejected"),
        "{c_state}"
    );
    let events = lb.state().await["events"].to_string();
    assert!(events.contains("ejected for 5s"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_than_the_allowed_share_is_ejected_at_once() {
    let (a, b, c) = (mock("a").await, flaky("b").await, flaky("c").await);
    let lb = three(&a, &b, &c).await;
    let client = reqwest::Client::new();
    let (lb_ref, client_ref) = (&lb, &client);
    wait_for("one of the two ejected", || async move {
        for _ in 0..10 {
            let _ = client_ref.get(lb_ref.url("/")).send().await;
        }
        ejected(&lb_ref.metrics().await).len() == 1
    })
    .await;
    // Both keep failing half their requests, but 50% of three is one.
    for _ in 0..10 {
        for _ in 0..10 {
            let _ = client.get(lb.url("/")).send().await;
        }
        assert!(ejected(&lb.metrics().await).len() <= 1);
    }
}
