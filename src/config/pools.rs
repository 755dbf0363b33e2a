//! `lb`'s policy keys and upstreams, checked into one [`PoolConfig`]: once
//! for `lb` itself (the pool `default`) and once for each of `lb.pools`, with
//! every key named under its own prefix (`lb.pools.api.retries`).

use std::time::Duration;

use super::check::Checker;
use super::schema::*;
use super::*;

/// The pool `lb.upstreams` (with `lb`'s policy keys) makes.
pub const DEFAULT_POOL: &str = "default";

/// One service: its upstreams and the policies it is balanced by.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    pub algorithm: Algorithm,
    /// The upstreams named by address.
    pub upstreams: Vec<UpstreamConfig>,
    /// The entries whose members DNS supplies.
    pub discovered: Vec<DiscoveredGroup>,
    pub health_check: HealthCheckConfig,
    pub circuit_breaker: BreakerConfig,
    pub outlier: OutlierConfig,
    pub dynamic_weights: DynamicWeightsConfig,
    pub sticky: StickyConfig,
    /// Extra attempts, each on another upstream.
    pub retries: usize,
    pub retry_on: RetryOn,
    pub retry_budget: RetryBudgetConfig,
    /// A new or recovered upstream ramps its weight over this (zero: off).
    pub slow_start: Duration,
    pub timeouts: TimeoutsConfig,
    pub concurrency: ConcurrencyConfig,
    /// Connections to its upstreams begin with a PROXY protocol header.
    pub send_proxy: Option<crate::send_proxy::ProxyVersion>,
}

/// `lb`'s keys: those of its own pool, and the rest.
pub(super) fn split(raw: RawLb) -> (RawPool, RawLbRest) {
    (
        RawPool {
            algorithm: raw.algorithm,
            upstreams: raw.upstreams,
            health_check: raw.health_check,
            circuit_breaker: raw.circuit_breaker,
            outlier: raw.outlier,
            dynamic_weights: raw.dynamic_weights,
            sticky: raw.sticky,
            retries: raw.retries,
            slow_start: raw.slow_start,
            retry_on: raw.retry_on,
            retry_budget: raw.retry_budget,
            timeouts: raw.timeouts,
            concurrency: raw.concurrency,
            proxy_protocol: None,
        },
        RawLbRest {
            listen: raw.listen,
            h2c: raw.h2c,
            proxy_protocol: raw.proxy_protocol,
            tls: raw.tls,
            trusted_proxies: raw.trusted_proxies,
            discovery: raw.discovery,
            limits: raw.limits,
            rate_limit: raw.rate_limit,
            access_log: raw.access_log,
            etcd: raw.etcd,
            pools: raw.pools,
            routes: raw.routes,
        },
    )
}

/// `lb`'s keys that are not a pool's.
pub(super) struct RawLbRest {
    pub listen: Vec<String>,
    pub h2c: bool,
    pub proxy_protocol: Option<RawProxyProtocol>,
    pub tls: Option<RawTls>,
    pub trusted_proxies: Vec<String>,
    pub discovery: RawDiscovery,
    pub limits: RawLimits,
    pub rate_limit: Option<RawRateLimit>,
    pub access_log: Option<RawAccessLog>,
    pub etcd: Option<RawEtcd>,
    pub pools: std::collections::BTreeMap<String, RawPool>,
    pub routes: Option<Vec<RawRoute>>,
}

/// Checks one pool, its keys under `p` (`lb` or `lb.pools.{name}`).
pub(super) fn pool(
    name: &str,
    p: &str,
    raw: RawPool,
    from_etcd: bool,
    max_upstreams: usize,
    c: &mut Checker,
) -> PoolConfig {
    let (upstreams, discovered) = super::upstreams::upstreams(p, &raw.upstreams, from_etcd, c);
    if raw.upstreams.len() > max_upstreams {
        c.fail(
            &format!("{p}.upstreams"),
            format!(
                "{} entries, over lb.limits.max_upstreams ({max_upstreams})",
                raw.upstreams.len(),
            ),
        );
    }
    let cookie_given = c.index.has(&format!("{p}.sticky.cookie_name"));
    let mut sticky = sticky(p, raw.sticky, c);
    if name != DEFAULT_POOL && !cookie_given {
        // Each pool's sessions under a cookie of their own, so that two
        // pools behind one host do not overwrite each other's.
        sticky.cookie_name = format!("{}_{name}", sticky.cookie_name);
    }
    PoolConfig {
        name: name.to_string(),
        algorithm: raw.algorithm,
        upstreams,
        discovered,
        health_check: health_check(p, raw.health_check, c),
        circuit_breaker: circuit_breaker(p, raw.circuit_breaker, c),
        outlier: outlier(p, &raw.outlier, c),
        dynamic_weights: dynamic_weights(p, raw.dynamic_weights, c),
        sticky,
        retries: c.at_least(&format!("{p}.retries"), raw.retries, 0) as usize,
        slow_start: c.duration_or_zero(&format!("{p}.slow_start"), &raw.slow_start),
        retry_on: retry_on(p, &raw.retry_on, c),
        retry_budget: retry_budget(p, &raw.retry_budget, c),
        timeouts: TimeoutsConfig {
            connect: c.duration(&format!("{p}.timeouts.connect"), &raw.timeouts.connect),
            read: c.duration(&format!("{p}.timeouts.read"), &raw.timeouts.read),
        },
        concurrency: ConcurrencyConfig {
            adaptive: raw.concurrency.adaptive,
            queue_timeout: c.duration_or_zero(
                &format!("{p}.concurrency.queue_timeout"),
                &raw.concurrency.queue_timeout,
            ),
        },
        send_proxy: raw.proxy_protocol.as_deref().and_then(|v| match v.trim() {
            "v1" => Some(crate::send_proxy::ProxyVersion::V1),
            "v2" => Some(crate::send_proxy::ProxyVersion::V2),
            _ => {
                c.fail(&format!("{p}.proxy_protocol"), "must be v1 or v2");
                None
            }
        }),
    }
}

/// A pool's name becomes part of keys, paths and labels: a plain word.
pub(super) fn pool_name(key: &str, name: &str, c: &mut Checker) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        c.fail(key, "a pool's name must be letters, digits, `_` or `-`");
    } else if name == DEFAULT_POOL {
        c.fail(
            key,
            "`default` is the pool lb.upstreams makes; give this one another name",
        );
    }
}

fn health_check(p: &str, h: RawHealthCheck, c: &mut Checker) -> HealthCheckConfig {
    if !h.path.starts_with('/') {
        c.fail(&format!("{p}.health_check.path"), "must start with /");
    }
    HealthCheckConfig {
        interval: c.duration(&format!("{p}.health_check.interval"), &h.interval),
        timeout: c.duration(&format!("{p}.health_check.timeout"), &h.timeout),
        healthy_threshold: c.at_least(
            &format!("{p}.health_check.healthy_threshold"),
            h.healthy_threshold,
            1,
        ) as usize,
        unhealthy_threshold: c.at_least(
            &format!("{p}.health_check.unhealthy_threshold"),
            h.unhealthy_threshold,
            1,
        ) as usize,
        path: h.path,
    }
}

fn circuit_breaker(p: &str, b: RawBreaker, c: &mut Checker) -> BreakerConfig {
    let open_time = c.duration(&format!("{p}.circuit_breaker.open_time"), &b.open_time);
    let max_open_time = c.duration(
        &format!("{p}.circuit_breaker.max_open_time"),
        &b.max_open_time,
    );
    if max_open_time < open_time {
        c.fail(
            &format!("{p}.circuit_breaker.max_open_time"),
            "must be at least open_time",
        );
    }
    let mut failure_status = Vec::new();
    for (i, s) in b.failure_status.iter().enumerate() {
        if (100..=599).contains(s) {
            failure_status.push(*s as u16);
        } else {
            c.fail(
                &format!("{p}.circuit_breaker.failure_status[{i}]"),
                "must be an HTTP status between 100 and 599",
            );
        }
    }
    BreakerConfig {
        fail_threshold: c.at_least(
            &format!("{p}.circuit_breaker.fail_threshold"),
            b.fail_threshold,
            1,
        ) as u32,
        open_time,
        max_open_time,
        failure_status,
    }
}

fn retry_on(p: &str, raw: &[RawRetryOn], c: &mut Checker) -> RetryOn {
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
                &format!("{p}.retry_on[{i}]"),
                "must be connect, reset or a status from 500 to 599",
            ),
        }
    }
    on
}

fn retry_budget(p: &str, b: &RawRetryBudget, c: &mut Checker) -> RetryBudgetConfig {
    if !(0.0..=10.0).contains(&b.ratio) {
        c.fail(
            &format!("{p}.retry_budget.ratio"),
            "must be between 0 and 10",
        );
    }
    if b.min_per_sec < 0.0 {
        c.fail(
            &format!("{p}.retry_budget.min_per_sec"),
            "must not be negative",
        );
    }
    RetryBudgetConfig {
        ratio: b.ratio.clamp(0.0, 10.0),
        min_per_sec: b.min_per_sec.max(0.0),
    }
}

fn outlier(p: &str, o: &RawOutlier, c: &mut Checker) -> OutlierConfig {
    if !(o.failure_rate > 0.0 && o.failure_rate <= 1.0) {
        c.fail(
            &format!("{p}.outlier.failure_rate"),
            "must be above 0 and at most 1",
        );
    }
    if !(0..=100).contains(&o.max_ejection_percent) {
        c.fail(
            &format!("{p}.outlier.max_ejection_percent"),
            "must be between 0 (off) and 100",
        );
    }
    OutlierConfig {
        failure_rate: o.failure_rate.clamp(0.0, 1.0),
        min_requests: c.at_least(&format!("{p}.outlier.min_requests"), o.min_requests, 1) as u64,
        interval: c.duration(&format!("{p}.outlier.interval"), &o.interval),
        ejection_time: c.duration(&format!("{p}.outlier.ejection_time"), &o.ejection_time),
        max_ejection_percent: o.max_ejection_percent.clamp(0, 100) as u32,
    }
}

fn dynamic_weights(p: &str, w: RawDynamicWeights, c: &mut Checker) -> DynamicWeightsConfig {
    if !(w.min_factor > 0.0 && w.min_factor <= 1.0) {
        c.fail(
            &format!("{p}.dynamic_weights.min_factor"),
            "must be greater than 0 and at most 1",
        );
    }
    DynamicWeightsConfig {
        half_life: c.duration(&format!("{p}.dynamic_weights.half_life"), &w.half_life),
        interval: c.duration(&format!("{p}.dynamic_weights.interval"), &w.interval),
        min_factor: w.min_factor,
    }
}

fn sticky(p: &str, s: RawSticky, c: &mut Checker) -> StickyConfig {
    if s.cookie_name.is_empty()
        || !s
            .cookie_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        c.fail(
            &format!("{p}.sticky.cookie_name"),
            "must be letters, digits, `_` or `-`",
        );
    }
    if let Some(secret) = &s.secret {
        if secret.len() < MIN_SECRET_LEN {
            c.fail(
                &format!("{p}.sticky.secret"),
                format!("must be at least {MIN_SECRET_LEN} bytes (a random string; `openssl rand -hex 32` makes one)"),
            );
        }
    }
    if s.trusted_proxies.is_some() {
        c.fail(
            &format!("{p}.sticky.trusted_proxies"),
            "has moved to lb.trusted_proxies (it governs every forwarding header, not only stickiness)",
        );
    }
    StickyConfig {
        mode: s.mode,
        cookie_name: s.cookie_name,
        max_age: c.duration(&format!("{p}.sticky.max_age"), &s.max_age),
        secret: s.secret,
    }
}
