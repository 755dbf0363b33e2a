//! Turns the raw file into the validated [`Config`], one section at a time;
//! every problem found is recorded with its key and line.

use std::net::SocketAddr;

use pingora::server::configuration::ServerConf;

use super::check::Checker;
use super::limits::{limits, validate_demo};
use super::schema::*;
use super::*;

/// Pingora ignores top-level keys it does not know; we refuse them, so that a typo
/// such as `dashbaord:` is not silently dropped, and name the key probably meant.
pub(super) fn check_top_level(index: &super::lines::LineIndex) -> Vec<Problem> {
    let pingora_keys: Vec<String> = match serde_yaml::to_value(ServerConf::default()) {
        Ok(serde_yaml::Value::Mapping(m)) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let ours = ["lb", "dashboard", "demo"];
    let known: Vec<String> = ours
        .iter()
        .map(|k| k.to_string())
        .chain(pingora_keys.iter().cloned())
        .collect();
    let mut problems = Vec::new();
    for (key, line) in index.top_level_keys() {
        if pingora_keys.is_empty() || known.contains(key) {
            continue;
        }
        let message = match super::unknown::meant(key, &known) {
            Some(meant) => format!("unknown key, did you mean `{meant}`?"),
            None => {
                "unknown key (ours are lb, dashboard, demo; the rest are Pingora's server keys)"
                    .into()
            }
        };
        problems.push(Problem {
            key: key.clone(),
            message,
            line: Some(*line),
        });
    }
    problems
}

pub(super) fn validate(raw: RawFile, c: &mut Checker) -> Config {
    let lb = validate_lb(raw.lb, c);
    let d = raw.dashboard;
    let dashboard = DashboardConfig {
        listen: c
            .addr("dashboard.listen", &d.listen)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 5000))),
        admin_token: d.admin_token.filter(|t| !t.is_empty()),
        hosts: d
            .hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect(),
    };
    let demo = raw.demo.map(|d| validate_demo(d, c));
    let config = Config {
        lb,
        dashboard,
        demo,
    };
    let own = config.own_addrs();
    for (pool, u) in config
        .lb
        .pools
        .iter()
        .flat_map(|p| p.upstreams.iter().map(move |u| (p, u)))
    {
        if super::rules::is_own(u.addr, &own) {
            c.fail(
                &pool_key(&pool.name, "upstreams"),
                format!(
                    "`{}` is at {}, this balancer's own listener: requests would loop",
                    u.name, u.addr
                ),
            );
        }
    }
    config
}

/// Where a pool's keys sit: `lb` for `default`, else `lb.pools.{name}`.
pub(super) fn pool_key(pool: &str, key: &str) -> String {
    if pool == DEFAULT_POOL {
        format!("lb.{key}")
    } else {
        format!("lb.pools.{pool}.{key}")
    }
}

/// An upstream's name is unique across pools: it names its metric series,
/// its events and its dashboard row.
fn unique_across_pools(pools: &[PoolConfig], c: &mut Checker) {
    let mut seen: std::collections::HashMap<&str, &str> = Default::default();
    for pool in pools {
        let names = pool
            .upstreams
            .iter()
            .map(|u| u.name.as_str())
            .chain(pool.discovered.iter().map(|g| g.name.as_str()));
        for name in names {
            match seen.insert(name, &pool.name) {
                Some(other) if other != pool.name => c.fail(
                    &pool_key(&pool.name, "upstreams"),
                    format!(
                        "upstream `{name}` is also in pool `{other}`: upstream names are unique \
                         across pools (they name metric series and dashboard rows)"
                    ),
                ),
                _ => {}
            }
        }
    }
}

fn validate_lb(raw: RawLb, c: &mut Checker) -> LbConfig {
    let (own_pool, raw) = super::pools::split(raw);
    if raw.listen.is_empty() {
        c.fail("lb.listen", "needs at least one address");
    }
    let listen = raw
        .listen
        .iter()
        .enumerate()
        .filter_map(|(i, a)| c.addr(&format!("lb.listen[{i}]"), a))
        .collect();

    let etcd = raw.etcd.as_ref().map(|e| super::etcd::etcd(e, c));
    let limits = limits(&raw.limits, c);
    // `default` is needed unless named pools take every request: it is
    // checked for upstreams only when it has some, or nothing else is named.
    let named = !raw.pools.is_empty();
    let default_needed = !named || !own_pool.upstreams.is_empty();
    let default = super::pools::pool(
        DEFAULT_POOL,
        "lb",
        own_pool,
        etcd.is_some() || !default_needed,
        limits.max_upstreams,
        c,
    );
    let timeouts = default.timeouts.clone();
    let mut pools = vec![default];
    // In file order, for the dashboard and the errors.
    let mut raw_pools: Vec<(String, RawPool)> = raw.pools.into_iter().collect();
    raw_pools.sort_by_key(|(name, _)| c.index.line_of(&format!("lb.pools.{name}")));
    for (name, raw_pool) in raw_pools {
        let key = format!("lb.pools.{name}");
        super::pools::pool_name(&key, &name, c);
        pools.push(super::pools::pool(
            &name,
            &key,
            raw_pool,
            etcd.is_some(),
            limits.max_upstreams,
            c,
        ));
    }
    unique_across_pools(&pools, c);
    let names: Vec<String> = pools.iter().map(|p| p.name.clone()).collect();
    let routes = super::routes::routes(raw.routes.as_deref(), &names, c);
    let tls = raw.tls.as_ref().map(|t| tls(t, &routes, etcd.is_some(), c));
    LbConfig {
        listen,
        h2c: raw.h2c,
        proxy_protocol: raw.proxy_protocol.as_ref().map(|p| {
            if p.trusted.is_empty() {
                c.fail(
                    "lb.proxy_protocol.trusted",
                    "list the proxies that send the header (e.g. your load balancer's subnet); \
                     a header from any other peer closes its connection",
                );
            }
            c.cidrs("lb.proxy_protocol.trusted", &p.trusted)
        }),
        tls,
        trusted_proxies: c.cidrs("lb.trusted_proxies", &raw.trusted_proxies),
        discovery: discovery(&raw.discovery, c),
        timeouts,
        pools,
        routes,
        limits,
        rate_limit: raw
            .rate_limit
            .as_ref()
            .map(|r| super::limits::rate_limit("lb.rate_limit", r, c)),
        access_log: raw.access_log.as_ref().map(|a| access_log(a, c)),
        etcd,
    }
}

/// The log's path; a file must be writable now (as `-t` checks it).
fn access_log(a: &RawAccessLog, c: &mut Checker) -> String {
    let path = a.path.trim();
    if path.is_empty() {
        c.fail("lb.access_log.path", "must be a file or \"-\" for stdout");
    } else if path != "-" {
        let opened = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        if let Err(e) = opened {
            c.fail("lb.access_log.path", format!("cannot open {path}: {e}"));
        }
    }
    path.to_string()
}

fn tls(t: &RawTls, routes: &[RouteConfig], etcd: bool, c: &mut Checker) -> TlsConfig {
    if t.listen.is_empty() {
        c.fail("lb.tls.listen", "needs at least one address");
    }
    let listen = t
        .listen
        .iter()
        .enumerate()
        .filter_map(|(i, a)| c.addr(&format!("lb.tls.listen[{i}]"), a))
        .collect();
    let acme = t
        .acme
        .as_ref()
        .map(|a| super::acme::acme(a, routes, etcd, c));
    if t.certificates.is_empty() && acme.is_none() {
        c.fail(
            "lb.tls.certificates",
            "needs at least one { cert, key } pair (PEM files), or `acme` to order them",
        );
    }
    let mut certificates = Vec::new();
    for (i, pair) in t.certificates.iter().enumerate() {
        let key = format!("lb.tls.certificates[{i}]");
        let paths = CertificatePaths {
            cert: pair.cert.trim().into(),
            key: pair.key.trim().into(),
        };
        // Checked now, so `-t` and a reload refuse a pair that cannot serve.
        if let Err(why) = crate::tls::pem::load(&paths) {
            c.fail(&format!("{key}.{}", why.part()), why.to_string());
        }
        certificates.push(paths);
    }
    let client_auth = t.client_auth.as_ref().map(|a| {
        let ca = std::path::PathBuf::from(a.ca.trim());
        if let Err(why) = crate::tls::client_cert::check(&ca) {
            c.fail("lb.tls.client_auth.ca", why);
        }
        crate::tls::client_cert::ClientAuth {
            ca,
            required: a.required,
        }
    });
    TlsConfig {
        listen,
        certificates,
        http2: t.http2,
        min_version: t.min_version,
        redirect_http: t.redirect_http,
        client_auth,
        acme,
    }
}

fn discovery(d: &RawDiscovery, c: &mut Checker) -> DiscoveryConfig {
    let resolvers = d
        .resolvers
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let key = format!("lb.discovery.resolvers[{i}]");
            match r.trim().parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    c.fail(
                        &key,
                        format!(
                            "`{r}` is not a name server address; write ip:port, e.g. 10.0.0.2:53"
                        ),
                    );
                    None
                }
            }
        })
        .collect();
    let refresh = c.duration("lb.discovery.refresh", &d.refresh);
    if !refresh.is_zero() && refresh < std::time::Duration::from_millis(100) {
        c.fail("lb.discovery.refresh", "must be at least 100ms");
    }
    DiscoveryConfig { resolvers, refresh }
}
