//! `lb.etcd` checked into [`EtcdConfig`]: endpoints, prefix, this instance's
//! id, the user and password, and TLS to etcd (read at load).

use super::check::Checker;
use super::schema::{RawEtcd, RawEtcdTls};
use super::{CertificatePaths, EtcdConfig, EtcdTls};

/// `lb.etcd`: at least one endpoint, a prefix ending in `/`, a user and a
/// password together. The id defaults to the host's name.
pub(super) fn etcd(e: &RawEtcd, c: &mut Checker) -> EtcdConfig {
    if e.endpoints.is_empty() {
        c.fail(
            "lb.etcd.endpoints",
            "needs at least one address, e.g. 127.0.0.1:2379",
        );
    }
    let tls = e.tls.as_ref().and_then(|t| etcd_tls(t, c));
    for (i, ep) in e.endpoints.iter().enumerate() {
        let ep = ep.trim();
        let bare = ep
            .trim_start_matches("http://")
            .trim_start_matches("https://");
        if ep.starts_with("https://") && e.tls.is_none() {
            c.fail(
                &format!("lb.etcd.endpoints[{i}]"),
                "https:// needs lb.etcd.tls (at least its ca)",
            );
        } else if ep.starts_with("http://") && e.tls.is_some() {
            c.fail(
                &format!("lb.etcd.endpoints[{i}]"),
                "http:// with lb.etcd.tls set; write host:port or https://host:port",
            );
        } else if bare
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            c.fail(
                &format!("lb.etcd.endpoints[{i}]"),
                format!("`{ep}` is not host:port; write e.g. 127.0.0.1:2379"),
            );
        }
    }
    let prefix = e.prefix.trim();
    if !prefix.ends_with('/') {
        c.fail(
            "lb.etcd.prefix",
            format!("`{prefix}` must end with `/`, e.g. /hybrid-lb/"),
        );
    }
    let id =
        e.id.as_deref()
            .map(str::trim)
            .map(str::to_string)
            .unwrap_or_else(default_instance_id);
    if id.is_empty() || id.contains('/') || id.chars().any(char::is_whitespace) {
        c.fail(
            "lb.etcd.id",
            format!("`{id}` must be a non-empty name without `/` or spaces"),
        );
    }
    let auth = c
        .pair(
            ("lb.etcd.username", &e.username),
            ("lb.etcd.password", &e.password),
        )
        .ok()
        .flatten()
        .map(|(u, p)| (u.clone(), p.clone()));
    EtcdConfig {
        endpoints: e.endpoints.iter().map(|s| s.trim().to_string()).collect(),
        prefix: prefix.to_string(),
        id,
        auth,
        tls,
    }
}

/// `lb.etcd.tls`: the CA must hold certificates; a client certificate and its
/// key come together and must match.
fn etcd_tls(t: &RawEtcdTls, c: &mut Checker) -> Option<EtcdTls> {
    let ca_path = std::path::Path::new(t.ca.trim());
    let ca = match crate::tls::pem::load_ca(ca_path) {
        Ok(_) => std::fs::read(ca_path).ok(),
        Err(why) => {
            c.fail("lb.etcd.tls.ca", why);
            None
        }
    };
    let pair = c.pair(("lb.etcd.tls.cert", &t.cert), ("lb.etcd.tls.key", &t.key));
    let identity = match pair {
        Ok(Some((cert, key))) => {
            let paths = CertificatePaths {
                cert: cert.trim().into(),
                key: key.trim().into(),
            };
            match crate::tls::pem::load(&paths) {
                Ok(loaded) => Some((loaded.cert_pem, loaded.key_pem)),
                Err(why) => {
                    c.fail(&format!("lb.etcd.tls.{}", why.part()), why.to_string());
                    None
                }
            }
        }
        _ => None,
    };
    let ok = ca.is_some() && (identity.is_some() || matches!(pair, Ok(None)));
    ok.then(|| EtcdTls {
        ca: ca.unwrap_or_default(),
        identity,
    })
}

/// The host's name and the process id: unique among instances on one host.
fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "hybrid-lb".into()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}
