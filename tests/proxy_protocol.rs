//! End to end: the PROXY protocol on the listeners (`lb.proxy_protocol`). A
//! trusted peer's v1 or v2 header names the client: the upstream's
//! `X-Forwarded-For`, the access log and admission see that client, across
//! the connection's keep-alive requests, with real senders (curl
//! `--haproxy-protocol`, HAProxy `send-proxy-v2`). A header from a peer not
//! trusted, and a trusted peer's connection without a valid one, are closed.

mod common;

use std::net::SocketAddr;

use common::*;
use ppp::v2;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ECHO: &str = "GET /_mock/echo HTTP/1.1\r\nHost: site.test\r\n\r\n";
const ECHO_LAST: &str = "GET /_mock/echo HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n";

/// A v2 header from `client` to `to` (LOCAL when `client` is None).
fn v2_header(client: Option<&str>, to: SocketAddr) -> Vec<u8> {
    match client {
        Some(c) => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (c.parse::<SocketAddr>().unwrap(), to),
        ),
        None => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        ),
    }
    .build()
    .unwrap()
}

/// Sends `bytes` on a new connection to `addr` and reads until it closes.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "the connection was neither answered nor closed"
    );
    String::from_utf8_lossy(&out).into_owned()
}

/// The `X-Forwarded-For` values the upstream was sent, one per answer.
fn forwarded_for(answers: &str) -> Vec<String> {
    answers
        .split("\"x-forwarded-for\":\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap_or("").to_string())
        .collect()
}

async fn lb_trusting(trusted: &str, extra: &str) -> (Lb, mock_backend::MockServer) {
    let up = mock("up").await;
    let lb = Lb::start(&format!(
        "  proxy_protocol: {{ trusted: [\"{trusted}\"] }}\n{extra}  upstreams:\n{}",
        upstreams_yaml(&[("up", up.addr(), 1)])
    ))
    .await;
    (lb, up)
}

async fn proxy_metric(lb: &Lb, result: &str) -> f64 {
    metric_value(
        &lb.metrics().await,
        &format!("hlb_proxy_protocol_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_peers_header_names_the_client_for_every_request_on_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let (lb, _up) = lb_trusting(
        "127.0.0.0/8",
        &format!("  access_log: {{ path: \"{}\" }}\n", log.display()),
    )
    .await;
    let addr = lb.proxy;

    // v1, two requests on the connection after one header.
    let v1 = format!(
        "PROXY TCP4 203.0.113.7 127.0.0.1 51234 {}\r\n{ECHO}{ECHO_LAST}",
        addr.port()
    );
    let answers = exchange(addr, v1.as_bytes()).await;
    assert_eq!(
        forwarded_for(&answers),
        ["203.0.113.7", "203.0.113.7"],
        "{answers}"
    );

    // v1 in two writes, cut just after a separator.
    let mut split = tokio::net::TcpStream::connect(addr).await.unwrap();
    let whole = format!(
        "PROXY TCP4 203.0.113.9 127.0.0.1 51234 {}\r\n{ECHO_LAST}",
        addr.port()
    );
    split.write_all(&whole.as_bytes()[..39]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    split.write_all(&whole.as_bytes()[39..]).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, split.read_to_end(&mut out)).await;
    let answers = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(forwarded_for(&answers), ["203.0.113.9"], "{answers}");

    // v2, IPv6 client.
    let mut v2 = v2_header(
        Some("[2001:db8::7]:4000"),
        "[2001:db8::1]:443".parse().unwrap(),
    );
    v2.extend_from_slice(ECHO_LAST.as_bytes());
    let answers = exchange(addr, &v2).await;
    assert_eq!(forwarded_for(&answers), ["2001:db8::7"], "{answers}");

    // v2 LOCAL (a load balancer's own health check): the peer is the client.
    let mut local = v2_header(None, addr);
    local.extend_from_slice(ECHO_LAST.as_bytes());
    let answers = exchange(addr, &local).await;
    assert_eq!(forwarded_for(&answers), ["127.0.0.1"], "{answers}");

    assert_eq!(proxy_metric(&lb, "carried").await, 3.0);
    assert_eq!(proxy_metric(&lb, "local").await, 1.0);
    wait_for("the access log's lines", || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.matches("\"client\":\"203.0.113.7\"").count() == 2
                && text.contains("\"client\":\"2001:db8::7\"")
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_haproxy_send_it_as_real_clients() {
    let (lb, _up) = lb_trusting("127.0.0.0/8", "").await;
    let addr = lb.proxy;

    // curl's v1 header carries the connection's own addresses.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--haproxy-protocol"])
        .arg(format!("http://{addr}/_mock/echo"))
        .output()
        .await
        .expect("curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(forwarded_for(&body), ["127.0.0.1"], "{body}");

    // HAProxy in front with send-proxy-v2; the client connects to it from
    // 127.0.0.5, which only the header can tell hybrid-lb.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "defaults\n  mode http\n  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\n\
             frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n\
             backend b\n  server lb {addr} send-proxy-v2\n"
        ),
    )
    .unwrap();
    let haproxy = ["/usr/sbin/haproxy", "haproxy"]
        .into_iter()
        .find(|p| std::process::Command::new(p).arg("-v").output().is_ok())
        .expect("haproxy is installed (.ci/run installs it)");
    let mut child = tokio::process::Command::new(haproxy)
        .arg("-f")
        .arg(&cfg)
        .arg("-db")
        .kill_on_drop(true)
        .spawn()
        .expect("haproxy");
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for("HAProxy to listen", || async move {
        tokio::net::TcpStream::connect(front).await.is_ok()
    })
    .await;
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 5]))
        .build()
        .unwrap();
    let body = client
        .get(format!("http://{front}/_mock/echo"))
        .send()
        .await
        .expect("through HAProxy")
        .text()
        .await
        .unwrap();
    assert_eq!(forwarded_for(&body), ["127.0.0.5"], "{body}");
    assert!(proxy_metric(&lb, "carried").await >= 2.0);
    let _ = child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_from_an_untrusted_peer_is_closed_and_its_plain_requests_served() {
    let (lb, _up) = lb_trusting("10.0.0.0/8", "").await;
    let addr = lb.proxy;
    let spoof = format!(
        "PROXY TCP4 203.0.113.7 127.0.0.1 1 {}\r\n{ECHO_LAST}",
        addr.port()
    );
    assert_eq!(
        exchange(addr, spoof.as_bytes()).await,
        "",
        "closed unanswered"
    );
    let mut v2 = v2_header(Some("203.0.113.7:1"), addr);
    v2.extend_from_slice(ECHO_LAST.as_bytes());
    assert_eq!(exchange(addr, &v2).await, "", "closed unanswered");
    let plain = exchange(addr, ECHO_LAST.as_bytes()).await;
    assert_eq!(forwarded_for(&plain), ["127.0.0.1"], "{plain}");
    assert_eq!(proxy_metric(&lb, "untrusted").await, 2.0);
    assert_eq!(proxy_metric(&lb, "plain").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_peer_without_a_valid_header_is_closed() {
    let (lb, _up) = lb_trusting("127.0.0.1", "  limits: { header_timeout: 1s }\n").await;
    let addr = lb.proxy;
    // No header at all; a malformed one; one cut off and left.
    assert_eq!(exchange(addr, ECHO_LAST.as_bytes()).await, "");
    assert_eq!(
        exchange(addr, b"PROXY TCP4 nowhere 127.0.0.1 1 2\r\n").await,
        ""
    );
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PROXY TCP4 203.0.113.7 ").await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
    assert!(
        closed.is_ok() && out.is_empty(),
        "cut at the header timeout"
    );
    // A header trickled a byte at a time is cut at the same deadline: the
    // header must be whole within it, however it arrives.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    s.write_all(b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let cut = loop {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if s.write_all(b"\x01").await.is_err() {
            break true;
        }
        match tokio::time::timeout(std::time::Duration::from_millis(1), s.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            _ => {}
        }
        if started.elapsed() > DEADLINE {
            break false;
        }
    };
    assert!(cut, "a trickled header outlived the deadline");
    assert_eq!(proxy_metric(&lb, "invalid").await, 2.0);
    assert_eq!(proxy_metric(&lb, "late").await, 2.0);
    // The balancer goes on serving trusted peers that send one.
    let ok = format!(
        "PROXY TCP4 203.0.113.8 127.0.0.1 1 {}\r\n{ECHO_LAST}",
        addr.port()
    );
    let answers = exchange(addr, ok.as_bytes()).await;
    assert_eq!(forwarded_for(&answers), ["203.0.113.8"], "{answers}");
}
