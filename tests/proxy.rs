//! End to end: the real binary in front of mock upstreams on real sockets.

mod common;

use std::collections::HashMap;

use common::*;

fn max_run(seq: &[String]) -> usize {
    let mut best = 0;
    let mut run = 0;
    for (i, x) in seq.iter().enumerate() {
        run = if i > 0 && &seq[i - 1] == x {
            run + 1
        } else {
            1
        };
        best = best.max(run);
    }
    best
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_shares_follow_weights_smoothly() {
    let (a, b, c) = (mock("a").await, mock("b").await, mock("c").await);
    let body = format!(
        "  algorithm: weighted\n  upstreams:\n{}",
        upstreams_yaml(&[("a", a.addr(), 5), ("b", b.addr(), 3), ("c", c.addr(), 2)])
    );
    let lb = Lb::start(&body).await;
    let client = reqwest::Client::new();
    let mut seq = Vec::new();
    for _ in 0..100 {
        let resp = client.get(lb.url("/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        seq.push(backend_of(&resp));
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in &seq {
        *counts.entry(s).or_default() += 1;
    }
    assert_eq!(counts.get("a"), Some(&50), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&30), "{counts:?}");
    assert_eq!(counts.get("c"), Some(&20), "{counts:?}");
    assert!(max_run(&seq) <= 2, "{seq:?}");

    let state = lb
        .wait_upstream("a", "50 requests counted", |u| u["requests_total"] == 50)
        .await;
    assert_eq!(state["base_weight"], 5);
    assert_eq!(state["addr"], a.addr().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_ignores_weights() {
    let (a, b) = (mock("a").await, mock("b").await);
    let body = format!(
        "  algorithm: round_robin\n  upstreams:\n{}",
        upstreams_yaml(&[("a", a.addr(), 9), ("b", b.addr(), 1)])
    );
    let lb = Lb::start(&body).await;
    let client = reqwest::Client::new();
    let mut seq = Vec::new();
    for _ in 0..10 {
        seq.push(backend_of(&client.get(lb.url("/")).send().await.unwrap()));
    }
    assert_eq!(seq.iter().filter(|s| *s == "a").count(), 5, "{seq:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_retried_on_another_upstream() {
    let (a, b) = (mock("a").await, mock("b").await);
    let dead = refused_addr();
    let body = format!(
        "  algorithm: weighted\n  retries: 1\n  upstreams:\n{}",
        upstreams_yaml(&[("dead", dead, 1), ("a", a.addr(), 1), ("b", b.addr(), 1)])
    );
    let lb = Lb::start(&body).await;
    let client = reqwest::Client::new();
    for i in 0..60 {
        let resp = client.get(lb.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        assert_ne!(backend_of(&resp), "");
    }
    let dead_state = lb.upstream_state("dead").await;
    assert_eq!(dead_state["requests_total"], 0);
    // Each refusal was retried; after three the breaker stops trying it.
    let retried = dead_state["retries_total"].as_u64().unwrap();
    assert!((1..=5).contains(&retried), "{dead_state}");
    assert_eq!(dead_state["breaker"], "open", "{dead_state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_counted_only_when_it_is_sent() {
    let b = mock("b").await;
    let body = format!(
        "  algorithm: weighted\n  retries: 1\n  circuit_breaker: {{ fail_threshold: 100 }}\n  upstreams:\n{}",
        upstreams_yaml(&[("dead", refused_addr(), 1), ("b", b.addr(), 1)])
    );
    let lb = Lb::start_with(&body, "  admin_token: t0ken\n").await;
    let client = reqwest::Client::new();
    let admin = |action: &'static str| {
        client
            .post(lb.url_dashboard(&format!("/api/upstreams/b/{action}")))
            .bearer_auth("t0ken")
            .send()
    };
    assert_eq!(admin("drain").await.unwrap().status(), 200);
    // dead refuses, and nothing else may take the request: no retry is sent.
    let resp = client.get(lb.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let dead = lb.upstream_state("dead").await;
    assert_eq!(dead["errors_total"], 1, "{dead}");
    assert_eq!(dead["retries_total"], 0, "{dead}");
    assert_eq!(admin("enable").await.unwrap().status(), 200);
    for i in 0..4 {
        let resp = client.get(lb.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(backend_of(&resp), "b");
    }
    // Every refusal since was retried on b, and counted once.
    let dead = lb.upstream_state("dead").await;
    let (errors, retries) = (
        dead["errors_total"].as_u64(),
        dead["retries_total"].as_u64(),
    );
    assert!(retries >= Some(1), "{dead}");
    assert_eq!(errors.map(|e| e - 1), retries, "{dead}");
    let m = lb.metrics().await;
    assert!(
        m.contains(&format!(
            "hlb_retries_total{{pool=\"default\",reason=\"connect\",upstream=\"dead\"}} {}",
            retries.unwrap()
        )),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_refusing_gives_a_503() {
    let body = format!(
        "  retries: 5\n  upstreams:\n{}",
        upstreams_yaml(&[("x", refused_addr(), 1), ("y", refused_addr(), 1)])
    );
    let lb = Lb::start(&body).await;
    let resp = reqwest::get(lb.url("/")).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let text = resp.text().await.unwrap();
    assert!(text.contains("no upstream available"), "{text}");
    assert!(
        !text.contains("127.0.0.1"),
        "error body leaks an address: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_and_host_kept() {
    // The mock answers /_mock/echo with the headers it was sent.
    let up = mock("echo").await;
    let body = format!(
        "  upstreams:\n{}",
        upstreams_yaml(&[("echo", up.addr(), 1)])
    );
    let lb = Lb::start(&body).await;
    let seen: serde_json::Value = reqwest::Client::new()
        .get(lb.url("/_mock/echo"))
        .header("host", "app.example")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-port", "8443")
        .header("x-real-ip", "203.0.113.7")
        .header("true-client-ip", "203.0.113.7")
        .header("forwarded", "for=203.0.113.7;host=evil.example")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let headers: HashMap<String, String> = serde_json::from_value(seen["headers"].clone()).unwrap();
    assert_eq!(headers["host"], "app.example");
    // 127.0.0.1 is not a trusted proxy: its chain is replaced, not extended.
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    // The other claims it made are replaced by what the balancer saw, or dropped.
    assert_eq!(headers["x-forwarded-host"], "app.example");
    assert_eq!(headers["x-real-ip"], "127.0.0.1");
    for dropped in ["x-forwarded-port", "true-client-ip", "forwarded"] {
        assert!(
            !headers.contains_key(dropped),
            "{dropped} passed: {headers:?}"
        );
    }
}

/// 1-based line of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn check_flag_reports_key_and_line() {
    let a = refused_addr();
    let bad = config_yaml(
        free_port(),
        free_port(),
        &format!(
            "  upstreams:\n{}",
            upstreams_yaml(&[("a", a, 1), ("b", a, 0)])
        ),
    );
    let line = line_of(&bad, "weight: 0");
    let out = check_config(&bad);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("lb.upstreams[1].weight: must be at least 1 (line {line})");
    assert!(stderr.contains(&expected), "{stderr}");

    let good = bad.replace("weight: 0", "weight: 2");
    let out = check_config(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_flag_refuses_unknown_keys_and_algorithms() {
    let base = config_yaml(
        free_port(),
        free_port(),
        &format!(
            "  algorithm: fastest\n  upstreams:\n{}",
            upstreams_yaml(&[("a", refused_addr(), 1)])
        ),
    );
    let out = check_config(&base);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("lb.algorithm: `fastest` is not one of"),
        "{stderr}"
    );
    let line = line_of(&base, "algorithm: fastest");
    assert!(stderr.contains(&format!("(line {line})")), "{stderr}");
}
