//! End to end: the dashboard sidecar's JSON, stream, metrics, admin API and page.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

const TOKEN: &str = "test-admin-token-123";

async fn two_upstreams(
    algorithm: &str,
) -> (mock_backend::MockServer, mock_backend::MockServer, Lb) {
    let (a, b) = (mock("a").await, mock("b").await);
    let body = format!(
        "  algorithm: {algorithm}\n  upstreams:\n{}",
        upstreams_yaml(&[("a", a.addr(), 3), ("b", b.addr(), 1)])
    );
    let lb = Lb::start_with(&body, &format!("  admin_token: {TOKEN}\n")).await;
    (a, b, lb)
}

async fn send(client: &reqwest::Client, lb: &Lb, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let resp = client.get(lb.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        *counts.entry(backend_of(&resp)).or_default() += 1;
    }
    counts
}

/// `name{labels} value` lines of the Prometheus text format, by series.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut series = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        series.insert(key.to_string(), value);
    }
    series
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_metrics_count_the_traffic_sent() {
    let (_a, _b, lb) = two_upstreams("weighted").await;
    let client = reqwest::Client::new();
    let counts = send(&client, &lb, 40).await;
    assert_eq!((counts["a"], counts["b"]), (30, 10));

    lb.wait_upstream("a", "counters", |u| {
        u["requests_total"] == 30 && u["inflight"] == 0
    })
    .await;
    lb.wait_upstream("b", "counters", |u| {
        u["requests_total"] == 10 && u["inflight"] == 0
    })
    .await;
    let state = lb.state().await;
    assert_eq!(state["algorithm"], "weighted");
    assert_eq!(state["sticky"], "off");
    let a = &state["upstreams"][0];
    assert_eq!(a["name"], "a");
    assert_eq!(a["health"], "up");
    assert_eq!(a["breaker"], "closed");
    assert_eq!(a["drained"], false);
    assert_eq!(a["base_weight"], 3);
    assert_eq!(a["effective_weight"], 3.0);
    assert_eq!(a["requests_total"], 30);
    assert_eq!(a["inflight"], 0);
    assert!(a["latency_ms"]["ewma"].as_f64().unwrap() > 0.0, "{a}");
    assert!(a["reason"].as_str().unwrap().contains("75%"), "{a}");
    assert_eq!(state["upstreams"][1]["requests_total"], 10);

    // Rates and percentiles appear once the ticker has seen the traffic.
    wait_for("rates", || async {
        let s = lb.state().await;
        s["upstreams"][0]["rps"].as_f64().unwrap() > 0.0
            && s["upstreams"][0]["latency_ms"]["p95"].is_number()
    })
    .await;

    let text = lb.metrics().await;
    let m = parse_metrics(&text);
    assert_eq!(
        m["hlb_requests_total{code=\"200\",pool=\"default\",upstream=\"a\"}"],
        30.0
    );
    assert_eq!(
        m["hlb_requests_total{code=\"200\",pool=\"default\",upstream=\"b\"}"],
        10.0
    );
    assert_eq!(
        m["hlb_request_duration_seconds_count{pool=\"default\",upstream=\"a\"}"],
        30.0
    );
    assert_eq!(
        m["hlb_upstream_weight{kind=\"base\",pool=\"default\",upstream=\"a\"}"],
        3.0
    );
    assert_eq!(m["hlb_upstream_up{pool=\"default\",upstream=\"b\"}"], 1.0);
    assert_eq!(
        m["hlb_upstream_inflight{pool=\"default\",upstream=\"a\"}"],
        0.0
    );
    // The EWMA gauge follows at the next weights tick.
    wait_for("the EWMA gauge", || async {
        let text = lb.metrics().await;
        parse_metrics(&text)
            .get("hlb_upstream_latency_ewma_seconds{pool=\"default\",upstream=\"a\"}")
            .is_some_and(|v| *v > 0.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_delivers_snapshots() {
    let (_a, _b, lb) = two_upstreams("weighted").await;
    let resp = reqwest::get(lb.url_dashboard("/api/stream")).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let mut snapshots = Vec::new();
    let mut points = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while snapshots.len() < 2 || points.len() < 2 {
        let chunk = tokio::time::timeout_at(deadline.into(), body.next())
            .await
            .expect("snapshots within the deadline")
            .expect("stream open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                let value = serde_json::from_str::<Value>(data).unwrap();
                if event.contains("event: snapshot") {
                    snapshots.push(value);
                } else {
                    assert!(event.contains("event: point"), "{event}");
                    points.push(value);
                }
            }
        }
    }
    assert_eq!(snapshots[0]["upstreams"].as_array().unwrap().len(), 2);
    assert!(snapshots[1]["time"].as_f64() > snapshots[0]["time"].as_f64());
    // Each tick's history point has the same time and names as its snapshot.
    assert_eq!(points[0]["time"], snapshots[0]["time"]);
    assert_eq!(points[0]["upstreams"][1]["name"], "b");

    let history: Vec<Value> = reqwest::get(lb.url_dashboard("/api/history"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!history.is_empty());
    assert_eq!(history[0]["upstreams"][0]["name"], "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_answers() {
    let (_a, _b, lb) = two_upstreams("weighted").await;
    let client = reqwest::Client::new();
    let url = |p: &str| lb.url_dashboard(p);
    let status = |r: reqwest::Response| r.status().as_u16();

    // No token, wrong token, wrong scheme: 401.
    assert_eq!(
        status(
            client
                .post(url("/api/upstreams/b/drain"))
                .send()
                .await
                .unwrap()
        ),
        401
    );
    assert_eq!(
        status(
            client
                .post(url("/api/upstreams/b/drain"))
                .bearer_auth("nope")
                .send()
                .await
                .unwrap()
        ),
        401
    );
    assert_eq!(
        status(
            client
                .post(url("/api/upstreams/b/drain"))
                .header("authorization", TOKEN)
                .send()
                .await
                .unwrap()
        ),
        401
    );
    // Unknown upstream: 404. Bad bodies: 400.
    assert_eq!(
        status(
            client
                .post(url("/api/upstreams/zz/drain"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
        ),
        404
    );
    for bad in [
        "not json",
        "{\"weight\": 0}",
        "{\"weight\": -3}",
        "{\"weight\": \"x\"}",
        "{\"w\": 2}",
    ] {
        let r = client
            .put(url("/api/upstreams/b/weight"))
            .bearer_auth(TOKEN)
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(status(r), 400, "{bad}");
    }
    // Nothing changed so far.
    assert_eq!(lb.upstream_state("b").await["drained"], false);

    // Drain: 200 with the new state, and b gets no traffic.
    let r = client
        .post(url("/api/upstreams/b/drain"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["drained"], true);
    assert_eq!(b["effective_weight"], 0.0);
    assert_eq!(send(&client, &lb, 20).await.get("b"), None);

    // Enable, then weight 3: shares become 3:3.
    let r = client
        .post(url("/api/upstreams/b/enable"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .put(url("/api/upstreams/b/weight"))
        .bearer_auth(TOKEN)
        .json(&json!({"weight": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["base_weight"], 3);
    let counts = send(&client, &lb, 60).await;
    assert_eq!((counts["a"], counts["b"]), (30, 30), "{counts:?}");

    let events = lb.state().await["events"].clone();
    let details: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "admin")
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert_eq!(
        details,
        [
            "weight 1 → 3 by 127.0.0.1",
            "enabled by 127.0.0.1",
            "drained by 127.0.0.1"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_is_refused_without_a_configured_token() {
    let a = mock("a").await;
    let lb = Lb::start(&format!(
        "  upstreams:\n{}",
        upstreams_yaml(&[("a", a.addr(), 1)])
    ))
    .await;
    let r = reqwest::Client::new()
        .post(lb.url_dashboard("/api/upstreams/a/drain"))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("dashboard.admin_token"));
    // No CORS: a page on another origin cannot read the answers.
    let r = reqwest::Client::new()
        .get(lb.url_dashboard("/api/state"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_works_in_a_real_browser() {
    assert!(
        Path::new("/usr/bin/chromium").exists() || std::env::var_os("CHROMIUM").is_some(),
        "the browser test needs Chromium: apt-get install -y chromium (or set CHROMIUM)"
    );
    let (a, b, lb) = two_upstreams("dynamic").await;
    // Steady traffic while the page is open.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (url, stop) = (lb.url("/"), stop.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let _ = client.get(&url).send().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let screenshot = std::env::var("HLB_SCREENSHOT").ok();
    let url = lb.url_dashboard("/");
    let mut args = vec![url.as_str(), TOKEN, "b"];
    args.extend(screenshot.as_deref());
    browser_script("browser.mjs", &args, Duration::from_secs(90)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    // The drain clicked in the page took b out of rotation.
    assert_eq!(lb.upstream_state("b").await["drained"], true);
    let client = reqwest::Client::new();
    assert_eq!(send(&client, &lb, 20).await.get("b"), None);
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebinding_page_cannot_read_the_dashboard() {
    let a = mock("a").await;
    let body = format!("  upstreams:\n{}", upstreams_yaml(&[("a", a.addr(), 1)]));
    let lb = Lb::start_with(&body, "  hosts: [lb.internal]\n").await;
    let client = reqwest::Client::new();
    let as_host = |host: &'static str| {
        client
            .get(lb.url_dashboard("/api/state"))
            .header("host", host)
            .send()
    };
    assert_eq!(as_host("evil.example").await.unwrap().status(), 421);
    assert_eq!(as_host("evil.example:5000").await.unwrap().status(), 421);
    assert_eq!(as_host("lb.internal:5000").await.unwrap().status(), 200);
    assert_eq!(as_host("localhost").await.unwrap().status(), 200);
    // Its own address, as a browser opening it sends.
    assert_eq!(
        reqwest::get(lb.url_dashboard("/metrics"))
            .await
            .unwrap()
            .status(),
        200
    );
}

/// A hybrid-lb running the demo: three in-process demo upstreams on free
/// ports, `dynamic`, and the demo's own traffic.
async fn demo_lb() -> Lb {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let upstreams: String = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "    - {{ name: s{}, addr: \"127.0.0.1:{p}\", weight: 1 }}\n",
                i + 1
            )
        })
        .collect();
    let backends: String = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("    - {{ name: s{}, port: {p}, latency_ms: 5 }}\n", i + 1))
        .collect();
    let (proxy, dashboard) = (free_port(), free_port());
    let yaml = format!(
        "{}demo:\n  backends:\n{backends}  traffic_rps: 100\n",
        config_yaml(
            proxy,
            dashboard,
            &format!("  algorithm: dynamic\n  upstreams:\n{upstreams}")
        )
    );
    Lb::launch(&yaml, proxy, dashboard).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_controls_change_a_demo_upstream_and_only_by_json() {
    let lb = demo_lb().await;
    let client = reqwest::Client::new();
    let post = |path: &str, json: bool| {
        let mut req = client.post(lb.url_dashboard(path));
        if json {
            req = req.header("content-type", "application/json").body("{}");
        }
        req.send()
    };
    assert_eq!(
        post("/api/demo/s1/slow", false).await.unwrap().status(),
        415
    );
    assert_eq!(post("/api/demo/s9/slow", true).await.unwrap().status(), 404);
    assert_eq!(post("/api/demo/s1/fast", true).await.unwrap().status(), 400);
    assert_eq!(
        post("/api/demo/s1/unhealthy", true).await.unwrap().status(),
        200
    );
    lb.wait_upstream("s1", "the health checks to take s1 out", |u| {
        u["health"] == "down"
    })
    .await;
    let state = lb.state().await;
    assert_eq!(
        state["demo"][0],
        json!({ "name": "s1", "action": "unhealthy" })
    );
    assert!(state["events"]
        .to_string()
        .contains("made unhealthy by the dashboard"));
    assert_eq!(
        post("/api/demo/s1/normal", true).await.unwrap().status(),
        200
    );
    lb.wait_upstream("s1", "s1 back", |u| u["health"] == "up")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_controls_move_the_charts_in_a_real_browser() {
    let lb = demo_lb().await;
    let url = lb.url_dashboard("/");
    browser_script("demo.mjs", &[&url, "s2"], Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_500s_show_as_clients_saw_them_beside_the_breakers_count() {
    // 500 is not in failure_status: the breaker does not count it, but the
    // clients got it, and the page says so.
    let bad = mock_with(
        "bad",
        mock_backend::Behaviour {
            error_rate: 1.0,
            ..Default::default()
        },
    )
    .await;
    let lb = Lb::start(&format!(
        "  retries: 0\n  upstreams:\n{}",
        upstreams_yaml(&[("bad", bad.addr(), 1)])
    ))
    .await;
    let lb_ref = &lb;
    wait_for("the 5xx rate on the dashboard", || async move {
        for _ in 0..5 {
            let r = reqwest::get(lb_ref.url("/")).await.unwrap();
            assert_eq!(r.status(), 500);
        }
        let state = lb_ref.state().await;
        let u = &state["upstreams"][0];
        state["clients"]["error_rate"].as_f64() == Some(1.0)
            && u["server_error_rate"].as_f64() == Some(1.0)
            && u["error_rate"].as_f64() == Some(0.0)
    })
    .await;
}
