//! Certificate files: a certificate/key pair read and checked (a chain, a
//! key that matches its leaf, the names and expiry it carries), and a CA
//! bundle for upstream peers. The config's checks use these too, so this file
//! depends on nothing of the config's.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Where a certificate and its key are (`lb.tls.certificates[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

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
    /// When it became valid, likewise.
    pub not_before: i64,
    /// Its issuer's common name (else the whole name).
    pub issuer: Option<String>,
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
    let facts = leaf_facts(leaf).map_err(|e| LoadError::cert(format!("{cert_file}: {e}")))?;
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
        names: facts.names,
        not_after: facts.not_after,
        not_before: facts.not_before,
        issuer: facts.issuer,
        key: Arc::new(certified),
        cert_pem,
        key_pem,
    })
}

/// What a leaf certificate says of itself, read in one parse.
struct LeafFacts {
    names: Vec<String>,
    not_before: i64,
    not_after: i64,
    issuer: Option<String>,
}

/// The leaf's DNS names, validity and issuer's common name (else the whole
/// issuer name).
fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<LeafFacts, String> {
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
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
        .or_else(|| Some(cert.issuer().to_string()));
    Ok(LeafFacts {
        names,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        issuer,
    })
}

/// Refuses a `ca` file whose certificate for `sni` is the upstream's own,
/// self-signed and marked CA:TRUE (as `openssl req -x509` makes one by
/// default): rustls never accepts a CA certificate as a server's own, so
/// every connection would fail; the message says how to make one that works.
pub fn check_pinned(path: &Path, sni: &str) -> Result<(), String> {
    let pem = read_ca_file(path)?;
    for der in CertificateDer::pem_slice_iter(&pem).flatten() {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
            continue;
        };
        let self_signed = cert.subject() == cert.issuer();
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|b| b.value.ca);
        let names = leaf_facts(&der).map(|f| f.names).unwrap_or_default();
        if self_signed && is_ca && names.iter().any(|n| n.eq_ignore_ascii_case(sni)) {
            return Err(format!(
                "{} is {sni}'s own self-signed certificate, marked CA:TRUE (as `openssl req \
                 -x509` makes it by default); TLS here never accepts a CA certificate as a \
                 server's own. Make it with CA:FALSE and give that file as `ca`: openssl req \
                 -x509 -newkey rsa:2048 -nodes -days 365 -keyout up.key -out up.crt -subj \
                 /CN={sni} -addext subjectAltName=DNS:{sni} -addext \
                 basicConstraints=critical,CA:FALSE",
                path.display()
            ));
        }
    }
    Ok(())
}

/// A CA file's bytes: a regular file of sane size only, for the path may
/// come from an etcd value, and /dev/zero or a FIFO would otherwise exhaust
/// memory or block.
fn read_ca_file(path: &Path) -> Result<Vec<u8>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() || meta.len() > MAX_CA_BYTES {
        return Err(format!(
            "{} is not a regular file of at most {} KiB",
            path.display(),
            MAX_CA_BYTES / 1024
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The largest CA bundle read (the system's whole bundle is about 220 KiB).
const MAX_CA_BYTES: u64 = 4 * 1024 * 1024;

/// The certificates in the PEM CA file at `path`, at least one.
pub fn ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_ca_file(path)?;
    let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not PEM certificates: {e}", path.display()))?;
    if ders.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(ders)
}

/// The CA certificates in the PEM file at `path`, as upstream peers take them.
pub fn load_ca(path: &Path) -> Result<Arc<pingora::protocols::tls::CaType>, String> {
    let ders = ca_certificates(path)?;
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
