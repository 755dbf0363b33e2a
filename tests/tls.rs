//! End to end over real TLS: certificates made here (rcgen), picked by SNI
//! (wildcards too), ALPN h2 and http/1.1, certificate rotation on disk under
//! a stream of new connections with no failure, a broken replacement
//! refused, `min_version`, `redirect_http`, and h2c beside HTTP/1.1 on one
//! plain port.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// A self-signed certificate for `names`, written to `dir/{file}.crt|.key`.
fn certificate(
    dir: &Path,
    file: &str,
    names: &[&str],
) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    certificate_for(dir, file, names, 365)
}

/// [`certificate`], valid for `days` from now.
fn certificate_for(
    dir: &Path,
    file: &str,
    names: &[&str],
    days: i64,
) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    let signing_key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&signing_key).unwrap();
    let made = rcgen::CertifiedKey { cert, signing_key };
    let (cert, key) = (
        dir.join(format!("{file}.crt")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key, made.cert.der().clone())
}

/// Writes `from`'s pair over `to`'s, each file renamed into place (as
/// certbot and similar tools do).
fn rotate(from: (&Path, &Path), to: (&Path, &Path)) {
    for (src, dst) in [(from.0, to.0), (from.1, to.1)] {
        let tmp = dst.with_extension("tmp");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, dst).unwrap();
    }
}

/// A client trusting exactly `roots`, offering `alpn`, up to TLS `max`.
fn client(roots: &[&CertificateDer<'static>], alpn: &[&[u8]], tls12_only: bool) -> TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Every connection a full handshake: a resumed session shows the
    // certificate of the session it resumes, not the one in force.
    config.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}

/// What one HTTPS request saw.
#[derive(Debug)]
struct Seen {
    cert: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
    status: u16,
}

/// A new connection to `addr` as `sni`, one request (`h2` if ALPN chose
/// it, else HTTP/1.1).
async fn fetch(tls: &TlsConnector, addr: SocketAddr, sni: &str) -> Result<Seen, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (_, conn) = stream.get_ref();
    let cert = conn.peer_certificates().unwrap()[0].clone();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let status = if alpn.as_deref() == Some(b"h2") {
        h2_get(stream, &format!("https://{sni}/")).await?
    } else {
        h1_get(stream, sni).await?
    };
    Ok(Seen { cert, alpn, status })
}

async fn h1_get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
) -> Result<u16, String> {
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no answer: {text:?}"))
}

async fn h2_get<S>(s: S, url: &str) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = h2::client::handshake(s).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get(url).body(()).unwrap();
    let (resp, _) = send.send_request(req, true).map_err(|e| e.to_string())?;
    let resp = resp.await.map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

/// New HTTPS connections to `addr` as `sni`, one request each, one after
/// the other until stopped (at most 60 s); counts those sent and failed.
struct Stream {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream {
    fn start(tls: TlsConnector, addr: SocketAddr, sni: &'static str) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (s, n, f) = (stop.clone(), sent.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let until = std::time::Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                n.fetch_add(1, Ordering::Relaxed);
                match fetch(&tls, addr, sni).await {
                    Ok(seen) if seen.status == 200 => {}
                    other => {
                        eprintln!("{other:?}");
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Stream {
            stop,
            sent,
            failed,
            task,
        }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops it; (sent, failed).
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let counts = (self.sent.clone(), self.failed.clone());
        self.task.await.unwrap();
        (
            counts.0.load(Ordering::Relaxed),
            counts.1.load(Ordering::Relaxed),
        )
    }
}

struct Site {
    lb: Lb,
    tls: SocketAddr,
    dir: tempfile::TempDir,
    a: CertificateDer<'static>,
    b: CertificateDer<'static>,
}

/// hybrid-lb with two certificates (`a.test` with `*.wild.test`, and
/// `b.test`) on an HTTPS port, and `extra` more `lb:` lines.
async fn site(tls_extra: &str, extra: &str) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let (a_cert, a_key, a) = certificate(dir.path(), "a", &["a.test", "*.wild.test"]);
    // b expires soon: the dashboard flags it.
    let (b_cert, b_key, b) = certificate_for(dir.path(), "b", &["b.test"], 5);
    let up = mock("up").await;
    let tls_port = free_port();
    let lb = Lb::start(&format!(
        "{extra}  tls:\n    listen: [\"127.0.0.1:{tls_port}\"]\n    certificates:\n      \
         - {{ cert: \"{}\", key: \"{}\" }}\n      - {{ cert: \"{}\", key: \"{}\" }}\n{tls_extra}\
         \x20 upstreams:\n{}",
        a_cert.display(),
        a_key.display(),
        b_cert.display(),
        b_key.display(),
        upstreams_yaml(&[("up", up.addr(), 1)])
    ))
    .await;
    std::mem::forget(up);
    // The HTTPS port is bound with the plain one, which `start` waited for.
    let tls = SocketAddr::from(([127, 0, 0, 1], tls_port));
    Site { lb, tls, dir, a, b }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_alpn_the_protocol() {
    let s = site("", "").await;
    let both = client(&[&s.a, &s.b], &[b"h2", b"http/1.1"], false);
    let seen = fetch(&both, s.tls, "b.test").await.unwrap();
    assert_eq!(seen.cert, s.b);
    assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(seen.status, 200);
    // A wildcard name, and the default for a name no certificate carries.
    assert_eq!(fetch(&both, s.tls, "x.wild.test").await.unwrap().cert, s.a);
    assert_eq!(fetch(&both, s.tls, "a.test").await.unwrap().cert, s.a);
    assert!(
        fetch(&both, s.tls, "nobody.test").await.is_err(),
        "the default's names do not cover it"
    );
    // HTTP/1.1 when the client offers only that.
    let h1 = client(&[&s.a, &s.b], &[b"http/1.1"], false);
    let seen = fetch(&h1, s.tls, "b.test").await.unwrap();
    assert_eq!(
        (seen.alpn.as_deref(), seen.status),
        (Some(&b"http/1.1"[..]), 200)
    );
    let metrics = s.lb.metrics().await;
    assert!(
        metrics.contains("hlb_tls_handshakes_total{version=\"TLSv1.3\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hlb_downstream_connections_total{listener=\"tls\",protocol=\"h2\"}"),
        "{metrics}"
    );
    // The dashboard lists the certificates and when they expire.
    let state = s.lb.state().await;
    let certs = state["certificates"]
        .as_array()
        .expect("certificates in the snapshot");
    assert_eq!(certs.len(), 2);
    assert_eq!(certs[1]["names"][0], "b.test");
    assert!(certs[0]["expires"].as_str().is_some());
    let expiring = (
        certs[0]["expiring"].as_bool(),
        certs[1]["expiring"].as_bool(),
    );
    assert_eq!(expiring, (Some(false), Some(true)));
    let mix = &state["listeners"];
    assert!(
        mix["tls_h2"].as_u64() >= Some(1) && mix["tls_h1"].as_u64() >= Some(1),
        "{mix}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_serves_new_connections_without_a_failed_request() {
    let s = site("", "").await;
    let dir = s.dir.path();
    let (c_cert, c_key, c) = certificate(dir, "next", &["b.test"]);
    let trust = client(&[&s.a, &s.b, &c], &[b"http/1.1"], false);

    let stream = Stream::start(trust.clone(), s.tls, "b.test");
    rotate((&c_cert, &c_key), (&dir.join("b.crt"), &dir.join("b.key")));
    let (t, addr) = (&trust, s.tls);
    let c_ref = &c;
    wait_for("the new certificate served", || async move {
        let r = fetch(t, addr, "b.test").await;
        r.is_ok_and(|seen| seen.cert == *c_ref)
    })
    .await;

    // A broken replacement (a key that is not the certificate's) is refused;
    // the pair in force stays.
    let (_, other_key, _) = certificate(dir, "other", &["b.test"]);
    let (d_cert, _, _) = certificate(dir, "broken", &["b.test"]);
    rotate(
        (&d_cert, &other_key),
        (&dir.join("b.crt"), &dir.join("b.key")),
    );
    let lb = &s.lb;
    wait_for("the broken pair refused", || async move {
        lb.state().await["events"]
            .to_string()
            .contains("replacement refused")
    })
    .await;
    assert_eq!(fetch(&trust, s.tls, "b.test").await.unwrap().cert, c);

    let (sent, failed) = stream.finish().await;
    assert!(sent > 10);
    assert_eq!(failed, 0, "requests failed across the rotation");
    let events = s.lb.state().await["events"].to_string();
    assert!(
        events.contains("new certificate for b.test in force"),
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_refuses_older_clients_and_redirect_sends_plain_requests_to_https() {
    let s = site("    min_version: \"1.3\"\n    redirect_http: true\n", "").await;
    let old = client(&[&s.a, &s.b], &[b"http/1.1"], true);
    assert!(
        fetch(&old, s.tls, "b.test").await.is_err(),
        "a TLS 1.2 client was served"
    );
    let modern = client(&[&s.a, &s.b], &[b"http/1.1"], false);
    assert_eq!(fetch(&modern, s.tls, "b.test").await.unwrap().status, 200);
    let metrics = s.lb.metrics().await;
    assert!(
        metrics.contains("hlb_tls_handshakes_total{version=\"failed\"} 1"),
        "{metrics}"
    );
    // A plain request is answered 308 to the same host and path on HTTPS.
    let mut plain = tokio::net::TcpStream::connect(s.lb.proxy).await.unwrap();
    plain
        .write_all(b"GET /a/b?c=1 HTTP/1.1\r\nHost: shop.test:8080\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    plain.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    let location = format!("location: https://shop.test:{}/a/b?c=1", s.tls.port());
    assert!(out.to_ascii_lowercase().contains(&location), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_http1_share_a_plain_port() {
    let up = mock("up").await;
    let lb = Lb::start(&format!(
        "  h2c: true\n  upstreams:\n{}",
        upstreams_yaml(&[("up", up.addr(), 1)])
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(lb.proxy).await.unwrap();
    assert_eq!(
        h2_get(tcp, &format!("http://{}/", lb.proxy)).await.unwrap(),
        200
    );
    let tcp = tokio::net::TcpStream::connect(lb.proxy).await.unwrap();
    assert_eq!(h1_get(tcp, "x").await.unwrap(), 200);
    let metrics = lb.metrics().await;
    for protocol in ["h1", "h2"] {
        let series = format!(
            "hlb_downstream_connections_total{{listener=\"plain\",protocol=\"{protocol}\"}} 1"
        );
        assert!(metrics.contains(&series), "{metrics}");
    }
}

/// Kills the new process of a reload when the test ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_hands_over_the_https_listener_without_a_failed_request() {
    let mut s = site("", "").await;
    let trust = client(&[&s.a, &s.b], &[b"h2", b"http/1.1"], false);
    let stream = Stream::start(trust, s.tls, "b.test");
    let stream_ref = &stream;
    wait_for("traffic", || async move { stream_ref.sent() > 50 }).await;

    // The same config again, taking over the sockets (-u), then SIGQUIT.
    let yaml = s.lb.dir.path().join("lb.yaml");
    let log = std::fs::File::create(s.lb.dir.path().join("new.log")).unwrap();
    let _new = Child(
        std::process::Command::new(binary())
            .arg("-u")
            .arg("-c")
            .arg(&yaml)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let sock = format!("/tmp/hybrid-lb-test-{}.sock", s.lb.proxy.port());
    wait_for("the new process's upgrade socket", || {
        let sock = sock.clone();
        async move { Path::new(&sock).exists() }
    })
    .await;
    s.lb.signal("QUIT");
    s.lb.wait_exit().await;
    let after = stream.sent();
    wait_for("traffic to the new process", || async move {
        stream_ref.sent() > after + 50
    })
    .await;
    let (sent, failed) = stream.finish().await;
    assert_eq!(
        failed, 0,
        "HTTPS requests failed across the reload ({sent} sent)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_handshake_is_cut_at_the_header_timeout() {
    let s = site("", "  limits: { header_timeout: 1s }\n").await;
    // Connected, half a ClientHello, then silence.
    let mut stalled = tokio::net::TcpStream::connect(s.tls).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(DEADLINE, stalled.read(&mut buf))
        .await
        .expect("the stalled handshake was never cut");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let lb = &s.lb;
    wait_for("the failed handshake counted", || async move {
        let m = lb.metrics().await;
        metric_value(&m, "hlb_tls_handshakes_total{version=\"failed\"}") == Some(1.0)
    })
    .await;
    // A handshake the deadline cut is a header that did not come in time.
    let m = lb.metrics().await;
    assert_eq!(
        metric_value(&m, "hlb_header_timeouts_total"),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_on_the_https_port_give_way_to_a_newcomer_when_full() {
    let s = site(
        "",
        "  limits: { max_connections: 8, max_connections_per_client: 8, header_timeout: 30s }\n",
    )
    .await;
    // Every place held by a connection that never starts its handshake.
    // (From another address: the newcomer must meet the overall cap, not
    // the per-address one.)
    let mut silent = Vec::new();
    for _ in 0..8 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
        silent.push(socket.connect(s.tls).await.unwrap());
    }
    // Once they have waited past the shedding age, a newcomer is served (one
    // of them is closed for it); without shedding it would be refused for the
    // whole 30 s header timeout.
    let trust = client(&[&s.a, &s.b], &[b"h2", b"http/1.1"], false);
    let (t, addr) = (&trust, s.tls);
    wait_for("a newcomer served at the cap", || async move {
        fetch(t, addr, "b.test")
            .await
            .is_ok_and(|seen| seen.status == 200)
    })
    .await;
    let metrics = s.lb.metrics().await;
    let shed = metric_value(
        &metrics,
        "hlb_connections_refused_total{listener=\"proxy\",reason=\"shed\"}",
    );
    assert!(shed >= Some(1.0), "{metrics}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_protocol_header_comes_before_the_handshake_on_the_https_port() {
    let s = site("", "  proxy_protocol: { trusted: [\"127.0.0.0/8\"] }\n").await;
    let mut tcp = tokio::net::TcpStream::connect(s.tls).await.unwrap();
    let header = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        ("198.51.100.9:4000".parse::<SocketAddr>().unwrap(), s.tls),
    )
    .build()
    .unwrap();
    tcp.write_all(&header).await.unwrap();
    let tls = client(&[&s.a], &[b"http/1.1"], false);
    let name = ServerName::try_from("a.test".to_string()).unwrap();
    let mut stream = tls
        .connect(name, tcp)
        .await
        .expect("handshake after the header");
    stream
        .write_all(b"GET /_mock/echo HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("\"x-forwarded-for\":\"198.51.100.9\""),
        "{text}"
    );
    assert!(text.contains("\"x-forwarded-proto\":\"https\""), "{text}");
}
