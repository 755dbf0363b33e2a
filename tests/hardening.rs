//! End to end over raw sockets: malformed and oversized requests, slow clients,
//! misbehaving upstreams, hop-by-hop headers.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Router;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An upstream that counts requests and echoes their headers as JSON, adding
/// hop-by-hop headers of its own to the response.
async fn echo_upstream() -> (SocketAddr, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    // The body is read whole before the answer, as an application would, so
    // the answer never races its own request body.
    let app = Router::new().fallback(
        move |uri: axum::http::Uri, headers: HeaderMap, _body: axum::body::Bytes| {
            let counter = counter.clone();
            async move {
                if uri.path() != "/health" {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                let map: HashMap<String, String> = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect();
                (
                    [
                        ("keep-alive", "timeout=5"),
                        ("x-private-hop", "secret"),
                        ("connection", "x-private-hop"),
                    ],
                    axum::Json(map),
                )
                    .into_response()
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, hits)
}

/// A hand-written upstream on an ephemeral port: `serve` handles each
/// accepted connection, for misbehaviour no real server library produces.
async fn raw_upstream<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s));
        }
    });
    addr
}

/// Sends raw bytes and reads until the server closes (or 5 s pass): the answer
/// and whether the connection was closed.
fn raw(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).to_string(), closed)
}

fn status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn lb_with_echo(extra: &str) -> (Lb, Arc<AtomicU64>) {
    let (addr, hits) = echo_upstream().await;
    let body = format!(
        "{extra}  timeouts: {{ connect: 500ms, read: 1s }}\n  upstreams:\n{}",
        upstreams_yaml(&[("echo", addr, 1)])
    );
    (Lb::start(&body).await, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_4xx_close_and_never_reach_the_upstream() {
    let (lb, hits) = lb_with_echo("  limits: { max_header_bytes: 4KiB, max_body: 1KiB }\n").await;
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8000)
    );
    let big_body = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n{}",
        "b".repeat(2000)
    );
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("garbage request line", b"GARBAGE\r\n\r\n".to_vec(), &[400]),
        ("unknown HTTP version", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(), &[400, 505]),
        ("bad header syntax", b"GET / HTTP/1.1\r\nHost x\r\n\r\n".to_vec(), &[400]),
        ("invalid Content-Length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(), &[400]),
        ("two Content-Lengths", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello".to_vec(), &[400]),
        (
            "Content-Length and Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            &[400],
        ),
        ("unknown Transfer-Encoding", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n".to_vec(), &[400, 501]),
        ("oversized header", big_header.into_bytes(), &[431, 400]),
        ("declared body over the limit", big_body.into_bytes(), &[413]),
        ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), &[400]),
        ("empty Host", b"GET / HTTP/1.1\r\nHost: \r\n\r\n".to_vec(), &[400]),
        ("list-valued Host", b"GET / HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n".to_vec(), &[400]),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n".to_vec(), &[400]),
        ("non-ASCII Host", b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9.example\r\n\r\n".to_vec(), &[400]),
        ("Host port out of range", b"GET / HTTP/1.1\r\nHost: a.example:70000\r\n\r\n".to_vec(), &[400]),
    ];
    for (what, bytes, expected) in cases {
        let (answer, closed) = raw(lb.proxy, &bytes);
        assert!(
            expected.contains(&status(&answer)),
            "{what}: got {answer:?}"
        );
        assert!(closed, "{what}: connection left open");
        assert!(
            !answer.contains("127.0.0.1"),
            "{what}: answer names an address"
        );
        assert_eq!(
            hits.load(Ordering::Relaxed),
            0,
            "{what} reached the upstream"
        );
    }
    assert_eq!(
        hits.load(Ordering::Relaxed),
        0,
        "a bad request reached the upstream"
    );

    // A chunked body that grows past the limit is cut off with 413.
    let mut chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(format!("200\r\n{}\r\n", "c".repeat(512)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (answer, closed) = raw(lb.proxy, &chunked);
    assert_eq!(status(&answer), 413, "{answer:?}");
    assert!(closed);

    // And the process still serves.
    let (answer, _) = raw(
        lb.proxy,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&answer), 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unterminated_header_is_refused_at_the_cap_not_buffered() {
    let (lb, hits) =
        lb_with_echo("  limits: { max_header_bytes: 4KiB, header_timeout: 60s }\n").await;
    // 64 KiB of a header that never ends. Refused while reading, it is
    // answered 431 at once; buffered towards Pingora's 1 MiB, it would wait
    // out the 60 s header timeout with nothing said.
    let mut s = TcpStream::connect(lb.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
        .unwrap();
    s.write_all(&vec![b'a'; 64 * 1024]).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status(&answer), 431, "{answer:?}");
    assert!(closed, "connection left open after the 431");
    assert_eq!(hits.load(Ordering::Relaxed), 0);
    let metrics = lb.metrics().await;
    assert_eq!(
        metric_value(&metrics, "hlb_headers_too_large_total"),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_under_the_cap_with_large_bodies_and_pipelining_pass() {
    let (lb, hits) = lb_with_echo("  limits: { max_header_bytes: 4KiB }\n").await;
    // A 3 KiB header and a 200 KiB body in one write: the body is not
    // counted as header.
    let body = "b".repeat(200 * 1024);
    let post = |connection: &str| {
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\nX-Pad: {}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            "p".repeat(3000),
            body.len()
        )
    };
    let (answer, _) = raw(lb.proxy, post("close").as_bytes());
    assert_eq!(status(&answer), 200, "{answer:.200}");
    // Two pipelined POSTs with large bodies, then a GET: three answers, in
    // order; the second's body, read after its header came from the first
    // read, is not taken for a header either.
    let last = "GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let one = post("keep-alive");
    let (answer, closed) = raw(lb.proxy, format!("{one}{one}{last}").as_bytes());
    assert!(closed);
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 3, "{answer:.300}");
    assert_eq!(hits.load(Ordering::Relaxed), 4);
    assert!(lb.metrics().await.contains("hlb_headers_too_large_total 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_do_not_slow_anyone_else() {
    let (lb, _) = lb_with_echo("").await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        let mut s = tokio::net::TcpStream::connect(lb.proxy).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        idle.push(s);
    }
    let client = reqwest::Client::new();
    for _ in 0..50 {
        let r = tokio::time::timeout(DEADLINE, client.get(lb.url("/")).send())
            .await
            .expect("served while 300 clients dawdle")
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_gives_504_and_trips_the_breaker() {
    // Accepts, reads nothing, answers nothing.
    let addr = raw_upstream(|s| async move {
        tokio::time::sleep(Duration::from_secs(600)).await;
        drop(s);
    })
    .await;
    let ok = mock("ok").await;
    let body = format!(
        "  algorithm: round_robin\n  retries: 0\n  timeouts: {{ connect: 500ms, read: 300ms }}\n  circuit_breaker: {{ fail_threshold: 3, open_time: 30s }}\n  upstreams:\n{}",
        upstreams_yaml(&[("mute", addr, 1), ("ok", ok.addr(), 1)])
    );
    let lb = Lb::start(&body).await;
    let mut timed_out = 0;
    while timed_out < 3 {
        let r = reqwest::get(lb.url("/")).await.unwrap();
        match r.status().as_u16() {
            200 => assert_eq!(backend_of(&r), "ok"),
            504 => {
                timed_out += 1;
                assert!(!r.text().await.unwrap().contains("127.0.0.1"));
            }
            other => panic!("answered {other}"),
        }
    }
    let state = lb
        .wait_upstream("mute", "3 failures", |u| u["errors_total"] == 3)
        .await;
    assert_eq!(state["breaker"], "open", "{state}");
    // With its breaker open, every request goes to the other upstream at once.
    for _ in 0..10 {
        let r = reqwest::get(lb.url("/")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(backend_of(&r), "ok");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_response_is_counted_not_fatal() {
    let addr = raw_upstream(|mut s| async move {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
            .await;
        // Drop: the connection closes 993 bytes short.
    })
    .await;
    let mock = mock("ok").await;
    let body = format!(
        "  algorithm: round_robin\n  circuit_breaker: {{ fail_threshold: 100 }}\n  upstreams:\n{}",
        upstreams_yaml(&[("broken", addr, 1), ("ok", mock.addr(), 1)])
    );
    let lb = Lb::start(&body).await;
    let client = reqwest::Client::new();
    let (mut broken, mut whole) = (0u64, 0u64);
    for _ in 0..10 {
        match client.get(lb.url("/")).send().await {
            Ok(r) => match r.bytes().await {
                Ok(b) if b.starts_with(b"{") => whole += 1,
                _ => broken += 1,
            },
            Err(_) => broken += 1,
        }
    }
    assert!(broken >= 1, "the broken upstream was never tried");
    assert_eq!(broken + whole, 10);
    // Each break is counted once, as an answered request that failed; the
    // healthy upstream is charged nothing; the process keeps serving.
    let b = lb
        .wait_upstream("broken", "every break counted", |u| {
            u["errors_total"].as_u64() == Some(broken)
        })
        .await;
    assert_eq!(b["requests_total"].as_u64(), Some(broken), "{b}");
    let ok = lb.upstream_state("ok").await;
    assert_eq!(ok["errors_total"], 0, "{ok}");
    assert_eq!(ok["requests_total"].as_u64(), Some(whole), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let (lb, _) = lb_with_echo("").await;
    let resp = reqwest::Client::new()
        .get(lb.url("/"))
        .header("keep-alive", "timeout=99")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("x-drop-me", "1")
        .header("connection", "x-drop-me")
        .header("te", "trailers")
        .header("x-keep-me", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("x-private-hop").is_none(),
        "{:?}",
        resp.headers()
    );
    assert!(
        resp.headers().get("keep-alive").is_none(),
        "{:?}",
        resp.headers()
    );
    let seen: HashMap<String, String> = resp.json().await.unwrap();
    for gone in ["keep-alive", "proxy-authorization", "x-drop-me", "te"] {
        assert!(
            !seen.contains_key(gone),
            "{gone} reached the upstream: {seen:?}"
        );
    }
    assert_eq!(seen["x-keep-me"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_header_is_dropped_after_the_header_timeout() {
    let (lb, hits) = lb_with_echo("  limits: { header_timeout: 1s }\n").await;
    let mut s = tokio::net::TcpStream::connect(lb.proxy).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // The server gives up on the header and closes; the read sees the end.
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await
        .expect("closed within the deadline")
        .unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf[..n]));
    assert_eq!(hits.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_pooled_connection_is_retried_on_the_same_upstream() {
    // An upstream that keeps connections alive for one answer only: the second
    // request on a connection is read and dropped unanswered, as by a server
    // whose idle timeout fired just as the request arrived.
    let addr = raw_upstream(|mut s| async move {
        let mut buf = [0u8; 4096];
        if s.read(&mut buf).await.unwrap_or(0) > 0 {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
        }
        let _ = s.read(&mut buf).await; // the next request: dropped
    })
    .await;
    let lb = Lb::start(&format!(
        "  health_check: {{ interval: 1h }}\n  upstreams:\n{}",
        upstreams_yaml(&[("only", addr, 1)])
    ))
    .await;
    let client = reqwest::Client::new();
    for i in 0..20 {
        let r = client.get(lb.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = lb.metrics().await;
    assert!(metrics.contains("hlb_no_upstream_total 0"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_drops_requests_unanswered_costs_no_get() {
    // Reads each request and closes without a word, like a crashing process;
    // counts the POSTs it was sent.
    let posts = Arc::new(AtomicU64::new(0));
    let seen = posts.clone();
    let addr = raw_upstream(move |mut s| {
        let seen = seen.clone();
        async move {
            let mut buf = [0u8; 4096];
            if let Ok(n) = s.read(&mut buf).await {
                if buf[..n].starts_with(b"POST") {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
    .await;
    let ok = mock("ok").await;
    let lb = Lb::start(&format!(
        "  algorithm: round_robin\n  retries: 1\n  health_check: {{ interval: 1h }}\n  circuit_breaker: {{ fail_threshold: 100 }}\n  upstreams:\n{}",
        upstreams_yaml(&[("dropper", addr, 1), ("ok", ok.addr(), 1)])
    ))
    .await;
    let client = reqwest::Client::new();
    for i in 0..20 {
        let r = client.get(lb.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET {i}");
        assert_eq!(backend_of(&r), "ok");
    }
    let dropper = lb
        .wait_upstream("dropper", "retries counted", |u| {
            u["retries_total"].as_u64().unwrap() >= 5
        })
        .await;
    assert_eq!(dropper["requests_total"], 0, "{dropper}");
    // A POST that reached the dropper is not replayed on `ok`: its client gets
    // 502, never a second delivery that answers 200.
    let (mut failed, mut answered) = (0, 0);
    for _ in 0..6 {
        let r = client.post(lb.url("/")).body("x").send().await.unwrap();
        match r.status().as_u16() {
            200 => {
                assert_eq!(backend_of(&r), "ok");
                answered += 1;
            }
            502 => failed += 1,
            other => panic!("POST answered {other}"),
        }
    }
    assert!(failed >= 1, "round robin never sent a POST to the dropper");
    assert_eq!(answered + failed, 6);
    assert_eq!(posts.load(Ordering::Relaxed), failed, "a POST was replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_on_a_stale_pooled_connection_is_not_charged_to_the_upstream() {
    // Answers the first request on each connection and keeps it open, then
    // reads the next one and closes unanswered: a server whose idle timeout
    // fired as the request arrived. Counts the requests it read.
    let seen = Arc::new(AtomicU64::new(0));
    let count = seen.clone();
    let addr = raw_upstream(move |mut s| {
        let count = count.clone();
        async move {
            // Health checks are not counted.
            let mut buf = [0u8; 4096];
            let read = |n: usize, buf: &[u8]| {
                if n > 0 && !buf.starts_with(b"GET /health") {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            };
            let n = s.read(&mut buf).await.unwrap_or(0);
            read(n, &buf);
            if n > 0 {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
            let n = s.read(&mut buf).await.unwrap_or(0);
            read(n, &buf);
        }
    })
    .await;
    // One failure would open the breaker.
    let lb = Lb::start(&format!(
        "  health_check: {{ interval: 1h }}\n  circuit_breaker: {{ fail_threshold: 1 }}\n  upstreams:\n{}",
        upstreams_yaml(&[("only", addr, 1)])
    ))
    .await;
    let client = reqwest::Client::new();
    let r = client.get(lb.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The POST goes out on the pooled connection, which is stale: it is not
    // replayed (the upstream may have acted on it) and not held against it.
    let r = client.post(lb.url("/")).body("x").send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(seen.load(Ordering::Relaxed), 2, "the POST was sent once");
    let only = lb.upstream_state("only").await;
    assert_eq!(only["breaker"], "closed", "{only}");
    assert_eq!(only["errors_total"], 0, "{only}");
    let r = client.get(lb.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// A WebSocket-style upgrade request as raw bytes.
const UPGRADE_REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_request_to_a_hung_upstream_times_out_and_counts() {
    // Reads the request and never answers.
    let addr = raw_upstream(|mut s| async move {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        tokio::time::sleep(Duration::from_secs(600)).await;
    })
    .await;
    let lb = Lb::start(&format!(
        "  health_check: {{ interval: 1h }}\n  timeouts: {{ read: 300ms }}\n  limits: {{ keepalive_timeout: 60s }}\n  upstreams:\n{}",
        upstreams_yaml(&[("hung", addr, 1)])
    ))
    .await;
    let proxy = lb.proxy;
    // Until a 101 arrives the read timeout bounds the request, not the
    // minute a tunnel may idle: a 504 well within the 5 s the client waits.
    let (answer, _) = tokio::task::spawn_blocking(move || raw(proxy, UPGRADE_REQUEST))
        .await
        .unwrap();
    assert_eq!(status(&answer), 504, "{answer:?}");
    lb.wait_upstream("hung", "the failure counted", |u| u["errors_total"] == 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_tunnel_may_idle_past_the_read_timeout() {
    // Answers 101, then echoes whatever comes.
    let addr = raw_upstream(|mut s| async move {
        let mut buf = [0u8; 4096];
        if s.read(&mut buf).await.unwrap_or(0) == 0 {
            return;
        }
        let _ = s
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            .await;
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    })
    .await;
    let lb = Lb::start(&format!(
        "  health_check: {{ interval: 1h }}\n  timeouts: {{ read: 300ms }}\n  limits: {{ keepalive_timeout: 5s }}\n  upstreams:\n{}",
        upstreams_yaml(&[("ws", addr, 1)])
    ))
    .await;
    let proxy = lb.proxy;
    let echoed = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(UPGRADE_REQUEST).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        // Idle for longer than the read timeout, shorter than keepalive_timeout.
        std::thread::sleep(Duration::from_millis(900));
        s.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).unwrap();
        back
    })
    .await
    .unwrap();
    assert_eq!(&echoed, b"ping");
    let ws = lb.upstream_state("ws").await;
    assert_eq!(ws["errors_total"], 0, "{ws}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_to_a_plain_request_and_an_unknown_transfer_coding_are_refused() {
    let switching = raw_upstream(|mut s| async move {
        let mut buf = [0u8; 4096];
        if s.read(&mut buf).await.unwrap_or(0) > 0 && !buf.starts_with(b"GET /health") {
            let _ = s
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: evil\r\n\r\nraw bytes")
                .await;
        }
    })
    .await;
    let identity = raw_upstream(|mut s| async move {
        let mut buf = [0u8; 4096];
        if s.read(&mut buf).await.unwrap_or(0) > 0 && !buf.starts_with(b"GET /health") {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nsome body")
                .await;
        }
    })
    .await;
    for (name, addr) in [("switching", switching), ("identity", identity)] {
        let lb = Lb::start(&format!(
            "  health_check: {{ interval: 1h }}\n  retries: 0\n  upstreams:\n{}",
            upstreams_yaml(&[(name, addr, 1)])
        ))
        .await;
        let proxy = lb.proxy;
        let (answer, _) = tokio::task::spawn_blocking(move || {
            raw(
                proxy,
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
        })
        .await
        .unwrap();
        assert_eq!(status(&answer), 502, "{name}: {answer:?}");
        assert!(
            !answer.contains("raw bytes") && !answer.contains("some body"),
            "{name}: {answer:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_expects_100_continue_does_not_stall() {
    // An upstream that reads the body (hyper sends 100 Continue as it starts)
    // and answers with its length.
    let app = Router::new()
        .fallback(|body: axum::body::Bytes| async move { format!("got {}", body.len()) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let lb = Lb::start(&format!(
        "  upstreams:\n{}",
        upstreams_yaml(&[("reader", addr, 1)])
    ))
    .await;
    let proxy = lb.proxy;
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        // The client waits for the interim answer before it sends the body
        // (curl gives up waiting after 1 s; this one after 5 s).
        let mut first = [0u8; 64];
        let n = s.read(&mut first).unwrap_or(0);
        let interim = String::from_utf8_lossy(&first[..n]).to_string();
        s.write_all(b"hello").unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        (interim, String::from_utf8_lossy(&rest).to_string())
    })
    .await
    .unwrap();
    assert!(answer.0.starts_with("HTTP/1.1 100"), "{answer:?}");
    assert!(
        answer.1.contains("200 OK") && answer.1.ends_with("got 5"),
        "{answer:?}"
    );
    assert!(
        !answer.1.to_ascii_lowercase().contains("pingora"),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_request_split_across_writes_is_neither_lost_nor_cut() {
    // A GET, then a POST whose header ends in the next write together with a
    // body holding a blank line and a third request: the third one's bytes
    // are buffered while the second is served, and must be answered.
    let up = mock("up").await;
    let lb = Lb::start(&format!(
        "  upstreams:\n{}",
        upstreams_yaml(&[("up", up.addr(), 1)])
    ))
    .await;
    let proxy = lb.proxy;
    let answer = tokio::task::spawn_blocking(move || {
        let third = b"GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        // Sized so that a scan starting at the second write would take the
        // body's blank line for the header's end and count exactly the
        // body's length after it.
        let mut body = vec![b'q'; third.len() - 4];
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(&[b'z'; 20]);
        let mut s = TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let first = format!(
            "GET /first HTTP/1.1\r\nHost: x\r\n\r\nPOST /second HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
            body.len()
        );
        s.write_all(first.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut rest = b"\r\n".to_vec();
        rest.extend_from_slice(&body);
        rest.extend_from_slice(third);
        s.write_all(&rest).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).to_string()
    })
    .await
    .unwrap();
    let at = |p: &str| answer.find(&format!("\"{p}\"")).unwrap_or(usize::MAX);
    assert!(
        at("/first") < at("/second") && at("/second") < at("/third") && at("/third") < usize::MAX,
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    // The mock upstream names the path it answered in its JSON body.
    let up = mock("up").await;
    let lb = Lb::start(&format!(
        "  upstreams:\n{}",
        upstreams_yaml(&[("up", up.addr(), 1)])
    ))
    .await;
    let proxy = lb.proxy;
    let answer = tokio::task::spawn_blocking(move || {
        raw(
            proxy,
            b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\nGET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .unwrap()
    .0;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 3, "{answer}");
    let at = |p: &str| answer.find(&format!("\"{p}\"")).unwrap_or(usize::MAX);
    assert!(
        at("/first") < at("/second") && at("/second") < at("/third"),
        "{answer}"
    );
    assert!(at("/third") < usize::MAX, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_comes_round_again_is_answered_508_and_our_own_address_is_refused() {
    // An upstream that sends what it gets back to the balancer, once: the
    // request returns carrying the balancer's own `Via` entry.
    let back_to = Arc::new(std::sync::OnceLock::<String>::new());
    let target = back_to.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let target = target.clone();
        async move {
            if headers.contains_key("x-came-round") {
                return (axum::http::StatusCode::OK, "came round twice".to_string());
            }
            let mut req = reqwest::Client::new()
                .get(target.get().unwrap())
                .header("x-came-round", "1");
            for v in headers.get_all("via") {
                req = req.header("via", v.to_str().unwrap());
            }
            let r = req.send().await.unwrap();
            let status = axum::http::StatusCode::from_u16(r.status().as_u16()).unwrap();
            (status, r.text().await.unwrap())
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let lb = Lb::start_with(
        &format!("  upstreams:\n{}", upstreams_yaml(&[("mirror", addr, 1)])),
        "  admin_token: t0ken\n",
    )
    .await;
    back_to.set(lb.url("/")).unwrap();
    let r = reqwest::get(lb.url("/")).await.unwrap();
    assert_eq!(r.status(), 508, "{}", r.text().await.unwrap());
    // An upstream at the balancer's own listener is refused outright.
    let add = reqwest::Client::new()
        .post(lb.url_dashboard("/api/upstreams"))
        .bearer_auth("t0ken")
        .json(&serde_json::json!({ "name": "me", "addr": lb.proxy.to_string() }))
        .send()
        .await
        .unwrap();
    assert_eq!(add.status(), 400);
    assert!(add.text().await.unwrap().contains("own listener"));
}
