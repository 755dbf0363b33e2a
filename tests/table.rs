//! End to end: the upstream table replaced at run time, under load, through
//! the admin API: an upstream added, one removed with requests in flight, a
//! weight changed, the removed one added back. No request fails.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::*;
use mock_backend::Behaviour;
use serde_json::json;

const TOKEN: &str = "t0ken";

/// One request as a client saw it: the phase of the test when it was sent
/// and when it was answered, its status and the upstream that answered.
#[derive(Debug, Clone)]
struct Seen {
    sent: u64,
    done: u64,
    status: u16,
    backend: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_table_is_replaced_under_load_without_a_failed_request() {
    // a is slow, so that requests are in flight on it when it is removed.
    let slow = Behaviour {
        latency_ms: 400,
        ..Default::default()
    };
    let (a, b, c) = (mock_with("a", slow).await, mock("b").await, mock("c").await);
    let body = format!(
        // Quick checks: an upstream added at run time serves once they pass.
        "  algorithm: round_robin\n  health_check: {{ interval: 200ms, healthy_threshold: 2 }}\n  upstreams:\n{}",
        upstreams_yaml(&[("a", a.addr(), 1), ("b", b.addr(), 1)])
    );
    let lb = Arc::new(Lb::start_with(&body, &format!("  admin_token: {TOKEN}\n")).await);
    let phase = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::new();

    // Eight clients, each bounded in count and time.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (lb, phase, stop, client) =
                (lb.clone(), phase.clone(), stop.clone(), client.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let end = Instant::now() + DEADLINE;
                while !stop.load(Ordering::Relaxed) && Instant::now() < end && seen.len() < 5_000 {
                    let sent = phase.load(Ordering::SeqCst);
                    let (status, backend) = match client.get(lb.url("/")).send().await {
                        Ok(r) => (r.status().as_u16(), backend_of(&r)),
                        Err(e) => (0, e.to_string()),
                    };
                    let done = phase.load(Ordering::SeqCst);
                    seen.push(Seen {
                        sent,
                        done,
                        status,
                        backend,
                    });
                }
                seen
            })
        })
        .collect();

    let admin = |method: reqwest::Method, path: &str| {
        client
            .request(method, lb.url_dashboard(path))
            .bearer_auth(TOKEN)
    };
    let served = |name: &'static str| {
        let lb = lb.clone();
        move || {
            let lb = lb.clone();
            async move { lb.upstream_state(name).await["requests_total"].as_u64() > Some(0) }
        }
    };
    wait_for("a and b to serve", {
        let (sa, sb) = (served("a"), served("b"));
        move || {
            let (sa, sb) = (sa.clone(), sb.clone());
            async move { sa().await && sb().await }
        }
    })
    .await;

    // 1: c joins.
    let r = admin(reqwest::Method::POST, "/api/upstreams")
        .json(&json!({"name": "c", "addr": c.addr().to_string(), "weight": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    phase.store(1, Ordering::SeqCst);
    wait_for("c to serve", served("c")).await;

    // 2: a leaves while requests are in flight on it.
    lb.wait_upstream("a", "requests in flight", |u| {
        u["inflight"].as_i64() > Some(0)
    })
    .await;
    let r = admin(reqwest::Method::DELETE, "/api/upstreams/a")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    phase.store(2, Ordering::SeqCst);
    let names = |s: serde_json::Value| -> Vec<String> {
        s["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(lb.state().await), ["b", "c"]);

    // 3: b's weight changes: a replacement that keeps every upstream's state.
    let b_before = lb.upstream_state("b").await["requests_total"]
        .as_u64()
        .unwrap();
    let r = admin(reqwest::Method::PUT, "/api/upstreams/b/weight")
        .json(&json!({"weight": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    phase.store(3, Ordering::SeqCst);
    let b_after = lb.upstream_state("b").await;
    assert_eq!(b_after["base_weight"], 3);
    assert!(
        b_after["requests_total"].as_u64().unwrap() >= b_before,
        "b kept its counters"
    );

    // 4: a comes back under its name.
    phase.store(4, Ordering::SeqCst);
    let r = admin(reqwest::Method::POST, "/api/upstreams")
        .json(&json!({"name": "a", "addr": a.addr().to_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = admin(reqwest::Method::POST, "/api/upstreams")
        .json(&json!({"name": "a", "addr": a.addr().to_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "a name is taken once");
    wait_for("a to serve again", served("a")).await;

    stop.store(true, Ordering::Relaxed);
    let mut seen: Vec<Seen> = Vec::new();
    for c in clients {
        seen.extend(c.await.unwrap());
    }
    let failed: Vec<&Seen> = seen.iter().filter(|s| s.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)]
    );
    // Requests sent after a left and answered before it came back never
    // reached it ...
    let strays: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.sent >= 2 && s.done < 4 && s.backend == "a")
        .collect();
    assert!(strays.is_empty(), "{strays:?}");
    // ... while those already on it when it left finished normally.
    assert!(
        seen.iter()
            .any(|s| s.sent < 2 && s.done >= 2 && s.backend == "a"),
        "no request was in flight on a across its removal"
    );
    assert!(seen.iter().any(|s| s.sent >= 1 && s.backend == "c"));
    assert!(seen.iter().any(|s| s.sent >= 4 && s.backend == "a"));

    // Events name each change and its source.
    let events = lb.state().await["events"].clone();
    let text = events.to_string();
    assert!(text.contains("added by admin"), "{text}");
    assert!(text.contains("removed by admin"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_added_at_run_time_serves_only_once_its_checks_pass() {
    let a = mock("a").await;
    let sick = mock_with(
        "late",
        Behaviour {
            healthy: false,
            ..Default::default()
        },
    )
    .await;
    let body = format!(
        "  algorithm: round_robin\n  health_check: {{ interval: 200ms, healthy_threshold: 2 }}\n  upstreams:\n{}",
        upstreams_yaml(&[("a", a.addr(), 1)])
    );
    let lb = Lb::start_with(&body, &format!("  admin_token: {TOKEN}\n")).await;
    let client = reqwest::Client::new();
    let r = client
        .post(lb.url_dashboard("/api/upstreams"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "late", "addr": sick.addr().to_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Failing its checks, it never gets a request (Pingora alone would take
    // it as healthy until its checks had failed twice).
    assert_eq!(lb.upstream_state("late").await["health"], "down");
    for _ in 0..40 {
        let r = client.get(lb.url("/")).send().await.unwrap();
        assert_eq!(backend_of(&r), "a");
    }
    // Once they pass, it takes its share.
    sick.set(&mock_backend::BehaviourPatch {
        healthy: Some(true),
        ..Default::default()
    })
    .unwrap();
    let lb = &lb;
    wait_for("the late upstream to serve", || async move {
        let r = reqwest::get(lb.url("/")).await.unwrap();
        backend_of(&r) == "late"
    })
    .await;
    let events = lb.state().await["events"].to_string();
    assert!(
        events.contains("passed its first 2 health checks"),
        "{events}"
    );
}
