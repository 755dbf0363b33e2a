//! End to end: upstreams spoken to over TLS and HTTP/2, against real servers.
//! nginx (started here, on ephemeral ports) is the TLS upstream, with a
//! certificate that verifies and one that does not, and the HTTP/2 upstream
//! over TLS and in the clear; a tonic gRPC server answers unary and
//! server-streaming calls through the balancer.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::nginx::Nginx;
use common::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A self-signed certificate for `name`, written to `dir/{file}.crt|.key`.
fn certificate(dir: &Path, file: &str, name: &str) -> (PathBuf, PathBuf) {
    let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let (cert, key) = (
        dir.join(format!("{file}.crt")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// A server block answering `body` with its protocol in `X-Proto`.
fn server_block(listen: &str, tls: Option<(&Path, &Path)>, body: &str) -> String {
    let tls = tls.map_or(String::new(), |(c, k)| {
        format!(
            "    ssl_certificate {};\n    ssl_certificate_key {};\n",
            c.display(),
            k.display()
        )
    });
    format!(
        "  server {{\n    listen {listen};\n{tls}    location / {{\n      \
         add_header X-Proto $server_protocol always;\n      return 200 \"{body}\";\n    }}\n  }}\n"
    )
}

const QUICK_CHECKS: &str =
    "  health_check: { interval: 200ms, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 1 }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_upstream_serves_when_its_certificate_verifies_and_never_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "site", "up.test");
    let (other, _) = certificate(dir.path(), "other", "up.test");
    let (good, bad) = (free_port(), free_port());
    let servers = server_block(
        &format!("127.0.0.1:{good} ssl"),
        Some((&cert, &key)),
        "good",
    ) + &server_block(
        &format!("127.0.0.1:{bad} ssl"),
        Some((&cert, &key)),
        "unverified",
    );
    let _nginx = Nginx::start(dir, &servers, &[good, bad]).await;
    let lb = Lb::start(&format!(
        "  algorithm: round_robin\n{QUICK_CHECKS}  upstreams:\n    \
         - {{ name: good, addr: \"127.0.0.1:{good}\", tls: {{ sni: up.test, ca: \"{}\" }} }}\n    \
         - {{ name: bad, addr: \"127.0.0.1:{bad}\", tls: {{ sni: up.test, ca: \"{}\" }} }}\n",
        cert.display(),
        other.display()
    ))
    .await;
    // The unverified one fails its (TLS) health checks; the verified one
    // passes. (This once timed out with `bad` still up; the state and the
    // log say why if it does again.)
    let start = std::time::Instant::now();
    loop {
        let bad = lb.upstream_state("bad").await;
        if bad["health"] == "down" {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the unverified upstream is still not down: {bad}\nlog:\n{}",
            lb.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(lb.upstream_state("good").await["health"], "up");
    let client = reqwest::Client::new();
    for _ in 0..20 {
        let r = client.get(lb.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.text().await.unwrap(),
            "good",
            "an unverified upstream answered"
        );
    }
    assert_eq!(lb.upstream_state("bad").await["requests_total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_does_not_verify_fails_the_attempt() {
    // No health checks to hide it: the request itself must fail on the
    // unverified upstream, count as its failure, and go elsewhere.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "site", "up.test");
    let (other, _) = certificate(dir.path(), "other", "up.test");
    let port = free_port();
    let servers = server_block(
        &format!("127.0.0.1:{port} ssl"),
        Some((&cert, &key)),
        "served",
    );
    let _nginx = Nginx::start(dir, &servers, &[port]).await;
    let lb = Lb::start(&format!(
        "  health_check: {{ interval: 1h, unhealthy_threshold: 100 }}\n  retries: 0\n  upstreams:\n    \
         - {{ name: bad, addr: \"127.0.0.1:{port}\", tls: {{ sni: up.test, ca: \"{}\" }} }}\n",
        other.display()
    ))
    .await;
    // A connection that cannot be made is the fast 503 (DESIGN: every
    // connection failed), never an answer from an unverified server.
    let r = reqwest::get(lb.url("/")).await.unwrap();
    assert_eq!(r.status(), 503);
    let lb_ref = &lb;
    wait_for("the failure logged and counted", || async move {
        lb_ref.log().contains("invalid peer certificate")
            && lb_ref.upstream_state("bad").await["errors_total"].as_u64() >= Some(1)
    })
    .await;
    // `verify: false`, written out, accepts it.
    let lb = Lb::start(&format!(
        "  upstreams:\n    - {{ name: lax, addr: \"127.0.0.1:{port}\", tls: {{ sni: up.test, verify: false }} }}\n"
    ))
    .await;
    let r = reqwest::get(lb.url("/")).await.unwrap();
    assert_eq!(r.text().await.unwrap(), "served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upstreams_are_spoken_to_in_http2_over_tls_and_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "site", "up.test");
    let (tls_h2, h2c, h1) = (free_port(), free_port(), free_port());
    let servers = server_block(
        &format!("127.0.0.1:{tls_h2} ssl http2"),
        Some((&cert, &key)),
        "tls",
    ) + &server_block(&format!("127.0.0.1:{h2c} http2"), None, "h2c")
        + &server_block(&format!("127.0.0.1:{h1}"), None, "h1");
    let _nginx = Nginx::start(dir, &servers, &[tls_h2, h2c, h1]).await;
    let proto_of = |lb_body: String| async move {
        let lb = Lb::start(&lb_body).await;
        let r = reqwest::get(lb.url("/")).await.unwrap();
        let proto = r.headers()["x-proto"].to_str().unwrap().to_string();
        (proto, r.text().await.unwrap())
    };
    let tls = format!(
        "  upstreams:\n    - {{ name: a, addr: \"127.0.0.1:{tls_h2}\", h2: true, tls: {{ sni: up.test, ca: \"{}\" }} }}\n",
        cert.display()
    );
    assert_eq!(proto_of(tls).await, ("HTTP/2.0".into(), "tls".into()));
    let clear = format!("  upstreams:\n    - {{ name: a, addr: \"127.0.0.1:{h2c}\", h2: true }}\n");
    assert_eq!(proto_of(clear).await, ("HTTP/2.0".into(), "h2c".into()));
    let plain = format!("  upstreams:\n    - {{ name: a, addr: \"127.0.0.1:{h1}\" }}\n");
    assert_eq!(proto_of(plain).await, ("HTTP/1.1".into(), "h1".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_calls_pass_with_their_status_and_trailers() {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let lb = Lb::start(&format!(
        "  h2c: true\n  upstreams:\n    - {{ name: grpc, addr: \"{upstream}\", h2: true }}\n"
    ))
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", lb.proxy))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let ask = |service: &str| HealthCheckRequest {
        service: service.into(),
    };

    // Unary: the answer, and an error status carried in the trailers.
    let status = client.check(ask("shop")).await.unwrap().into_inner().status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let err = client.check(ask("nope")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // Server streaming: each change arrives as it happens.
    let mut watch = client.watch(ask("shop")).await.unwrap().into_inner();
    let first = tokio::time::timeout(DEADLINE, watch.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.unwrap().status, ServingStatus::Serving as i32);
    reporter
        .set_service_status("shop", tonic_health::ServingStatus::NotServing)
        .await;
    let next = tokio::time::timeout(DEADLINE, watch.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.unwrap().status, ServingStatus::NotServing as i32);
}

/// An HTTP/2 (h2c) upstream that counts each request it is sent and resets
/// its stream instead of answering.
async fn resetting_h2_upstream() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let hits = std::sync::Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    if req.uri().path() == "/health" {
                        let resp = http::Response::builder().status(200).body(()).unwrap();
                        let _ = respond.send_response(resp, true);
                        continue;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    respond.send_reset(h2::Reason::INTERNAL_ERROR);
                }
            });
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_never_replayed_after_an_http2_error() {
    use std::sync::atomic::Ordering;
    let (a, a_hits) = resetting_h2_upstream().await;
    let (b, b_hits) = resetting_h2_upstream().await;
    let lb = Lb::start(&format!(
        "  retries: 2\n  circuit_breaker: {{ fail_threshold: 1000 }}\n  upstreams:\n    \
         - {{ name: a, addr: \"{a}\", h2: true }}\n    - {{ name: b, addr: \"{b}\", h2: true }}\n"
    ))
    .await;
    let client = reqwest::Client::new();
    let total = || a_hits.load(Ordering::SeqCst) + b_hits.load(Ordering::SeqCst);
    for i in 1..=10 {
        let r = client
            .post(lb.url("/order"))
            .body("one order")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_server_error(), "{}", r.status());
        assert_eq!(total(), i, "a POST reached the upstreams more than once");
    }
    // A GET, idempotent, may be tried again elsewhere.
    let before = total();
    let r = client.get(lb.url("/item")).send().await.unwrap();
    assert!(r.status().is_server_error());
    assert!(
        total() - before >= 2,
        "a GET was not retried on another upstream"
    );
}
