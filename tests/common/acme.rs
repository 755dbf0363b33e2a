//! A real ACME server for end-to-end tests: Pebble (Let's Encrypt's test
//! server, Debian package `pebble`) with a test CA made here for its own
//! HTTPS, validating against the balancer's ports, and names under `.test`
//! resolved to 127.0.0.1 by a dnsmasq of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{free_port, wait_for};

pub struct Pebble {
    child: Option<Child>,
    dns: Child,
    dir: tempfile::TempDir,
    pub acme_port: u16,
    mgmt_port: u16,
    dns_port: u16,
    /// The CA of Pebble's own HTTPS, for `acme.directory_ca`.
    pub ca: PathBuf,
}

impl Pebble {
    /// Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on
    /// `tls_port`, issuing certificates valid `validity` seconds.
    pub async fn start(http_port: u16, tls_port: u16, validity: u64) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "pebble test CA");
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, &ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let write = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_path = write("pebble-ca.pem", ca_cert.pem());
        let cert_path = write("pebble.pem", cert.pem());
        let key_path = write("pebble.key", key.serialize_pem());
        let (acme_port, mgmt_port) = (free_port(), free_port());
        write(
            "pebble.json",
            serde_json::json!({ "pebble": {
                "listenAddress": format!("127.0.0.1:{acme_port}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
                "certificate": cert_path, "privateKey": key_path,
                "httpPort": http_port, "tlsPort": tls_port,
                "ocspResponderURL": "", "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity,
            }})
            .to_string(),
        );
        let (dns, dns_port) = dnsmasq().await;
        let mut pebble = Pebble {
            child: None,
            dns,
            dir,
            acme_port,
            mgmt_port,
            dns_port,
            ca: ca_path,
        };
        pebble.run().await;
        pebble
    }

    /// Starts (or starts again) Pebble on the same ports; it forgets its
    /// accounts and makes a new root each time.
    pub async fn run(&mut self) {
        let child = Command::new(program("pebble", "/usr/bin"))
            .arg("-config")
            .arg(self.dir.path().join("pebble.json"))
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{}", self.dns_port))
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("pebble.log")).unwrap())
            .spawn()
            .expect("pebble (Debian: pebble) must be installed");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.acme_port));
        wait_for("pebble listening", || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The root Pebble issues under (new at each start).
    pub async fn root(&self) -> CertificateDer<'static> {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.ca).unwrap()).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .unwrap();
        let pem = client
            .get(format!("https://127.0.0.1:{}/roots/0", self.mgmt_port))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}

fn program(name: &str, dir: &str) -> PathBuf {
    let p = Path::new(dir).join(name);
    if p.exists() {
        p
    } else {
        PathBuf::from(name)
    }
}

/// dnsmasq answering every name under `.test` with 127.0.0.1 (no AAAA, so
/// Pebble connects over IPv4), and its port; a port found free can be taken
/// before dnsmasq binds it (it then exits at once), so up to five are tried.
async fn dnsmasq() -> (Child, u16) {
    for _ in 0..5 {
        let port = free_udp_port();
        let mut child = Command::new(program("dnsmasq", "/usr/sbin"))
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--pid-file=",
                &format!("--port={port}"),
                "--address=/test/127.0.0.1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (Debian: dnsmasq-base) must be installed");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let start = std::time::Instant::now();
        while start.elapsed() < super::DEADLINE {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return (child, port);
            }
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("dnsmasq could not take a port five times over");
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTPS request to `addr` as `sni`, trusting `root` only: the status
/// and the leaf certificate served, or why it failed.
pub async fn https_get(
    addr: SocketAddr,
    sni: &str,
    root: &CertificateDer<'static>,
) -> Result<(u16, CertificateDer<'static>), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let mut s = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let leaf = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no answer: {text:?}"))?;
    Ok((status, leaf))
}

/// The DNS names a certificate carries.
pub fn names(cert: &CertificateDer<'_>) -> Vec<String> {
    let (_, c) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    c.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}
