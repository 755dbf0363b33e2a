//! The answers to an ACME server's validations while an order is open:
//! HTTP-01 (`GET /.well-known/acme-challenge/{token}` on the plain
//! listeners, answered before routes and redirects) and TLS-ALPN-01 (a
//! certificate for the name with the key authorization's digest, RFC 8737,
//! served to a handshake offering `acme-tls/1`). In a fleet each is also
//! stored, so whichever instance the server reaches answers it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::store::Store;
use crate::tls::CertStore;

/// The path HTTP-01 validations ask under.
pub const HTTP_PREFIX: &str = "/.well-known/acme-challenge/";

const HTTP_KEYS: &str = "challenges/http/";
const ALPN_KEYS: &str = "challenges/alpn/";

pub struct Challenges {
    /// Key authorizations by token, of this instance's orders.
    http: Mutex<HashMap<String, String>>,
    /// Those of the fleet's other instances, as last read from etcd.
    followed: Mutex<HashMap<String, String>>,
    /// Digests by name, as last published (so a certificate is made once).
    alpn: Mutex<HashMap<String, Vec<u8>>>,
    certs: Arc<CertStore>,
    store: Arc<Store>,
}

impl Challenges {
    pub fn new(certs: Arc<CertStore>, store: Arc<Store>) -> Self {
        Challenges {
            http: Mutex::default(),
            followed: Mutex::default(),
            alpn: Mutex::default(),
            certs,
            store,
        }
    }

    /// The key authorization for `token`: published here, or (in a fleet)
    /// by the instance that ordered, as last followed. Answered from memory
    /// alone, so a request for a made-up token costs etcd nothing.
    pub fn http_answer(&self, token: &str) -> Option<String> {
        let own = self.http.lock().ok()?.get(token).cloned();
        own.or_else(|| self.followed.lock().ok()?.get(token).cloned())
    }

    /// Answers HTTP-01 for `token` from now on.
    pub async fn publish_http(&self, token: &str, key_authorization: &str) -> Result<(), String> {
        if let Ok(mut m) = self.http.lock() {
            m.insert(token.to_string(), key_authorization.to_string());
        }
        if self.store.shared() {
            let key = format!("{HTTP_KEYS}{token}");
            self.store.put(&key, key_authorization.as_bytes()).await?;
        }
        Ok(())
    }

    /// Answers TLS-ALPN-01 for `name` with `digest` from now on.
    pub async fn publish_alpn(&self, name: &str, digest: &[u8]) -> Result<(), String> {
        self.install_alpn(name, digest)?;
        if self.store.shared() {
            let key = format!("{ALPN_KEYS}{name}");
            self.store.put(&key, digest).await?;
        }
        Ok(())
    }

    fn install_alpn(&self, name: &str, digest: &[u8]) -> Result<(), String> {
        let mut known = self.alpn.lock().map_err(|e| e.to_string())?;
        if known.get(name).is_some_and(|d| d == digest) {
            return Ok(());
        }
        self.certs
            .set_alpn(name, Some(alpn_certificate(name, digest)?));
        known.insert(name.to_string(), digest.to_vec());
        Ok(())
    }

    /// Stops answering for `token` and `name` (the order is over).
    pub async fn withdraw(&self, tokens: &[String], names: &[String]) {
        if let Ok(mut m) = self.http.lock() {
            for t in tokens {
                m.remove(t);
            }
        }
        if let Ok(mut m) = self.alpn.lock() {
            for n in names {
                m.remove(n);
                self.certs.set_alpn(n, None);
            }
        }
        if self.store.shared() {
            for t in tokens {
                let _ = self.store.delete(&format!("{HTTP_KEYS}{t}")).await;
            }
            for n in names {
                let _ = self.store.delete(&format!("{ALPN_KEYS}{n}")).await;
            }
        }
    }

    /// In a fleet: takes up the challenges another instance stored (and
    /// drops those it withdrew), so a validation reaching this instance is
    /// answered too; the ordering instance gives them time to spread before
    /// it tells the server.
    pub async fn follow(&self) -> Result<(), String> {
        if !self.store.shared() {
            return Ok(());
        }
        let tokens: HashMap<String, String> = self
            .store
            .list(HTTP_KEYS)
            .await?
            .into_iter()
            .filter_map(|(key, v)| {
                let token = key.strip_prefix(HTTP_KEYS)?.to_string();
                Some((token, String::from_utf8(v).ok()?))
            })
            .collect();
        if let Ok(mut m) = self.followed.lock() {
            *m = tokens;
        }
        let stored = self.store.list(ALPN_KEYS).await?;
        let mut present = Vec::new();
        for (key, digest) in stored {
            let name = key.trim_start_matches(ALPN_KEYS).to_string();
            self.install_alpn(&name, &digest)?;
            present.push(name);
        }
        let gone: Vec<String> = self
            .alpn
            .lock()
            .map_err(|e| e.to_string())?
            .keys()
            .filter(|n| !present.contains(n))
            .cloned()
            .collect();
        if let Ok(mut m) = self.alpn.lock() {
            for n in &gone {
                m.remove(n);
                self.certs.set_alpn(n, None);
            }
        }
        Ok(())
    }
}

/// The self-signed certificate of a TLS-ALPN-01 answer: `name` alone, and
/// the critical acmeIdentifier extension holding `digest`.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}
