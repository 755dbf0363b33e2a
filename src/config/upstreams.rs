//! The entries of a pool's `upstreams` (and an etcd value, checked the
//! same way): `addr`, `dns` or `srv`, a weight, a protocol.

use std::collections::HashSet;

use super::check::Checker;
use super::schema::*;
use super::*;

pub(super) fn upstreams(
    p: &str,
    raw: &[RawUpstream],
    from_etcd: bool,
    c: &mut Checker,
) -> (Vec<UpstreamConfig>, Vec<DiscoveredGroup>) {
    if raw.is_empty() && !from_etcd {
        c.fail(
            &format!("{p}.upstreams"),
            "needs at least one upstream (or lb.etcd to supply them)",
        );
    }
    let mut names = HashSet::new();
    let mut upstreams = Vec::new();
    let mut discovered = Vec::new();
    for (i, u) in raw.iter().enumerate() {
        let key = format!("{p}.upstreams[{i}]");
        let name = u.name.trim();
        // (Discovered members are named `{entry}@{address}`: `@` is theirs.)
        if let Err(why) = super::rules::upstream_name(name) {
            c.fail(&format!("{key}.name"), why);
        } else if !names.insert(name.to_string()) {
            c.fail(
                &format!("{key}.name"),
                format!("duplicate upstream name `{name}`"),
            );
        }
        let weight = c.at_least(&format!("{key}.weight"), u.weight, 1);
        if weight > 10_000 {
            c.fail(&format!("{key}.weight"), "must be at most 10000");
        }
        let weight = weight.min(10_000) as u32;
        // The host name the entry gives, if any: the default SNI.
        let host = u
            .addr
            .as_deref()
            .or(u.dns.as_deref())
            .and_then(|a| a.trim().rsplit_once(':').map(|(h, _)| h.to_string()))
            .filter(|h| h.parse::<std::net::IpAddr>().is_err() && !h.starts_with('['));
        let protocol = UpstreamProtocol {
            h2: u.h2,
            tls: u
                .tls
                .as_ref()
                .map(|t| upstream_tls(&format!("{key}.tls"), t, host, c)),
        };
        match (&u.addr, &u.dns, &u.srv) {
            (Some(addr), None, None) => {
                let addr = c.addr(&format!("{key}.addr"), addr).filter(|a| {
                    super::rules::upstream_addr(*a)
                        .map_err(|why| c.fail(&format!("{key}.addr"), why))
                        .is_ok()
                });
                if let Some(addr) = addr {
                    let mut conf = UpstreamConfig::new(name, addr, weight);
                    conf.protocol = protocol;
                    upstreams.push(conf);
                }
            }
            (None, Some(dns), None) => {
                if let Some(source) = dns_source(&format!("{key}.dns"), dns, c) {
                    discovered.push(DiscoveredGroup {
                        name: name.to_string(),
                        source,
                        weight,
                        protocol,
                    });
                }
            }
            (None, None, Some(srv)) => {
                let srv = srv.trim();
                if srv.is_empty() || srv.contains(':') {
                    c.fail(
                        &format!("{key}.srv"),
                        format!("`{srv}` is not an SRV name; write e.g. _http._tcp.api.internal"),
                    );
                } else {
                    discovered.push(DiscoveredGroup {
                        name: name.to_string(),
                        source: DiscoverySource::Srv {
                            name: srv.to_string(),
                        },
                        weight,
                        protocol,
                    });
                }
            }
            _ => c.fail(
                &key,
                "needs exactly one of addr (ip:port), dns (host:port) or srv (_service._proto.domain)",
            ),
        }
    }
    (upstreams, discovered)
}

/// An upstream's `tls:`: SNI defaults to the entry's host name; verifying
/// (the default) needs a name to check the certificate against; `ca` must
/// hold PEM certificates.
fn upstream_tls(
    key: &str,
    t: &RawUpstreamTls,
    host: Option<String>,
    c: &mut Checker,
) -> UpstreamTls {
    let verify = t.verify.unwrap_or(true);
    let sni = t
        .sni
        .as_deref()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or(host)
        .unwrap_or_default();
    if verify && sni.is_empty() {
        c.fail(
            &format!("{key}.sni"),
            "needed to verify the certificate of an upstream given by IP address \
             (or write verify: false)",
        );
    }
    let ca_path = t.ca.as_deref().map(|p| std::path::PathBuf::from(p.trim()));
    let ca = ca_path.as_ref().and_then(|path| {
        let pinned = if verify && !sni.is_empty() {
            crate::tls::pem::check_pinned(path, &sni)
        } else {
            Ok(())
        };
        match pinned.and_then(|()| crate::tls::pem::load_ca(path)) {
            Ok(ca) => Some(ca),
            Err(why) => {
                c.fail(&format!("{key}.ca"), why);
                None
            }
        }
    });
    UpstreamTls {
        sni,
        verify,
        ca_path,
        ca,
    }
}

/// `dns: "host:port"`.
fn dns_source(key: &str, text: &str, c: &mut Checker) -> Option<DiscoverySource> {
    let text = text.trim();
    let parsed = text.rsplit_once(':').and_then(|(host, port)| {
        let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (!host.is_empty() && !host.chars().any(char::is_whitespace)).then(|| DiscoverySource::Dns {
            host: host.to_string(),
            port,
        })
    });
    if parsed.is_none() {
        c.fail(
            key,
            format!("`{text}` is not host:port; write e.g. api.internal:8080"),
        );
    }
    parsed
}
