//! End to end: HTTP/2 clients that open streams and never read their answers
//! (a flow-control window of 0) cannot pin the balancer's memory or the
//! upstream's connections: each stream is cut after `limits.send_timeout`,
//! one client's streams count against its cap, and another client is served
//! meanwhile.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use common::*;

/// An upstream answering 100 KB to everything.
async fn big() -> SocketAddr {
    let body = "x".repeat(100 * 1024);
    let app = Router::new().fallback(move || {
        let body = body.clone();
        async move { body }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// One h2c connection that opens `streams` requests and never reads a byte
/// of their bodies; kept open while the returned handles live.
async fn stall(to: SocketAddr, streams: usize) -> Vec<Box<dyn std::any::Any + Send>> {
    let tcp = tokio::net::TcpStream::connect(to).await.unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let mut held: Vec<Box<dyn std::any::Any + Send>> = vec![Box::new(driver)];
    let mut send = send;
    for i in 0..streams {
        let Ok(ready) = tokio::time::timeout(Duration::from_secs(5), send.clone().ready()).await
        else {
            break;
        };
        let Ok(mut ready) = ready else { break };
        let req = http::Request::get(format!("http://{to}/big/{i}"))
            .body(())
            .unwrap();
        match ready.send_request(req, true) {
            Ok((resp, _)) => held.push(Box::new(resp)),
            Err(_) => break,
        }
        send = ready;
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_that_stop_reading_are_cut_and_other_clients_are_served() {
    let up = big().await;
    let lb = Lb::start(&format!(
        "  h2c: true\n  limits: {{ send_timeout: 1s, max_connections_per_client: 150 }}\n  \
         circuit_breaker: {{ fail_threshold: 100000 }}\n  upstreams:\n{}",
        upstreams_yaml(&[("big", up, 1)])
    ))
    .await;
    let before = rss_kib(lb.pid());
    // 200 streams from one address, two connections of 100.
    let (a, b) = tokio::join!(stall(lb.proxy, 100), stall(lb.proxy, 100));
    let inflight = "hlb_upstream_inflight{pool=\"default\",upstream=\"big\"}";
    // The streams reach the upstream, and at most the cap of them at once.
    let most = AtomicU64::new(0);
    let (lb_ref, most_ref) = (&lb, &most);
    wait_for("stalled streams holding the upstream", || async move {
        let held = metric_value(&lb_ref.metrics().await, inflight).unwrap_or(0.0);
        most_ref.fetch_max(held as u64, Ordering::Relaxed);
        held > 0.0
    })
    .await;
    // Another client is served meanwhile.
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = other.get(lb.url("/other")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 100 * 1024);
    // Each stalled stream is cut after the send timeout, though its client
    // keeps the connections open: the upstream is let go.
    wait_for("every stalled stream cut", || async move {
        let held = metric_value(&lb_ref.metrics().await, inflight).unwrap_or(-1.0);
        most_ref.fetch_max(held.max(0.0) as u64, Ordering::Relaxed);
        held == 0.0
    })
    .await;
    // (The other client's one request may be in flight beside them.)
    let most = most.load(Ordering::Relaxed);
    assert!(
        most <= 151,
        "{most} in flight: one client over its cap of 150"
    );
    let metrics = lb.metrics().await;
    let refused = metric_value(&metrics, "hlb_client_requests_refused_total");
    assert!(refused >= Some(50.0), "{metrics}");
    let after = rss_kib(lb.pid());
    assert!(
        after < before + 40 * 1024,
        "RSS {before} → {after} KiB after the stalled streams were cut"
    );
    drop((a, b));
    let r = other.get(lb.url("/after")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
