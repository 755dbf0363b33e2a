//! TLS termination on rustls (Pingora's `rustls` backend): the certificate
//! store, picking a certificate by SNI against the names each carries
//! (wildcards too; the first is the default), and the server config built on
//! it. `rotation` replaces a pair when its files change on disk;
//! `client_cert` asks clients for certificates (`client_auth`).

pub mod client_cert;
pub mod listener;
pub mod pem;
pub mod rotation;

pub use pem::{from_pem, load, load_ca, CertificatePaths, LoadError, Loaded};

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::{TlsConfig, TlsVersion};

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
#[derive(Debug, Default)]
pub struct CertStore {
    certs: ArcSwap<Vec<Arc<Loaded>>>,
    /// Certificates ACME ordered: before the files' for the names they carry.
    managed: ArcSwap<Vec<Arc<Loaded>>>,
    /// TLS-ALPN-01 challenge certificates, by the name being validated.
    alpn: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

/// The ALPN protocol of an ACME server's TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

impl CertStore {
    /// Loads every configured pair (checked already when the config was).
    pub fn load_all(paths: &[CertificatePaths]) -> Result<Self, LoadError> {
        let certs = paths
            .iter()
            .map(|p| load(p).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CertStore {
            certs: ArcSwap::from_pointee(certs),
            ..CertStore::default()
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

    /// The certificates ACME ordered.
    pub fn managed(&self) -> Arc<Vec<Arc<Loaded>>> {
        self.managed.load_full()
    }

    /// Serves `loaded` (ordered by ACME) from now on, in place of the one
    /// before it for the same names.
    pub fn set_managed(&self, loaded: Loaded) {
        self.managed.store(Arc::new(vec![Arc::new(loaded)]));
    }

    /// Answers TLS-ALPN-01 for `name` with `cert` (None: no longer).
    pub fn set_alpn(&self, name: &str, cert: Option<Arc<CertifiedKey>>) {
        let mut next: HashMap<String, Arc<CertifiedKey>> = self.alpn.load().as_ref().clone();
        match cert {
            Some(c) => next.insert(name.to_string(), c),
            None => next.remove(name),
        };
        self.alpn.store(Arc::new(next));
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(|s| s.to_ascii_lowercase());
        if hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN))
        {
            // An ACME server's validation: its challenge certificate or none.
            return self.alpn.load().get(sni.as_deref()?).cloned();
        }
        let managed = self.managed.load();
        if let Some(host) = &sni {
            let i = pick(managed.iter().map(|c| c.names.as_slice()), Some(host));
            if let Some(c) = managed
                .get(i)
                .filter(|c| c.names.iter().any(|n| name_matches(n, host)))
            {
                return Some(c.key.clone());
            }
        }
        let certs = self.certs.load();
        if certs.is_empty() {
            return managed.first().map(|c| c.key.clone());
        }
        let i = pick(certs.iter().map(|c| c.names.as_slice()), sni.as_deref());
        certs.get(i).map(|c| c.key.clone())
    }
}

/// The rustls server config of the HTTPS listeners; Err when the client
/// CA cannot be loaded.
pub fn server_config(store: Arc<CertStore>, conf: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match conf.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .expect("ring supports TLS 1.2 and 1.3");
    let builder = match &conf.client_auth {
        Some(auth) => builder.with_client_cert_verifier(client_cert::verifier(auth, provider)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(store);
    if conf.client_auth.is_some() {
        // A resumed session would stand for the certificate it began with
        // for as long as rustls's cache keeps it, past that certificate's
        // expiry: with client certificates every connection verifies anew.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    config.alpn_protocols = if conf.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    if conf
        .acme
        .as_ref()
        .is_some_and(|a| a.challenge == crate::acme::Challenge::TlsAlpn01)
    {
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    Ok(Arc::new(config))
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
