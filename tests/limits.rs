//! End to end: what one client can hold. Connection caps (overall and per
//! address), the whole-header deadline on the proxy, and the dashboard's own
//! limits, over real sockets from several loopback addresses.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection to `to` from the loopback address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::from(from), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the server closes `s` within `within` (EOF or reset on read).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => closed_within_rest(s, within).await,
        Err(_) => false,
    }
}

async fn closed_within_rest(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// One GET on a fresh connection from `from`; the status.
async fn get_from(from: [u8; 4], to: SocketAddr) -> u16 {
    let mut s = connect_from(from, to).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_header_is_cut_at_the_header_timeout() {
    let up = mock("up").await;
    let lb = Lb::start(&format!(
        "  limits: {{ header_timeout: 1s, keepalive_timeout: 60s }}\n  upstreams:\n{}",
        upstreams_yaml(&[("up", up.addr(), 1)])
    ))
    .await;
    let mut s = connect_from([127, 0, 0, 1], lb.proxy).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // A header line every 300 ms: each read is quick, the header never ends.
    let started = Instant::now();
    let mut cut = false;
    for i in 0..30 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if s.write_all(format!("X-Trickle-{i}: a\r\n").as_bytes())
            .await
            .is_err()
        {
            cut = true;
            break;
        }
        let mut buf = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "a trickling client held its connection for 9 s");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let m = lb.metrics().await;
    assert_eq!(
        metric_value(&m, "hlb_header_timeouts_total"),
        Some(1.0),
        "{m}"
    );
    // Everyone else is served.
    assert_eq!(get_from([127, 0, 0, 1], lb.proxy).await, 200);
}

/// Sends a GET on `s` without waiting for the answer.
async fn send_get(s: &mut TcpStream) {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_close_new_connections_at_once_and_spare_other_clients() {
    // Every answer takes 1.5 s, so connections with a request in flight are
    // busy for that long.
    let up = mock_with(
        "up",
        mock_backend::Behaviour {
            latency_ms: 1500,
            health_latency: false,
            ..Default::default()
        },
    )
    .await;
    let lb = Lb::start(&format!(
        "  limits: {{ max_connections: 12, max_connections_per_client: 4 }}\n  health_check: {{ interval: 200ms, timeout: 1s }}\n  upstreams:\n{}",
        upstreams_yaml(&[("up", up.addr(), 1)])
    ))
    .await;
    // One address takes its four places; its fifth is closed at once.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from([127, 0, 0, 2], lb.proxy).await);
    }
    let mut fifth = connect_from([127, 0, 0, 2], lb.proxy).await;
    assert!(closed_within(&mut fifth, Duration::from_secs(1)).await);
    // Twelve places, every one with a request in flight: the thirteenth
    // connection is closed at once, as nothing can be shed.
    for from in [[127, 0, 0, 4], [127, 0, 0, 5]] {
        for _ in 0..4 {
            held.push(connect_from(from, lb.proxy).await);
        }
    }
    for s in held.iter_mut() {
        send_get(s).await;
    }
    wait_for("twelve requests in flight", || async {
        lb.upstream_state("up").await["inflight"] == 12
    })
    .await;
    let mut over = connect_from([127, 0, 0, 6], lb.proxy).await;
    assert!(closed_within(&mut over, Duration::from_millis(500)).await);
    // At the cap, health checks still have descriptors.
    assert_eq!(lb.upstream_state("up").await["health"], "up");
    // Once answered, the twelve sit idle; after a second of idling, a
    // newcomer takes the place of the longest idle one instead of being
    // turned away (as nginx reuses idle keep-alive connections).
    wait_for("the twelve answered", || async {
        lb.upstream_state("up").await["inflight"] == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get_from([127, 0, 0, 6], lb.proxy).await, 200);
    let m = lb.metrics().await;
    for (reason, n) in [("per_client", 1), ("full", 1), ("shed", 1)] {
        let line =
            format!("hlb_connections_refused_total{{listener=\"proxy\",reason=\"{reason}\"}} {n}");
        assert!(m.contains(&line), "{line}\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_closes_idle_and_trickling_connections_and_caps_them() {
    let up = mock("up").await;
    let lb = Lb::start(&format!(
        "  limits: {{ header_timeout: 1s }}\n  upstreams:\n{}",
        upstreams_yaml(&[("up", up.addr(), 1)])
    ))
    .await;
    // An idle connection and a trickling one are both closed after the header
    // timeout.
    let mut idle = connect_from([127, 0, 0, 1], lb.dashboard).await;
    let mut trickle = connect_from([127, 0, 0, 1], lb.dashboard).await;
    trickle
        .write_all(b"GET /api/state HTTP/1.1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if trickle
            .write_all(format!("X-{i}: a\r\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
    }
    assert!(closed_within(&mut trickle, Duration::from_secs(1)).await);
    assert!(closed_within(&mut idle, Duration::from_secs(1)).await);
    assert!(started.elapsed() < Duration::from_secs(5));
    // One address holds at most 64 connections; the next is closed at once.
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(connect_from([127, 0, 0, 7], lb.dashboard).await);
    }
    let mut over = connect_from([127, 0, 0, 7], lb.dashboard).await;
    assert!(closed_within(&mut over, Duration::from_millis(500)).await);
    // Others still get the state.
    let r = reqwest::get(lb.url_dashboard("/api/state")).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_dashboard_sheds_its_longest_idle_connection_for_a_newcomer() {
    let up = mock("up").await;
    let lb = Lb::start(&format!(
        "  limits: {{ header_timeout: 60s }}\n  upstreams:\n{}",
        upstreams_yaml(&[("up", up.addr(), 1)])
    ))
    .await;
    // All 512 places taken by idle connections, 64 from each of 8 addresses.
    let mut held = Vec::new();
    for last in 10..18 {
        for _ in 0..64 {
            held.push(connect_from([127, 0, 0, last], lb.dashboard).await);
        }
    }
    // Once they have idled past the shedding age, a newcomer is served: an
    // idle one is closed to make room (without shedding, every newcomer would
    // be refused for the whole 60 s header timeout).
    let dashboard = lb.dashboard;
    wait_for(
        "a newcomer served while the dashboard is full",
        || async move {
            let mut s = connect_from([127, 0, 0, 1], dashboard).await;
            let _ = s
                .write_all(
                    b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                )
                .await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
            out.starts_with(b"HTTP/1.1 200")
        },
    )
    .await;
    let mut shed = 0;
    for s in &mut held {
        if closed_within(s, Duration::from_millis(1)).await {
            shed += 1;
        }
    }
    assert!(shed >= 1, "no idle connection was shed");
    let metrics = lb.metrics().await;
    let counted = metric_value(
        &metrics,
        "hlb_connections_refused_total{listener=\"dashboard\",reason=\"shed\"}",
    );
    assert!(counted >= Some(shed as f64), "{shed} shed: {metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_leaving_mid_header_are_counted_not_logged_as_errors() {
    let up = mock("up").await;
    let lb = Lb::start(&format!(
        "  upstreams:\n{}",
        upstreams_yaml(&[("up", up.addr(), 1)])
    ))
    .await;
    for _ in 0..20 {
        let mut s = connect_from([127, 0, 0, 1], lb.proxy).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Half: ")
            .await
            .unwrap();
        drop(s);
    }
    wait_for("twenty aborts counted", || async {
        lb.metrics()
            .await
            .contains("hlb_client_header_aborts_total 20")
    })
    .await;
    let log = lb.log();
    assert!(!log.contains("Fail to proxy"), "{log}");
    // The server keeps serving.
    assert_eq!(get_from([127, 0, 0, 1], lb.proxy).await, 200);
}
