//! End to end: sticky sessions by sealed cookie and by client IP.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;

use common::*;
use mock_backend::BehaviourPatch;

const SECRET: &str = "an-example-secret-of-32-bytes!!!";

fn cookie_body(upstreams: &str) -> String {
    format!(
        "  algorithm: round_robin\n  sticky: {{ mode: cookie, secret: \"{SECRET}\", max_age: 10m }}\n  health_check: {{ interval: 200ms, unhealthy_threshold: 1, healthy_threshold: 1 }}\n  upstreams:\n{upstreams}"
    )
}

/// The `HLB_STICKY=...` pair of a response's Set-Cookie, if any.
fn sticky_cookie(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("HLB_STICKY="))
        .map(|v| v.split(';').next().unwrap().to_string())
}

async fn get(client: &reqwest::Client, lb: &Lb, cookie: Option<&str>) -> reqwest::Response {
    let mut req = client.get(lb.url("/"));
    if let Some(c) = cookie {
        req = req.header("cookie", format!("theme=dark; {c}"));
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_pins_a_session_and_moves_it_when_its_upstream_fails() {
    let (a, b, c) = (mock("a").await, mock("b").await, mock("c").await);
    let ups = upstreams_yaml(&[("a", a.addr(), 1), ("b", b.addr(), 1), ("c", c.addr(), 1)]);
    let lb = Lb::start(&cookie_body(&ups)).await;
    let client = reqwest::Client::new();

    let first = get(&client, &lb, None).await;
    assert_eq!(first.status(), 200);
    let set = first.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.contains("; Path=/; Max-Age=600; HttpOnly; SameSite=Lax"),
        "{set}"
    );
    let cookie = sticky_cookie(&first).unwrap();
    let pinned = backend_of(&first);
    assert!(!cookie.contains("127.0.0.1"), "{cookie}");

    for _ in 0..30 {
        let resp = get(&client, &lb, Some(&cookie)).await;
        assert_eq!(backend_of(&resp), pinned);
        assert!(
            sticky_cookie(&resp).is_none(),
            "a valid cookie is not reissued"
        );
    }

    // The pinned upstream fails its health check: the session moves, with a new cookie.
    let pinned_mock = [&a, &b, &c]
        .into_iter()
        .find(|m| m.name() == pinned)
        .unwrap();
    pinned_mock
        .set(&BehaviourPatch {
            healthy: Some(false),
            ..Default::default()
        })
        .unwrap();
    wait_for("pinned upstream down", || async {
        lb.upstream_state(&pinned).await["health"] == "down"
    })
    .await;
    let moved = get(&client, &lb, Some(&cookie)).await;
    assert_eq!(moved.status(), 200);
    let new_home = backend_of(&moved);
    assert_ne!(new_home, pinned);
    let new_cookie = sticky_cookie(&moved).expect("a moved session gets a new cookie");
    for _ in 0..10 {
        assert_eq!(
            backend_of(&get(&client, &lb, Some(&new_cookie)).await),
            new_home
        );
    }

    let stats = lb.state().await["sticky_stats"].clone();
    assert_eq!(stats["new"], 1, "{stats}");
    assert_eq!(stats["moved"], 1, "{stats}");
    assert!(stats["hit"].as_u64().unwrap() >= 40, "{stats}");
    let metrics = lb.metrics().await;
    assert!(
        metrics.contains("hlb_sticky_total{result=\"moved\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_cookie_is_ignored_and_replaced() {
    let (a, b) = (mock("a").await, mock("b").await);
    let ups = upstreams_yaml(&[("a", a.addr(), 1), ("b", b.addr(), 1)]);
    let lb = Lb::start(&cookie_body(&ups)).await;
    let client = reqwest::Client::new();
    let cookie = sticky_cookie(&get(&client, &lb, None).await).unwrap();

    // Flip one character of the seal, then try garbage.
    let mut forged = cookie.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    for bad in [
        forged.as_str(),
        "HLB_STICKY=garbage",
        "HLB_STICKY=",
        "HLB_STICKY=a.b.c",
    ] {
        let resp = get(&client, &lb, Some(bad)).await;
        assert_eq!(resp.status(), 200, "{bad}");
        let fresh = sticky_cookie(&resp).expect("a fresh cookie");
        assert_ne!(fresh, bad);
    }
    assert_eq!(lb.state().await["sticky_stats"]["invalid"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_balancers_with_one_secret_share_sessions() {
    let (a, b, c) = (mock("a").await, mock("b").await, mock("c").await);
    let ups = upstreams_yaml(&[("a", a.addr(), 1), ("b", b.addr(), 1), ("c", c.addr(), 1)]);
    let lb1 = Lb::start(&cookie_body(&ups)).await;
    let lb2 = Lb::start(&cookie_body(&ups)).await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let first = get(&client, &lb1, None).await;
        let (cookie, home) = (sticky_cookie(&first).unwrap(), backend_of(&first));
        for _ in 0..5 {
            let resp = get(&client, &lb2, Some(&cookie)).await;
            assert_eq!(backend_of(&resp), home);
            assert!(sticky_cookie(&resp).is_none());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_mode_keeps_each_client_on_one_upstream() {
    let (a, b, c) = (mock("a").await, mock("b").await, mock("c").await);
    let body = format!(
        "  algorithm: round_robin\n  sticky: {{ mode: ip }}\n  upstreams:\n{}",
        upstreams_yaml(&[("a", a.addr(), 1), ("b", b.addr(), 1), ("c", c.addr(), 1)])
    );
    let lb = Lb::start(&body).await;
    let mut homes = HashSet::new();
    for last in 2..=17u8 {
        let ip = IpAddr::from([127, 0, 0, last]);
        let client = reqwest::Client::builder()
            .local_address(ip)
            .build()
            .unwrap();
        let mut seen = HashSet::new();
        for i in 0..8 {
            // A forged X-Forwarded-For from this untrusted peer changes nothing.
            let resp = client
                .get(lb.url("/"))
                .header("x-forwarded-for", format!("198.51.100.{i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            seen.insert(backend_of(&resp));
        }
        assert_eq!(seen.len(), 1, "client {ip} was spread over {seen:?}");
        homes.extend(seen);
    }
    assert!(homes.len() >= 2, "16 clients all on {homes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_is_bound_to_an_upstream_that_answers_a_server_error() {
    let a = mock_with(
        "a",
        mock_backend::Behaviour {
            error_rate: 1.0,
            ..Default::default()
        },
    )
    .await;
    let body = cookie_body(&upstreams_yaml(&[("a", a.addr(), 1)])).replace(
        "  upstreams:",
        "  circuit_breaker: { fail_threshold: 100 }\n  upstreams:",
    );
    let lb = Lb::start(&body).await;
    let client = reqwest::Client::new();
    let resp = get(&client, &lb, None).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(sticky_cookie(&resp), None, "a session was bound to a 500");
    a.set(&BehaviourPatch {
        error_rate: Some(0.0),
        ..Default::default()
    })
    .unwrap();
    let resp = get(&client, &lb, None).await;
    assert_eq!(resp.status(), 200);
    assert!(
        sticky_cookie(&resp).is_some(),
        "a good answer binds the session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_mode_counts_nothing_when_no_upstream_is_eligible() {
    let a = mock("a").await;
    let body = format!(
        "  sticky: {{ mode: ip }}\n  upstreams:\n{}",
        upstreams_yaml(&[("a", a.addr(), 1)])
    );
    let lb = Lb::start_with(&body, "  admin_token: t0ken\n").await;
    let client = reqwest::Client::new();
    assert_eq!(get(&client, &lb, None).await.status(), 200);
    let r = client
        .post(lb.url_dashboard("/api/upstreams/a/drain"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..3 {
        assert_eq!(get(&client, &lb, None).await.status(), 503);
    }
    let stats = lb.state().await["sticky_stats"].clone();
    assert_eq!(stats["hit"], 1, "{stats}");
    assert_eq!(
        stats["moved"], 0,
        "nothing moved, nothing was eligible: {stats}"
    );
}
