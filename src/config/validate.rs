//! Turns the raw file into the validated [`Config`], one section at a time;
//! every problem found is recorded with its key and line.

use std::collections::HashSet;
use std::net::SocketAddr;

use pingora::server::configuration::ServerConf;

use super::check::Checker;
use super::limits::{limits, validate_demo};
use super::schema::*;
use super::*;

/// Pingora ignores top-level keys it does not know; we refuse them, so that a typo
/// such as `dashbaord:` is not silently dropped.
pub(super) fn check_top_level(c: &mut Checker) {
    let pingora_keys: HashSet<String> = match serde_yaml::to_value(ServerConf::default()) {
        Ok(serde_yaml::Value::Mapping(m)) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
        _ => HashSet::new(),
    };
    let keys: Vec<(String, usize)> = c.index.top_level_keys().to_vec();
    for (key, line) in keys {
        let ours = matches!(key.as_str(), "lb" | "dashboard" | "demo");
        if !ours && !pingora_keys.is_empty() && !pingora_keys.contains(&key) {
            c.problems.push(Problem {
                key: key.clone(),
                message:
                    "unknown key (ours are lb, dashboard, demo; the rest are Pingora's server keys)"
                        .into(),
                line: Some(line),
            });
        }
    }
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
    for u in &config.lb.upstreams {
        if super::rules::is_own(u.addr, &own) {
            c.fail(
                "lb.upstreams",
                format!(
                    "`{}` is at {}, this balancer's own listener: requests would loop",
                    u.name, u.addr
                ),
            );
        }
    }
    config
}

fn validate_lb(raw: RawLb, c: &mut Checker) -> LbConfig {
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
    let (upstreams, discovered) = upstreams(&raw.upstreams, etcd.is_some(), c);
    let limits = limits(&raw.limits, c);
    if raw.upstreams.len() > limits.max_upstreams {
        c.fail(
            "lb.upstreams",
            format!(
                "{} entries, over lb.limits.max_upstreams ({})",
                raw.upstreams.len(),
                limits.max_upstreams
            ),
        );
    }
    LbConfig {
        listen,
        h2c: raw.h2c,
        tls: raw.tls.as_ref().map(|t| tls(t, c)),
        algorithm: raw.algorithm,
        trusted_proxies: trusted_proxies(&raw.trusted_proxies, c),
        upstreams,
        discovered,
        discovery: discovery(&raw.discovery, c),
        health_check: health_check(raw.health_check, c),
        circuit_breaker: circuit_breaker(raw.circuit_breaker, c),
        outlier: outlier(&raw.outlier, c),
        dynamic_weights: dynamic_weights(raw.dynamic_weights, c),
        sticky: sticky(raw.sticky, c),
        retries: c.at_least("lb.retries", raw.retries, 0) as usize,
        slow_start: c.duration_or_zero("lb.slow_start", &raw.slow_start),
        retry_on: retry_on(&raw.retry_on, c),
        retry_budget: retry_budget(&raw.retry_budget, c),
        timeouts: TimeoutsConfig {
            connect: c.duration("lb.timeouts.connect", &raw.timeouts.connect),
            read: c.duration("lb.timeouts.read", &raw.timeouts.read),
        },
        limits,
        rate_limit: raw.rate_limit.as_ref().map(|r| rate_limit(r, c)),
        access_log: raw.access_log.as_ref().map(|a| access_log(a, c)),
        etcd,
    }
}

fn rate_limit(r: &RawRateLimit, c: &mut Checker) -> RateLimitConfig {
    if !(r.requests_per_sec > 0.0 && r.requests_per_sec.is_finite()) {
        c.fail("lb.rate_limit.requests_per_sec", "must be above 0");
    }
    let rps = r.requests_per_sec.max(f64::MIN_POSITIVE);
    let burst = r.burst.unwrap_or(rps);
    if !(burst >= rps && burst.is_finite()) {
        c.fail(
            "lb.rate_limit.burst",
            "must be at least lb.rate_limit.requests_per_sec",
        );
    }
    RateLimitConfig {
        requests_per_sec: rps,
        burst: burst.max(rps),
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

pub(super) fn upstreams(
    raw: &[RawUpstream],
    from_etcd: bool,
    c: &mut Checker,
) -> (Vec<UpstreamConfig>, Vec<DiscoveredGroup>) {
    if raw.is_empty() && !from_etcd {
        c.fail(
            "lb.upstreams",
            "needs at least one upstream (or lb.etcd to supply them)",
        );
    }
    let mut names = HashSet::new();
    let mut upstreams = Vec::new();
    let mut discovered = Vec::new();
    for (i, u) in raw.iter().enumerate() {
        let key = format!("lb.upstreams[{i}]");
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
    let ca = ca_path
        .as_ref()
        .and_then(|path| match crate::tls::pem::load_ca(path) {
            Ok(ca) => Some(ca),
            Err(why) => {
                c.fail(&format!("{key}.ca"), why);
                None
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

fn tls(t: &RawTls, c: &mut Checker) -> TlsConfig {
    if t.listen.is_empty() {
        c.fail("lb.tls.listen", "needs at least one address");
    }
    let listen = t
        .listen
        .iter()
        .enumerate()
        .filter_map(|(i, a)| c.addr(&format!("lb.tls.listen[{i}]"), a))
        .collect();
    if t.certificates.is_empty() {
        c.fail(
            "lb.tls.certificates",
            "needs at least one { cert, key } pair (PEM files)",
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
    TlsConfig {
        listen,
        certificates,
        http2: t.http2,
        min_version: t.min_version,
        redirect_http: t.redirect_http,
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

fn health_check(h: RawHealthCheck, c: &mut Checker) -> HealthCheckConfig {
    if !h.path.starts_with('/') {
        c.fail("lb.health_check.path", "must start with /");
    }
    HealthCheckConfig {
        interval: c.duration("lb.health_check.interval", &h.interval),
        timeout: c.duration("lb.health_check.timeout", &h.timeout),
        healthy_threshold: c.at_least("lb.health_check.healthy_threshold", h.healthy_threshold, 1)
            as usize,
        unhealthy_threshold: c.at_least(
            "lb.health_check.unhealthy_threshold",
            h.unhealthy_threshold,
            1,
        ) as usize,
        path: h.path,
    }
}

fn circuit_breaker(b: RawBreaker, c: &mut Checker) -> BreakerConfig {
    let open_time = c.duration("lb.circuit_breaker.open_time", &b.open_time);
    let max_open_time = c.duration("lb.circuit_breaker.max_open_time", &b.max_open_time);
    if max_open_time < open_time {
        c.fail(
            "lb.circuit_breaker.max_open_time",
            "must be at least open_time",
        );
    }
    let mut failure_status = Vec::new();
    for (i, s) in b.failure_status.iter().enumerate() {
        if (100..=599).contains(s) {
            failure_status.push(*s as u16);
        } else {
            c.fail(
                &format!("lb.circuit_breaker.failure_status[{i}]"),
                "must be an HTTP status between 100 and 599",
            );
        }
    }
    BreakerConfig {
        fail_threshold: c.at_least("lb.circuit_breaker.fail_threshold", b.fail_threshold, 1) as u32,
        open_time,
        max_open_time,
        failure_status,
    }
}

fn retry_on(raw: &[RawRetryOn], c: &mut Checker) -> RetryOn {
    let mut on = RetryOn {
        connect: false,
        reset: false,
        statuses: Vec::new(),
    };
    for (i, r) in raw.iter().enumerate() {
        match r {
            RawRetryOn::Word(w) if w == "connect" => on.connect = true,
            RawRetryOn::Word(w) if w == "reset" => on.reset = true,
            RawRetryOn::Status(s) if (500..=599).contains(s) => on.statuses.push(*s as u16),
            _ => c.fail(
                &format!("lb.retry_on[{i}]"),
                "must be connect, reset or a status from 500 to 599",
            ),
        }
    }
    on
}

fn retry_budget(b: &RawRetryBudget, c: &mut Checker) -> RetryBudgetConfig {
    if !(0.0..=10.0).contains(&b.ratio) {
        c.fail("lb.retry_budget.ratio", "must be between 0 and 10");
    }
    if b.min_per_sec < 0.0 {
        c.fail("lb.retry_budget.min_per_sec", "must not be negative");
    }
    RetryBudgetConfig {
        ratio: b.ratio.clamp(0.0, 10.0),
        min_per_sec: b.min_per_sec.max(0.0),
    }
}

fn outlier(o: &RawOutlier, c: &mut Checker) -> OutlierConfig {
    if !(o.failure_rate > 0.0 && o.failure_rate <= 1.0) {
        c.fail("lb.outlier.failure_rate", "must be above 0 and at most 1");
    }
    if !(0..=100).contains(&o.max_ejection_percent) {
        c.fail(
            "lb.outlier.max_ejection_percent",
            "must be between 0 (off) and 100",
        );
    }
    OutlierConfig {
        failure_rate: o.failure_rate.clamp(0.0, 1.0),
        min_requests: c.at_least("lb.outlier.min_requests", o.min_requests, 1) as u64,
        interval: c.duration("lb.outlier.interval", &o.interval),
        ejection_time: c.duration("lb.outlier.ejection_time", &o.ejection_time),
        max_ejection_percent: o.max_ejection_percent.clamp(0, 100) as u32,
    }
}

fn dynamic_weights(w: RawDynamicWeights, c: &mut Checker) -> DynamicWeightsConfig {
    if !(w.min_factor > 0.0 && w.min_factor <= 1.0) {
        c.fail(
            "lb.dynamic_weights.min_factor",
            "must be greater than 0 and at most 1",
        );
    }
    DynamicWeightsConfig {
        half_life: c.duration("lb.dynamic_weights.half_life", &w.half_life),
        interval: c.duration("lb.dynamic_weights.interval", &w.interval),
        min_factor: w.min_factor,
    }
}

fn sticky(s: RawSticky, c: &mut Checker) -> StickyConfig {
    if s.cookie_name.is_empty()
        || !s
            .cookie_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        c.fail(
            "lb.sticky.cookie_name",
            "must be letters, digits, `_` or `-`",
        );
    }
    if let Some(secret) = &s.secret {
        if secret.len() < MIN_SECRET_LEN {
            c.fail(
                "lb.sticky.secret",
                format!("must be at least {MIN_SECRET_LEN} bytes (a random string; `openssl rand -hex 32` makes one)"),
            );
        }
    }
    if s.trusted_proxies.is_some() {
        c.fail(
            "lb.sticky.trusted_proxies",
            "has moved to lb.trusted_proxies (it governs every forwarding header, not only stickiness)",
        );
    }
    StickyConfig {
        mode: s.mode,
        cookie_name: s.cookie_name,
        max_age: c.duration("lb.sticky.max_age", &s.max_age),
        secret: s.secret,
    }
}

fn trusted_proxies(raw: &[String], c: &mut Checker) -> Vec<ipnet::IpNet> {
    let mut nets = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let parsed = p
            .parse::<ipnet::IpNet>()
            .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => nets.push(net),
            Err(_) => c.fail(
                &format!("lb.trusted_proxies[{i}]"),
                format!("`{p}` is not a CIDR or an IP address, e.g. 10.0.0.0/8"),
            ),
        }
    }
    nets
}
