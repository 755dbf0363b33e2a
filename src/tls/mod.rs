//! TLS termination on rustls (Pingora's `rustls` backend): the certificate
//! store, picking a certificate by SNI against the names each carries
//! (wildcards too; the first is the default), and the server config built on
//! it. `rotation` replaces a pair when its files change on disk.

pub mod listener;
pub mod rotation;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::{CertificatePaths, TlsConfig, TlsVersion};

/// Why a certificate/key pair cannot serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// `cert` or `key`: the file at fault.
    part: &'static str,
    message: String,
}

impl LoadError {
    fn cert(message: impl Into<String>) -> Self {
        LoadError {
            part: "cert",
            message: message.into(),
        }
    }

    fn key(message: impl Into<String>) -> Self {
        LoadError {
            part: "key",
            message: message.into(),
        }
    }

    pub fn part(&self) -> &'static str {
        self.part
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// One pair loaded and checked.
#[derive(Debug)]
pub struct Loaded {
    pub paths: CertificatePaths,
    /// The DNS names the leaf certificate carries (subject alternative
    /// names, or its common name when it has none), lower-cased.
    pub names: Vec<String>,
    /// When the leaf certificate expires, in seconds since the Unix epoch.
    pub not_after: i64,
    pub key: Arc<CertifiedKey>,
    /// The files' bytes, to tell when they change.
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

fn read(path: &Path, part: fn(String) -> LoadError) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|e| part(format!("cannot read {}: {e}", path.display())))
}

/// Reads and checks the pair at `paths`.
pub fn load(paths: &CertificatePaths) -> Result<Loaded, LoadError> {
    let cert_pem = read(&paths.cert, LoadError::cert)?;
    let key_pem = read(&paths.key, LoadError::key)?;
    from_pem(paths, cert_pem, key_pem)
}

/// Checks a pair given as PEM bytes: a certificate chain, a private key that
/// matches its leaf.
pub fn from_pem(
    paths: &CertificatePaths,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
) -> Result<Loaded, LoadError> {
    let cert_file = paths.cert.display();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| LoadError::cert(format!("{cert_file} is not PEM certificates: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(LoadError::cert(format!("{cert_file} holds no certificate")));
    };
    let (names, not_after) =
        leaf_facts(leaf).map_err(|e| LoadError::cert(format!("{cert_file}: {e}")))?;
    let key_file = paths.key.display();
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| LoadError::key(format!("{key_file} holds no PEM private key: {e}")))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| LoadError::key(format!("{key_file}: unsupported key: {e}")))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|_| {
        LoadError::key(format!(
            "{key_file} is not the key of the certificate in {cert_file}"
        ))
    })?;
    Ok(Loaded {
        paths: paths.clone(),
        names,
        not_after,
        key: Arc::new(certified),
        cert_pem,
        key_pem,
    })
}

/// The leaf's DNS names and expiry.
fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_ascii_lowercase))
            .collect();
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// The largest CA bundle read (the system's whole bundle is about 220 KiB).
const MAX_CA_BYTES: u64 = 4 * 1024 * 1024;

/// The CA certificates in the PEM file at `path`, as upstream peers take them.
pub fn load_ca(path: &Path) -> Result<Arc<pingora::protocols::tls::CaType>, String> {
    // A regular file of sane size: the path may come from an etcd value, and
    // /dev/zero or a FIFO would otherwise exhaust memory or block.
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() || meta.len() > MAX_CA_BYTES {
        return Err(format!(
            "{} is not a regular file of at most {} KiB",
            path.display(),
            MAX_CA_BYTES / 1024
        ));
    }
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not PEM certificates: {e}", path.display()))?;
    if ders.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    let certs: Vec<pingora::utils::tls::WrappedX509> = ders
        .into_iter()
        .map(|d| {
            pingora::utils::tls::WrappedX509::new(d.as_ref().to_vec(), |raw| {
                pingora::utils::tls::parse_x509(raw)
            })
        })
        .collect();
    Ok(certs.into())
}

/// Whether certificate name `pattern` covers `host` (both lower-case): equal,
/// or `*.rest` with `host` one label followed by `.rest` (RFC 6125 §6.4.3).
pub fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(rest) => host
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
        None => pattern == host,
    }
}

/// Which of the certificates (their names, in order) serves `sni`: the first
/// whose names hold it exactly, else the first with a wildcard covering it,
/// else the first (the default).
pub fn pick<'a>(certs: impl IntoIterator<Item = &'a [String]> + Clone, sni: Option<&str>) -> usize {
    let Some(host) = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase()) else {
        return 0;
    };
    let find = |exact: bool| {
        certs.clone().into_iter().position(|names| {
            names.iter().any(|n| {
                if exact {
                    *n == host
                } else {
                    n.starts_with("*.") && name_matches(n, &host)
                }
            })
        })
    };
    find(true).or_else(|| find(false)).unwrap_or(0)
}

/// The certificates in force, replaced whole when one rotates.
#[derive(Debug)]
pub struct CertStore {
    certs: ArcSwap<Vec<Arc<Loaded>>>,
}

impl CertStore {
    /// Loads every configured pair (checked already when the config was).
    pub fn load_all(paths: &[CertificatePaths]) -> Result<Self, LoadError> {
        let certs = paths
            .iter()
            .map(|p| load(p).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CertStore {
            certs: ArcSwap::from_pointee(certs),
        })
    }

    pub fn current(&self) -> Arc<Vec<Arc<Loaded>>> {
        self.certs.load_full()
    }

    /// Puts `loaded` in place of the pair at position `i`.
    pub fn replace(&self, i: usize, loaded: Loaded) {
        let mut next: Vec<Arc<Loaded>> = self.certs.load().as_ref().clone();
        if let Some(slot) = next.get_mut(i) {
            *slot = Arc::new(loaded);
            self.certs.store(Arc::new(next));
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        let i = pick(
            certs.iter().map(|c| c.names.as_slice()),
            hello.server_name(),
        );
        certs.get(i).map(|c| c.key.clone())
    }
}

/// The rustls server config of the HTTPS listeners.
pub fn server_config(store: Arc<CertStore>, conf: &TlsConfig) -> Arc<ServerConfig> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match conf.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = if conf.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label_only() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(name_matches("example.com", "example.com"));
        assert!(!name_matches("example.com", "www.example.com"));
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let certs: Vec<Vec<String>> = vec![
            vec!["default.test".into()],
            vec!["*.api.test".into()],
            vec!["v1.api.test".into(), "other.test".into()],
        ];
        let names = || certs.iter().map(Vec::as_slice);
        assert_eq!(
            pick(names(), Some("v1.api.test")),
            2,
            "exact beats wildcard"
        );
        assert_eq!(pick(names(), Some("V2.API.test.")), 1);
        assert_eq!(pick(names(), Some("other.test")), 2);
        assert_eq!(pick(names(), Some("unknown.test")), 0);
        assert_eq!(pick(names(), None), 0);
    }
}
