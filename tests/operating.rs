//! End to end: what an operator runs on: the JSON access log (one line per
//! request, moved away and reopened without a line lost), request ids and
//! trace context on their way upstream and back, and per-client rate limits.

mod common;

use common::*;

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_has_one_log_line_with_its_id_across_a_rotation() {
    let (a, b) = (mock("a").await, mock("b").await);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let lb = Lb::start(&format!(
        "  access_log: {{ path: \"{}\" }}\n  upstreams:\n{}",
        log.display(),
        upstreams_yaml(&[("a", a.addr(), 1), ("b", b.addr(), 1)])
    ))
    .await;
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    let send = |n: usize| {
        let (client, url) = (client.clone(), lb.url(&format!("/item/{n}?secret=x")));
        async move {
            let mut req = client.get(url);
            if n.is_multiple_of(2) {
                req = req.header("x-request-id", format!("client-{n}"));
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
            if n.is_multiple_of(2) {
                assert_eq!(id, format!("client-{n}"), "a client's id is kept");
            } else {
                let uuid = uuid::Uuid::parse_str(&id).expect("a generated id is a UUID");
                assert_eq!(uuid.get_version_num(), 7);
            }
            id
        }
    };
    for n in 0..40 {
        ids.push(send(n).await);
    }
    // logrotate's way: move the file, then SIGUSR1.
    wait_for("the first lines to be written", || {
        let log = log.clone();
        async move { lines(&log).len() == 40 }
    })
    .await;
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    lb.signal("USR1");
    for n in 40..80 {
        ids.push(send(n).await);
    }
    wait_for("every line after the rotation", || {
        let (log, rotated) = (log.clone(), rotated.clone());
        async move { lines(&rotated).len() + lines(&log).len() == 80 }
    })
    .await;
    let mut all = lines(&rotated);
    all.extend(lines(&log));
    let logged: Vec<&str> = all
        .iter()
        .map(|l| l["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(logged, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !lines(&log).is_empty(),
        "the new file is written after SIGUSR1"
    );
    let first = &all[1];
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/item/1", "without the query: {first}");
    assert_eq!(first["status"], 200);
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["client"], "127.0.0.1");
    assert!(
        first["upstream"] == "a" || first["upstream"] == "b",
        "{first}"
    );
    assert!(first["duration_ms"].as_f64().unwrap() >= first["upstream_ms"].as_f64().unwrap());
    assert!(first["bytes"].as_u64().unwrap() > 0);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    let metrics = lb.metrics().await;
    assert!(
        metrics.contains("hlb_access_log_dropped_total 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_and_trace_context_reach_the_upstream() {
    let a = mock("a").await;
    let lb = Lb::start(&format!(
        "  upstreams:\n{}",
        upstreams_yaml(&[("a", a.addr(), 1)])
    ))
    .await;
    let client = reqwest::Client::new();
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = client
        .get(lb.url("/_mock/echo"))
        .header("traceparent", parent)
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let seen: serde_json::Value = resp.json().await.unwrap();
    let headers = &seen["headers"];
    assert_eq!(
        headers["x-request-id"],
        id.as_str(),
        "the same id upstream: {seen}"
    );
    let sent = headers["traceparent"].as_str().unwrap();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(
        parts[1], "4bf92f3577b34da6a3ce929d0e0e4736",
        "same trace id"
    );
    assert_ne!(parts[2], "00f067aa0ba902b7", "this hop's own parent id");
    assert_eq!(parts[3], "01");

    // A malformed traceparent is not passed on; an unusable id is replaced.
    let seen: serde_json::Value = client
        .get(lb.url("/_mock/echo"))
        .header("traceparent", "garbage")
        .header("x-request-id", "x".repeat(300))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(seen["headers"].get("traceparent").is_none(), "{seen}");
    assert_eq!(seen["headers"]["x-request-id"].as_str().unwrap().len(), 36);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_429_while_another_is_served() {
    let a = mock("a").await;
    let lb = Lb::start(&format!(
        "  trusted_proxies: [\"127.0.0.1/32\"]\n  rate_limit: {{ requests_per_sec: 5, burst: 10 }}\n  upstreams:\n{}",
        upstreams_yaml(&[("a", a.addr(), 1)])
    ))
    .await;
    let client = reqwest::Client::new();
    let get = |who: &'static str| {
        client
            .get(lb.url("/"))
            .header("x-forwarded-for", who)
            .send()
    };
    let mut served = 0;
    let mut refused = None;
    for _ in 0..30 {
        let resp = get("203.0.113.7").await.unwrap();
        match resp.status().as_u16() {
            200 => served += 1,
            429 => refused = Some(resp),
            s => panic!("unexpected status {s}"),
        }
    }
    // Within one 2 s window the burst of 10 is all it gets (a window turning
    // over mid-run may admit a few more).
    assert!((10..=13).contains(&served), "served {served}");
    let refused = refused.expect("the client over its rate was refused");
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert!(refused.headers().contains_key("x-request-id"));
    // Another client is served meanwhile.
    assert_eq!(get("198.51.100.9").await.unwrap().status(), 200);
    let metrics = lb.metrics().await;
    let limited: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hlb_rate_limited_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert_eq!(limited, 30 - served);
    // Refused requests are not counted: it is served again once its window
    // has room.
    wait_for("the limited client to be served again", || async {
        get("203.0.113.7").await.unwrap().status() == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_carry_the_request_id_too() {
    let lb = Lb::start(&format!(
        "  limits: {{ max_body: 10 }}\n  upstreams:\n{}",
        upstreams_yaml(&[("gone", refused_addr(), 1)])
    ))
    .await;
    let client = reqwest::Client::new();
    let resp = client
        .get(lb.url("/"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-request-id"], "trace-me-42");
    // A request the balancer refuses itself (a body over lb.limits.max_body) as well.
    let resp = client
        .post(lb.url("/"))
        .header("x-request-id", "too-big-7")
        .body(vec![b'x'; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["x-request-id"], "too-big-7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_client_through_a_mapped_ipv6_listener_is_the_same_client() {
    // One client alternating between 127.0.0.1 and [::ffff:127.0.0.1] is
    // one client to the rate limit, not two.
    let a = mock("a").await;
    let (proxy, mapped, dashboard) = (free_port(), free_port(), free_port());
    let yaml = config_yaml(
        proxy,
        dashboard,
        &format!(
            "  rate_limit: {{ requests_per_sec: 5, burst: 10 }}\n  upstreams:\n{}",
            upstreams_yaml(&[("a", a.addr(), 1)])
        ),
    )
    .replace(
        &format!("listen: [\"127.0.0.1:{proxy}\"]"),
        &format!("listen: [\"127.0.0.1:{proxy}\", \"[::ffff:127.0.0.1]:{mapped}\"]"),
    );
    let lb = Lb::launch(&yaml, proxy, dashboard).await;
    // A connection per request: what is shared is the client's address.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let urls = [lb.url("/"), format!("http://[::ffff:127.0.0.1]:{mapped}/")];
    let mut served = 0;
    for i in 0..30 {
        let status = client.get(&urls[i % 2]).send().await.unwrap().status();
        match status.as_u16() {
            200 => served += 1,
            429 => {}
            s => panic!("unexpected status {s}"),
        }
    }
    // The burst of 10, and a window turning over mid-run may admit a few
    // more; two clients would have had 20.
    assert!((10..=13).contains(&served), "served {served}");
}
