//! Client certificates (`lb.tls.client_auth`): the verifier the HTTPS
//! listeners ask for them with, and what a verified one tells the upstream,
//! `X-Client-Cert-Subject` (in the manner of Envoy's
//! `X-Forwarded-Client-Cert`: `Subject="CN=alice,O=Example";DNS=alice.example.com`).

use std::any::Any;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use x509_parser::extensions::GeneralName;

/// The header the upstream reads a verified client certificate from; a
/// client's own is always removed.
pub const HEADER: &str = "x-client-cert-subject";

/// `lb.tls.client_auth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// The CA (PEM) client certificates must chain to.
    pub ca: std::path::PathBuf,
    /// Without a certificate a client is refused at the handshake; else it
    /// is served, without the header.
    pub required: bool,
}

/// The verifier of client certificates against `ca`.
pub fn verifier(
    auth: &ClientAuth,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for der in super::pem::ca_certificates(&auth.ca)? {
        roots
            .add(der)
            .map_err(|e| format!("{}: {e}", auth.ca.display()))?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if auth.required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder
        .build()
        .map_err(|e| format!("{}: {e}", auth.ca.display()))
}

/// Checks the CA file of `lb.tls.client_auth` as the listener will load it.
pub fn check(ca: &Path) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let auth = ClientAuth {
        ca: ca.to_path_buf(),
        required: true,
    };
    verifier(&auth, provider).map(|_| ())
}

/// A verified client certificate, as the connection's TLS digest carries it.
#[derive(Debug)]
pub struct ClientCert {
    /// The value of [`HEADER`].
    pub header: http::HeaderValue,
}

/// Puts a verified client certificate into the connection's digest once
/// the handshake is done.
pub struct Callbacks;

#[async_trait]
impl TlsAccept for Callbacks {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        // rustls has verified the chain by now: a certificate here is one
        // the CA issued.
        let value = describe(tls.peer_certificate_der()?)?;
        let header = http::HeaderValue::from_str(&value).ok()?;
        Some(Arc::new(ClientCert { header }))
    }
}

/// Replaces any [`HEADER`] the client sent with its connection's verified
/// certificate's, if it has one.
pub fn forward(
    digest: Option<&pingora::protocols::Digest>,
    req: &mut pingora::http::RequestHeader,
) -> pingora::Result<()> {
    crate::forwarding::remove_claims(req, &[http::HeaderName::from_static(HEADER)]);
    let cert = digest
        .and_then(|d| d.ssl_digest.as_ref())
        .and_then(|s| s.extension.get::<ClientCert>());
    if let Some(cert) = cert {
        req.insert_header(HEADER, cert.header.clone())?;
    }
    Ok(())
}

/// `Subject="<RFC 4514 name>"` then each subject alternative name as
/// `DNS=`, `URI=`, `Email=` or `IP=`, joined by `;`; None if `der` does not
/// parse. Quotes and backslashes are escaped, and bytes outside printable
/// ASCII written `\XX` (RFC 4514), so the value is always a valid header.
pub fn describe(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut out = format!("Subject=\"{}\"", escape(&rfc4514(cert.subject())?));
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            let (kind, value) = match name {
                GeneralName::DNSName(d) => ("DNS", d.to_string()),
                GeneralName::URI(u) => ("URI", u.to_string()),
                GeneralName::RFC822Name(e) => ("Email", e.to_string()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => (
                        "IP",
                        std::net::IpAddr::from(<[u8; 4]>::try_from(*ip).ok()?).to_string(),
                    ),
                    16 => (
                        "IP",
                        std::net::IpAddr::from(<[u8; 16]>::try_from(*ip).ok()?).to_string(),
                    ),
                    _ => continue,
                },
                _ => continue,
            };
            out.push_str(&format!(";{kind}={}", escape(&value)));
        }
    }
    Some(out)
}

/// The name as RFC 4514 writes it: its RDNs last first, joined by `,`, an
/// RDN's attributes by `+`, each value with `,` `+` `"` `\\` `<` `>` `;`
/// (and a leading `#` or space, a trailing space) escaped, so no value can
/// pass for another attribute.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> Option<String> {
    let registry = x509_parser::objects::oid_registry();
    let mut rdns = Vec::new();
    for rdn in name.iter_rdn() {
        let mut parts = Vec::new();
        for attr in rdn.iter() {
            let oid = attr.attr_type();
            let kind = x509_parser::objects::oid2abbrev(oid, registry)
                .map(str::to_string)
                .unwrap_or_else(|_| oid.to_id_string());
            let value = attr.as_str().ok()?;
            parts.push(format!("{kind}={}", escape_value(value)));
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'"' | b'\\' | b';' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example Corp");
        params.subject_alt_names = sans;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_subject_and_every_kind_of_alternative_name_are_told() {
        let der = cert(
            "alice",
            vec![
                rcgen::SanType::DnsName("alice.example.com".try_into().unwrap()),
                rcgen::SanType::URI("spiffe://example.com/alice".try_into().unwrap()),
                rcgen::SanType::Rfc822Name("alice@example.com".try_into().unwrap()),
                rcgen::SanType::IpAddress("10.0.0.7".parse().unwrap()),
            ],
        );
        let told = describe(&der).unwrap();
        assert!(told.starts_with("Subject=\""), "{told}");
        assert!(told.contains("CN=alice"), "{told}");
        assert!(told.contains("O=Example Corp"), "{told}");
        assert!(
            told.ends_with(
                ";DNS=alice.example.com;URI=spiffe://example.com/alice;Email=alice@example.com;IP=10.0.0.7"
            ),
            "{told}"
        );
        assert!(http::HeaderValue::from_str(&told).is_ok());
    }

    #[test]
    fn a_value_cannot_pass_for_another_attribute() {
        let two = describe(&cert("admin", vec![])).unwrap();
        let one = describe(&cert("admin, O=Example Corp", vec![])).unwrap();
        assert_ne!(one, two);
        assert!(one.contains("CN=admin\\\\, O=Example Corp"), "{one}");
    }

    #[test]
    fn quotes_separators_and_other_scripts_cannot_break_the_header() {
        let told = describe(&cert("Zoë \"the\"; admin\\", vec![])).unwrap();
        assert!(http::HeaderValue::from_str(&told).is_ok(), "{told}");
        assert!(told.contains("Zo\\C3\\AB"), "{told}");
        // The quoted subject ends at the last character: no quote inside it
        // is left unescaped.
        let inner = told.strip_prefix("Subject=\"").unwrap();
        let mut escaped = false;
        let close = inner.char_indices().find_map(|(i, c)| {
            let end = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            end.then_some(i)
        });
        assert_eq!(close, Some(inner.len() - 1), "{told}");
        assert_eq!(describe(b"not a certificate"), None);
    }
}
