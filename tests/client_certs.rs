//! End to end: client certificates (`lb.tls.client_auth`) over real TLS, a
//! CA and its client certificates made here (rcgen). Required: a client
//! without one, or with one another CA issued, is refused at the handshake;
//! a verified one reaches the upstream as `X-Client-Cert-Subject`. Optional:
//! clients without one are served, without the header. A header the client
//! sends itself never reaches the upstream, on either port.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use common::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

struct Issuer {
    params: rcgen::CertificateParams,
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn ca(name: &str) -> Issuer {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Issuer { params, cert, key }
}

/// A client certificate for `cn` (and `dns` as its alternative name) that
/// `issuer` signed, with its key.
fn client_cert(
    issuer: &Issuer,
    cn: &str,
    dns: &str,
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let mut params = rcgen::CertificateParams::new(vec![dns.to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Example Corp");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::from_params(&issuer.params, &issuer.key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    (
        cert.der().clone(),
        PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
    )
}

/// A client trusting `server`, presenting `identity` when given.
fn client(
    server: &CertificateDer<'static>,
    identity: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}

/// One HTTP/1.1 request for the upstream's echo of its headers, sending a
/// forged `X-Client-Cert-Subject`: the header the upstream saw, or Err when
/// the connection failed (a refused certificate).
async fn seen<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
) -> Result<Option<String>, String> {
    s.write_all(
        b"GET /_mock/echo HTTP/1.1\r\nHost: a.test\r\nX-Client-Cert-Subject: Subject=\"CN=forged\"\r\n\
          Connection: close\r\n\r\n",
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(format!("no answer: {text:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("not served: {head}"));
    }
    let json: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
    Ok(json["headers"]["x-client-cert-subject"]
        .as_str()
        .map(str::to_string))
}

async fn over_tls(tls: &TlsConnector, addr: SocketAddr) -> Result<Option<String>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("a.test").unwrap();
    let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
    seen(stream).await
}

struct Site {
    lb: Lb,
    tls: SocketAddr,
    server: CertificateDer<'static>,
    issuer: Issuer,
    _dir: tempfile::TempDir,
}

async fn site(required: bool) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let server = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    let write = |file: &str, text: String| {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        path
    };
    let cert = write("a.crt", server.cert.pem());
    let key = write("a.key", server.signing_key.serialize_pem());
    let issuer = ca("Example Clients CA");
    let ca_file = write("clients-ca.pem", issuer.cert.pem());
    let up = mock("up").await;
    let tls_port = free_port();
    let lb = Lb::start(&format!(
        "  tls:\n    listen: [\"127.0.0.1:{tls_port}\"]\n    certificates: [{{ cert: \"{}\", key: \"{}\" }}]\n    \
         client_auth: {{ ca: \"{}\", required: {required} }}\n  upstreams:\n{}",
        cert.display(),
        key.display(),
        ca_file.display(),
        upstreams_yaml(&[("up", up.addr(), 1)])
    ))
    .await;
    std::mem::forget(up);
    Site {
        lb,
        tls: SocketAddr::from(([127, 0, 0, 1], tls_port)),
        server: server.cert.der().clone(),
        issuer,
        _dir: dir,
    }
}

/// What a plain-port request passes upstream of a forged header.
async fn plain(lb: &Lb) -> Option<String> {
    let s = tokio::net::TcpStream::connect(lb.proxy).await.unwrap();
    seen(s).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_certificate_admits_only_the_cas_clients_and_names_them_upstream() {
    let s = site(true).await;
    let alice = client_cert(&s.issuer, "alice", "alice.example.com");
    let told = over_tls(&client(&s.server, Some(alice)), s.tls)
        .await
        .unwrap()
        .expect("the verified certificate is passed upstream");
    assert!(told.starts_with("Subject=\""), "{told}");
    assert!(told.contains("CN=alice"), "{told}");
    assert!(told.contains("O=Example Corp"), "{told}");
    assert!(told.ends_with(";DNS=alice.example.com"), "{told}");
    assert!(!told.contains("forged"), "{told}");

    let none = over_tls(&client(&s.server, None), s.tls).await;
    assert!(none.is_err(), "served without a certificate: {none:?}");
    let rogue = ca("Rogue CA");
    let mallory = client_cert(&rogue, "mallory", "mallory.example.com");
    let other = over_tls(&client(&s.server, Some(mallory)), s.tls).await;
    assert!(
        other.is_err(),
        "served with another CA's certificate: {other:?}"
    );
    // Counted once the server has sent its alert, just after the client
    // read it.
    let lb = &s.lb;
    wait_for("both refused handshakes counted", || async {
        metric_value(
            &lb.metrics().await,
            "hlb_tls_handshakes_total{version=\"failed\"}",
        )
        .is_some_and(|n| n >= 2.0)
    })
    .await;

    // The plain port asks for no certificate: a client's own header is
    // dropped there too.
    assert_eq!(plain(&s.lb).await, None);
    // The CA's clients keep being served.
    let bob = client_cert(&s.issuer, "bob", "bob.example.com");
    let told = over_tls(&client(&s.server, Some(bob)), s.tls)
        .await
        .unwrap();
    assert!(told.is_some_and(|t| t.contains("CN=bob")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_certificate_serves_everyone_and_names_only_the_verified() {
    let s = site(false).await;
    assert_eq!(
        over_tls(&client(&s.server, None), s.tls).await.unwrap(),
        None,
        "no certificate: served, and a client's own header dropped"
    );
    let alice = client_cert(&s.issuer, "alice", "alice.example.com");
    let told = over_tls(&client(&s.server, Some(alice)), s.tls)
        .await
        .unwrap();
    assert!(told.is_some_and(|t| t.contains("CN=alice")));
    // A certificate that does not verify is refused even when optional: a
    // client that presents one means to be known by it.
    let rogue = ca("Rogue CA");
    let mallory = client_cert(&rogue, "mallory", "mallory.example.com");
    assert!(over_tls(&client(&s.server, Some(mallory)), s.tls)
        .await
        .is_err());
}

#[test]
fn a_client_ca_that_cannot_be_loaded_is_named_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    let cert = dir.path().join("a.crt");
    let key = dir.path().join("a.key");
    std::fs::write(&cert, server.cert.pem()).unwrap();
    std::fs::write(&key, server.signing_key.serialize_pem()).unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    for ca in [Path::new("/nonexistent/ca.pem"), not_pem.as_path()] {
        let yaml = config_yaml(
            free_port(),
            free_port(),
            &format!(
                "  tls:\n    listen: [\"127.0.0.1:{}\"]\n    certificates: [{{ cert: \"{}\", key: \"{}\" }}]\n    \
                 client_auth: {{ ca: \"{}\" }}\n  upstreams: [{{ name: a, addr: \"127.0.0.1:9\" }}]\n",
                free_port(),
                cert.display(),
                key.display(),
                ca.display()
            ),
        );
        let out = check_config(&yaml);
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{text}");
        assert!(text.contains("lb.tls.client_auth.ca"), "{text}");
    }
}
