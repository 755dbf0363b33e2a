//! `lb.limits`, the rate limits (`lb.rate_limit` and each route's) and the
//! `demo` section, validated: what a client may send and hold, and the
//! in-process mock upstreams.

use super::check::Checker;
use super::schema::*;
use super::*;

pub(super) fn limits(l: &RawLimits, c: &mut Checker) -> LimitsConfig {
    LimitsConfig {
        max_header_bytes: c.size("lb.limits.max_header_bytes", &l.max_header_bytes),
        max_body: c.size("lb.limits.max_body", &l.max_body),
        // Pingora's keep-alive timer, which also bounds the header read, counts
        // whole seconds: a value it would cut is refused, not silently changed.
        header_timeout: c.whole_seconds("lb.limits.header_timeout", &l.header_timeout),
        keepalive_timeout: c.whole_seconds("lb.limits.keepalive_timeout", &l.keepalive_timeout),
        max_connections: c.at_least("lb.limits.max_connections", l.max_connections, 1) as usize,
        max_connections_set: c.index.has("lb.limits.max_connections"),
        max_connections_per_client: {
            let n = c.at_least(
                "lb.limits.max_connections_per_client",
                l.max_connections_per_client,
                1,
            );
            if n > l.max_connections.max(1) {
                c.fail(
                    "lb.limits.max_connections_per_client",
                    "must be at most lb.limits.max_connections",
                );
            }
            n as usize
        },
        send_timeout: c.duration("lb.limits.send_timeout", &l.send_timeout),
        max_upstreams: c.at_least("lb.limits.max_upstreams", l.max_upstreams, 1) as usize,
    }
}

pub(super) fn validate_demo(raw: RawDemo, c: &mut Checker) -> DemoConfig {
    let mut backends = Vec::new();
    for (i, b) in raw.backends.into_iter().enumerate() {
        let key = format!("demo.backends[{i}]");
        if !(1..=65535).contains(&b.port) {
            c.fail(&format!("{key}.port"), "must be a port between 1 and 65535");
        }
        if !(0.0..=1.0).contains(&b.error_rate) {
            c.fail(&format!("{key}.error_rate"), "must be between 0 and 1");
        }
        let latency_ms = c.at_least(&format!("{key}.latency_ms"), b.latency_ms, 0) as u64;
        let jitter_ms = c.at_least(&format!("{key}.jitter_ms"), b.jitter_ms, 0) as u64;
        backends.push(DemoBackend {
            name: b.name,
            port: b.port.clamp(1, 65535) as u16,
            error_rate: b.error_rate.clamp(0.0, 1.0),
            latency_ms,
            jitter_ms,
            healthy: b.healthy,
        });
    }
    if let Some(rps) = raw.traffic_rps {
        if !(0.0..=10_000.0).contains(&rps) {
            c.fail("demo.traffic_rps", "must be between 0 and 10000");
        }
    }
    DemoConfig {
        backends,
        traffic_rps: raw.traffic_rps,
    }
}

pub(super) fn rate_limit(key: &str, r: &RawRateLimit, c: &mut Checker) -> RateLimitConfig {
    if !(r.requests_per_sec > 0.0 && r.requests_per_sec.is_finite()) {
        c.fail(&format!("{key}.requests_per_sec"), "must be above 0");
    }
    let rps = r.requests_per_sec.max(f64::MIN_POSITIVE);
    let burst = r.burst.unwrap_or(rps);
    if !(burst >= rps && burst.is_finite()) {
        c.fail(
            &format!("{key}.burst"),
            format!("must be at least {key}.requests_per_sec"),
        );
    }
    RateLimitConfig {
        requests_per_sec: rps,
        burst: burst.max(rps),
    }
}
