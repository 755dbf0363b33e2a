//! `lb.tls.acme`, checked: the ACME server, the names to order (given, or
//! every exact host the routes name), the challenge, and where orders are
//! kept (a directory, or etcd with `lb.etcd`).

use std::path::PathBuf;

use super::check::Checker;
use super::schema::RawAcme;
use super::RouteConfig;
use crate::acme::{AcmeConfig, Challenge, Storage};
use crate::route::pattern::HostPattern;

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

pub(super) fn acme(a: &RawAcme, routes: &[RouteConfig], etcd: bool, c: &mut Checker) -> AcmeConfig {
    let key = "lb.tls.acme";
    let directory = a.directory.as_deref().unwrap_or(LETS_ENCRYPT).trim();
    if !directory.starts_with("https://") || directory.parse::<http::Uri>().is_err() {
        c.fail(
            &format!("{key}.directory"),
            format!("must be an https:// URL, e.g. {LETS_ENCRYPT}"),
        );
    }
    if let Some(email) = &a.email {
        let ok = email
            .split_once('@')
            .is_some_and(|(u, d)| !u.is_empty() && d.contains('.') && !email.contains(' '));
        if !ok {
            c.fail(&format!("{key}.email"), "must be an e-mail address");
        }
    }
    let mut domains: Vec<String> = Vec::new();
    for (i, d) in a.domains.iter().enumerate() {
        let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
        if let Err(why) = name(&d) {
            c.fail(&format!("{key}.domains[{i}]"), why);
        } else if !domains.contains(&d) {
            domains.push(d);
        }
    }
    if a.domains.is_empty() {
        for r in routes {
            if let Some(HostPattern::Exact(host)) = &r.matches.host {
                if name(host).is_ok() && !domains.contains(host) {
                    domains.push(host.clone());
                }
            }
        }
        if domains.is_empty() {
            c.fail(
                &format!("{key}.domains"),
                "no names to order: list them, or give routes exact hosts (`match: { host: … }`)",
            );
        }
    }
    if domains.len() > 100 {
        c.fail(
            &format!("{key}.domains"),
            "at most 100 names: one certificate carries them all",
        );
    }
    let challenge = match a.challenge.as_deref().map(str::trim) {
        None | Some("http-01") => Challenge::Http01,
        Some("tls-alpn-01") => Challenge::TlsAlpn01,
        Some(_) => {
            c.fail(
                &format!("{key}.challenge"),
                "must be http-01 or tls-alpn-01",
            );
            Challenge::Http01
        }
    };
    let storage = match (&a.storage, etcd) {
        (Some(_), true) => {
            c.fail(
                &format!("{key}.storage"),
                "with lb.etcd the fleet keeps its certificates in etcd: remove `storage`",
            );
            Storage::Etcd
        }
        (None, true) => Storage::Etcd,
        (Some(dir), false) => {
            let dir = PathBuf::from(dir.trim());
            if let Err(e) = std::fs::create_dir_all(&dir) {
                c.fail(
                    &format!("{key}.storage"),
                    format!("cannot create {}: {e}", dir.display()),
                );
            }
            Storage::Dir(dir)
        }
        (None, false) => {
            c.fail(
                &format!("{key}.storage"),
                "needed (a directory for the account and certificates), or lb.etcd for a fleet",
            );
            Storage::Dir(PathBuf::new())
        }
    };
    let directory_ca = a.directory_ca.as_ref().map(|p| {
        let path = PathBuf::from(p.trim());
        if let Err(why) = crate::tls::pem::ca_certificates(&path) {
            c.fail(&format!("{key}.directory_ca"), why);
        }
        path
    });
    AcmeConfig {
        directory: directory.to_string(),
        email: a.email.clone(),
        domains,
        challenge,
        storage,
        directory_ca,
    }
}

/// A name an ACME server issues for by HTTP-01 or TLS-ALPN-01: a DNS name of
/// two labels or more, no wildcard (those need DNS-01), not an address.
fn name(d: &str) -> Result<(), String> {
    if d.starts_with("*.") {
        return Err(format!(
            "{d}: a wildcard needs the DNS-01 challenge, not offered"
        ));
    }
    if d.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("{d}: an address, not a name"));
    }
    let labels_ok = d.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if !labels_ok || !d.contains('.') || d.len() > 253 {
        return Err(format!("{d}: not a DNS name of two labels or more"));
    }
    Ok(())
}
