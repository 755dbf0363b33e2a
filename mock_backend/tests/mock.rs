//! The mock upstream over real sockets, and its command line.

use std::net::SocketAddr;
use std::process::Command;

use mock_backend::{Behaviour, MockServer};
use serde_json::{json, Value};

async fn start(behaviour: Behaviour) -> MockServer {
    MockServer::start(SocketAddr::from(([127, 0, 0, 1], 0)), "m1", behaviour)
        .await
        .unwrap()
}

#[tokio::test]
async fn answers_any_path_with_its_name() {
    let m = start(Behaviour::default()).await;
    let resp = reqwest::get(format!("http://{}/some/path", m.addr()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-backend"], "m1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"server": "m1", "port": m.addr().port(), "path": "/some/path"})
    );
}

#[tokio::test]
async fn behaviour_changes_live() {
    let m = start(Behaviour::default()).await;
    let base = format!("http://{}", m.addr());
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let resp = client
        .post(format!("{base}/_mock/config"))
        .json(&json!({"healthy": false, "error_rate": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        client
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        client
            .get(format!("{base}/x"))
            .send()
            .await
            .unwrap()
            .status(),
        500
    );
    let shown: Behaviour = client
        .get(format!("{base}/_mock/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!shown.healthy);
    assert_eq!(shown.error_rate, 1.0);

    // A bad value is refused and changes nothing.
    let resp = client
        .post(format!("{base}/_mock/config"))
        .json(&json!({"error_rate": 2.0, "healthy": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(!m.behaviour().healthy);
    let resp = client
        .post(format!("{base}/_mock/config"))
        .json(&json!({"latency": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn latency_is_applied() {
    let m = start(Behaviour {
        latency_ms: 150,
        ..Behaviour::default()
    })
    .await;
    let t = std::time::Instant::now();
    reqwest::get(format!("http://{}/", m.addr())).await.unwrap();
    // A lower bound only: the delay is a sleep, so it can never be shorter.
    assert!(t.elapsed() >= std::time::Duration::from_millis(150));
}

#[tokio::test]
async fn health_waits_its_own_latency_and_not_the_others() {
    let m = start(Behaviour {
        latency_ms: 5_000,
        health_latency: false,
        health_latency_ms: 150,
        ..Behaviour::default()
    })
    .await;
    let client = reqwest::Client::new();
    let t = std::time::Instant::now();
    let slow = client.get(format!("http://{}/", m.addr())).send();
    let health = client.get(format!("http://{}/health", m.addr())).send();
    // Both asked at once: /health answers first, after its own wait.
    tokio::select! {
        _ = slow => panic!("the slow path answered before /health"),
        h = health => assert_eq!(h.unwrap().status(), 200),
    }
    assert!(t.elapsed() >= std::time::Duration::from_millis(150));
}

#[tokio::test]
async fn beyond_its_capacity_each_request_in_flight_adds_its_latency() {
    let m = start(Behaviour {
        latency_ms: 500,
        capacity: 1,
        ..Behaviour::default()
    })
    .await;
    let url = format!("http://{}/", m.addr());
    let client = reqwest::Client::new();
    let t = std::time::Instant::now();
    // Three at once against a capacity of one: the last to arrive waits
    // 500 ms plus 500 ms for each of the two already in flight.
    let (a, b, c) = tokio::join!(
        client.get(&url).send(),
        client.get(&url).send(),
        client.get(&url).send()
    );
    for r in [a, b, c] {
        assert_eq!(r.unwrap().status(), 200);
    }
    let took = t.elapsed();
    assert!(took >= std::time::Duration::from_millis(1_500), "{took:?}");
    let config: Value = reqwest::get(format!("http://{}/_mock/config", m.addr()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["capacity"], 1);
}

#[tokio::test]
async fn kill_closes_the_port() {
    let m = start(Behaviour::default()).await;
    let addr = m.addr();
    m.kill();
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(refused);
}

#[test]
fn bad_flags_give_a_usage_error() {
    let bin = env!("CARGO_BIN_EXE_mock-backend");
    let out = Command::new(bin)
        .args(["9999", "--error-rate", "1.5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--error-rate") && err.contains("not between 0 and 1"),
        "{err}"
    );

    let out = Command::new(bin).arg("not-a-port").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid value 'not-a-port' for '<PORT>'"),
        "{err}"
    );
}
