//! End to end: what the connection admission keeps. A process that never
//! reaches its cap keeps nothing per connection once it closes; and an HTTP/2
//! connection shed for a newcomer at the cap is told to go with a GOAWAY and
//! its streams in flight finish.

mod common;

use std::time::Duration;

use common::*;
use mock_backend::{Behaviour, BehaviourPatch};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

/// Opens `n` connections to `to`, 32 at a time, each from one of eight
/// loopback addresses and closed with a reset (so no port waits in
/// TIME_WAIT on either side).
async fn churn(to: std::net::SocketAddr, n: usize) {
    let per_task = n / 32;
    let tasks: Vec<_> = (0..32u8)
        .map(|t| {
            tokio::spawn(async move {
                for k in 0..per_task {
                    let from = [127, 0, 0, 10 + ((k + t as usize) % 8) as u8];
                    let socket = TcpSocket::new_v4().unwrap();
                    socket.bind((from, 0).into()).unwrap();
                    let Ok(mut s) = socket.connect(to).await else {
                        continue;
                    };
                    // A zero linger resets at once: nothing blocks on drop.
                    #[allow(deprecated)]
                    let _ = s.set_linger(Some(Duration::ZERO));
                    let _ = s.write_all(b"GET").await;
                    drop(s);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_over_200000_short_connections_below_the_cap() {
    let up = mock("up").await;
    let lb = Lb::start(&format!(
        "  upstreams:\n{}",
        upstreams_yaml(&[("up", up.addr(), 1)])
    ))
    .await;
    // Warm up the allocator and the runtime's pools first.
    churn(lb.proxy, 20_000).await;
    let before = rss_kib(lb.pid());
    churn(lb.proxy, 200_000).await;
    // Every connection has closed: wait for the gauge to say so.
    wait_for("every connection closed", || async {
        metric_value(&lb.metrics().await, "hlb_connections{listener=\"proxy\"}") == Some(0.0)
    })
    .await;
    let after = rss_kib(lb.pid());
    // A list entry kept per connection ever accepted costs ~70 B each:
    // 200,000 of them would add about 14 MiB.
    let grown = after.saturating_sub(before);
    assert!(
        grown < 5 * 1024,
        "RSS grew {grown} KiB over 200,000 closed connections ({before} → {after} KiB)"
    );
    assert_eq!(get_status(&lb).await, 200, "still serving");
}

async fn get_status(lb: &Lb) -> u16 {
    reqwest::get(lb.url("/")).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_shed_at_the_cap_gets_a_goaway_and_its_streams_finish() {
    let slow = mock_with(
        "slow",
        Behaviour {
            latency_ms: 0,
            ..Behaviour::default()
        },
    )
    .await;
    let lb = Lb::start(&format!(
        "  h2c: true\n  limits: {{ max_connections: 1, max_connections_per_client: 1 }}\n  upstreams:\n{}",
        upstreams_yaml(&[("slow", slow.addr(), 1)])
    ))
    .await;
    // Answers from now on take 3 s; health checks do not wait.
    slow.set(&BehaviourPatch {
        latency_ms: Some(3000),
        health_latency: Some(false),
        ..Default::default()
    })
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(lb.proxy).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/in-flight", lb.proxy))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let in_flight = tokio::spawn(async move {
        let resp = resp.await.map_err(|e| format!("response: {e}"))?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| format!("body: {e}"))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        Ok::<_, String>((status, String::from_utf8_lossy(&bytes).into_owned()))
    });
    // Past the shedding age (1 s), a newcomer at the cap takes its place.
    let newcomer = lb.proxy;
    wait_for("a newcomer served at the cap", || async move {
        // From another address: the per-client cap is 1 as well.
        let client = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        client
            .get(format!("http://{newcomer}/health"))
            .send()
            .await
            .is_ok()
    })
    .await;
    // The shed connection's stream in flight is answered in full.
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), in_flight)
        .await
        .expect("the in-flight stream ends")
        .unwrap()
        .expect("the in-flight stream finishes");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("/in-flight"), "{body}");
    // Then the connection closes (the GOAWAY took effect).
    tokio::time::timeout(Duration::from_secs(20), driver)
        .await
        .expect("the shed connection closes")
        .unwrap()
        .ok();
    let shed = metric_value(
        &lb.metrics().await,
        "hlb_connections_refused_total{listener=\"proxy\",reason=\"shed\"}",
    );
    assert!(shed >= Some(1.0));
}
