//! The JSON snapshot the dashboard serves (`/api/state`, `/api/stream`): the
//! table in force read at one instant, with the rates and percentiles the
//! ticker derived, and a sentence per upstream saying why it gets the share of
//! traffic it gets. Built whole, never patched afterwards.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

pub use super::derived::Derived;
use crate::breaker::BreakerState;
use crate::config::Algorithm;
use crate::events::{unix_time, Event};
use crate::pool::{Pool, Table};
use crate::state::SharedState;
use crate::sticky::StickyResult;
use crate::upstream::Gate;
use crate::upstream::Upstream;
use crate::weights::latency_max_age;

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub time: f64,
    pub algorithm: &'static str,
    /// Panic mode: breakers and ejections are overruled.
    pub panic: bool,
    /// `off`, `cookie` or `ip`.
    pub sticky: &'static str,
    pub sticky_stats: StickySnapshot,
    /// The `default` pool's upstreams (as before pools).
    pub upstreams: Vec<UpstreamSnapshot>,
    /// Every pool that serves, `default` first when it does.
    pub pools: Vec<PoolSnapshot>,
    /// The routes of the file, in order (none without `lb.routes`).
    pub routes: Vec<super::routes::RouteSnapshot>,
    /// What clients saw over the last few seconds: answers per second and
    /// the share that were 5xx, from every pool.
    pub clients: ClientsSnapshot,
    /// Newest first.
    pub events: Vec<Event>,
    /// The HTTPS listeners' certificates, in config order.
    pub certificates: Vec<CertificateSnapshot>,
    /// Client connections so far by listener and protocol, and TLS
    /// handshakes by version.
    pub listeners: ListenerMix,
    /// The demo upstreams and what their controls last did; empty without a
    /// demo.
    pub demo: Vec<crate::demo_controls::DemoSnapshot>,
    /// The fleet on etcd; absent without `lb.etcd`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetSnapshot>,
}

/// Every answer to a client, over the last few seconds.
#[derive(Debug, Clone, Serialize)]
pub struct ClientsSnapshot {
    pub rps: f64,
    /// Answers with a 5xx status (ours included: a 503 with no upstream).
    pub error_rate: f64,
}

/// The rates the hub derived at its last tick: by upstream name, by route
/// index, and over every answer.
pub struct Rates<'a> {
    pub upstreams: &'a HashMap<String, Derived>,
    pub routes: &'a [Derived],
    pub clients: &'a Derived,
}

/// One pool: how it balances, whether it is in panic mode, its upstreams.
#[derive(Debug, Clone, Serialize)]
pub struct PoolSnapshot {
    pub name: String,
    pub algorithm: &'static str,
    pub panic: bool,
    pub sticky: &'static str,
    pub upstreams: Vec<UpstreamSnapshot>,
    /// Its queue, with `concurrency.adaptive`; null without.
    pub queue: Option<QueueSnapshot>,
}

/// A pool's queue for requests that find every upstream at its
/// concurrency limit.
#[derive(Debug, Clone, Serialize)]
pub struct QueueSnapshot {
    /// Requests waiting now.
    pub waiting: usize,
    /// The longest one waits before its 503 (`concurrency.queue_timeout`).
    pub timeout_ms: f64,
    /// Answered 503 + `Retry-After` for overload, since start.
    pub refused_total: u64,
    /// Served after waiting, since start.
    pub served_after_wait_total: u64,
}

/// `GET /api/fleet`: this instance's id, its session to etcd, and the live
/// instances sharing the prefix.
#[derive(Debug, Clone, Serialize)]
pub struct FleetSnapshot {
    pub id: String,
    pub endpoints: Vec<String>,
    pub prefix: String,
    #[serde(flatten)]
    pub status: crate::discovery::etcd::Status,
}

pub fn fleet(state: &SharedState) -> Option<FleetSnapshot> {
    state.fleet.as_ref().map(|f| FleetSnapshot {
        id: f.conf.id.clone(),
        endpoints: f.conf.endpoints.clone(),
        prefix: f.conf.prefix.clone(),
        status: f.status(),
    })
}

/// What clients have spoken on each kind of listener since start.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerMix {
    pub plain_h1: u64,
    pub plain_h2: u64,
    pub tls_h1: u64,
    pub tls_h2: u64,
    /// `TLSv1.3`, `TLSv1.2`, `failed` → handshakes.
    pub tls_handshakes: std::collections::BTreeMap<String, u64>,
}

fn listener_mix(state: &SharedState) -> ListenerMix {
    let m = &state.metrics;
    let conns = |l: &str, p: &str| {
        m.downstream_connections_total
            .with_label_values(&[l, p])
            .get()
    };
    let mut tls_handshakes = std::collections::BTreeMap::new();
    if state.config.lb.tls.is_some() {
        for v in ["TLSv1.3", "TLSv1.2", "failed"] {
            tls_handshakes.insert(
                v.to_string(),
                m.tls_handshakes_total.with_label_values(&[v]).get(),
            );
        }
    }
    ListenerMix {
        plain_h1: conns("plain", "h1"),
        plain_h2: conns("plain", "h2"),
        tls_h1: conns("tls", "h1"),
        tls_h2: conns("tls", "h2"),
        tls_handshakes,
    }
}

/// A certificate in force on the HTTPS listeners.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateSnapshot {
    /// Its file, or `ACME` for one ordered.
    pub cert: String,
    pub names: Vec<String>,
    pub issuer: Option<String>,
    /// When it expires (RFC 3339, UTC); None for an ACME certificate not
    /// issued yet.
    pub expires: Option<String>,
    pub days_left: Option<f64>,
    /// Under [`EXPIRY_WARNING_DAYS`] days left.
    pub expiring: bool,
    /// Ordered by ACME: its renewal and the last order's result.
    pub acme: Option<crate::acme::Status>,
}

/// A certificate with fewer days left than this is flagged.
pub const EXPIRY_WARNING_DAYS: f64 = 14.0;

/// The certificates in force, as of `now` (Unix seconds): the files', then
/// ACME's (one entry even before its first certificate is issued).
pub fn certificates(state: &SharedState, now: f64) -> Vec<CertificateSnapshot> {
    let Some(store) = state.certificates() else {
        return Vec::new();
    };
    let entry = |c: &crate::tls::Loaded, cert: String| {
        let days_left = (c.not_after as f64 - now) / 86_400.0;
        CertificateSnapshot {
            cert,
            names: c.names.clone(),
            issuer: c.issuer.clone(),
            expires: Some(crate::tls::rotation::expiry_text(c.not_after)),
            days_left: Some((days_left * 10.0).round() / 10.0),
            expiring: days_left < EXPIRY_WARNING_DAYS,
            acme: None,
        }
    };
    let mut out: Vec<CertificateSnapshot> = store
        .current()
        .iter()
        .map(|c| entry(c, c.paths.cert.display().to_string()))
        .collect();
    if let Some(acme) = state.acme() {
        let status = acme.status.lock().map(|s| s.clone()).unwrap_or_default();
        let managed = store.managed();
        match managed.first() {
            Some(c) => out.push(CertificateSnapshot {
                acme: Some(status),
                ..entry(c, "ACME".into())
            }),
            None => out.push(CertificateSnapshot {
                cert: "ACME".into(),
                names: status.domains.clone(),
                issuer: None,
                expires: None,
                days_left: None,
                expiring: false,
                acme: Some(status),
            }),
        }
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamSnapshot {
    pub name: String,
    pub addr: String,
    /// `up` or `down`, from active health checks.
    pub health: &'static str,
    /// `closed`, `half_open` or `open`.
    pub breaker: &'static str,
    pub drained: bool,
    /// Too slow for client requests: mirrored copies of them (or, with no
    /// traffic, probes) measure it until it is back.
    pub sidelined: bool,
    /// What its latency estimate rests on: `clients`, `mirrored` (copies of
    /// client requests, while sidelined) or `probes` (health checks alone).
    pub measured_by: &'static str,
    /// Copies of client requests sent to it while sidelined, so far.
    pub mirrored_total: u64,
    /// Requests it may have at once, learned from its latency
    /// (`concurrency.adaptive`); null without.
    pub concurrency_limit: Option<u32>,
    /// The response time that limit is measured against (its unloaded
    /// time, ms); null until measured.
    pub latency_floor_ms: Option<f64>,
    pub base_weight: u32,
    /// Weight in force: base × latency factor for `dynamic`; 0 while out of
    /// rotation (down, breaker open, drained).
    pub effective_weight: f64,
    pub inflight: i64,
    /// Attempts per second over the last few seconds.
    pub rps: f64,
    /// Share of those attempts that failed as the breaker counts failures
    /// (`failure_status`, no answer, a break).
    pub error_rate: f64,
    /// Share of its answers with a 5xx status, whether or not the breaker
    /// counts them (an application's 500s).
    pub server_error_rate: f64,
    pub latency_ms: LatencySnapshot,
    /// Why this upstream gets the traffic it gets.
    pub reason: String,
    pub requests_total: u64,
    pub errors_total: u64,
    pub retries_total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StickySnapshot {
    pub hit: u64,
    pub new: u64,
    pub moved: u64,
    pub invalid: u64,
    /// hit / all sticky decisions; null before the first.
    pub hit_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencySnapshot {
    /// Peak EWMA in milliseconds; null before the first sample.
    pub ewma: Option<f64>,
    /// Typical health-check (probe) response time; null before one passed.
    pub probe: Option<f64>,
    /// Percentiles over the last few seconds, from the duration histogram.
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// Rounds to `places` decimals, for compact JSON.
fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

/// The snapshot of `state` now, with the hub's last `rates`.
pub fn build(state: &SharedState, rates: &Rates) -> Snapshot {
    let (derived, routes) = (rates.upstreams, rates.routes);
    let now = Instant::now();
    let default = pool(state.pool(), derived, now);
    let pools = state
        .pools
        .iter()
        .enumerate()
        // An empty `default` that no route uses is not shown.
        .filter(|(i, p)| {
            *i > 0 || !p.load().upstreams().is_empty() || state.config.lb.pools.len() == 1
        })
        .map(|(i, p)| {
            if i == 0 {
                default.clone()
            } else {
                pool(p, derived, now)
            }
        })
        .collect();
    Snapshot {
        time: unix_time(),
        algorithm: default.algorithm,
        panic: default.panic,
        sticky: default.sticky,
        sticky_stats: sticky(state),
        upstreams: default.upstreams,
        pools,
        routes: super::routes::routes(state, routes),
        clients: ClientsSnapshot {
            rps: round(rates.clients.rps, 1),
            error_rate: round(rates.clients.server_error_rate, 4),
        },
        events: state.events.newest_first(),
        certificates: certificates(state, unix_time()),
        demo: state.demo.snapshot(),
        fleet: fleet(state),
        listeners: listener_mix(state),
    }
}

/// One pool's part of the snapshot.
pub fn pool(pool: &Pool, derived: &HashMap<String, Derived>, now: Instant) -> PoolSnapshot {
    let table = pool.table();
    let none = Derived::default();
    let upstreams = table
        .upstreams()
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let d = derived.get(&u.name).unwrap_or(&none);
            upstream(pool, &table, i, u, d, now)
        })
        .collect();
    PoolSnapshot {
        name: pool.name().to_string(),
        algorithm: pool.algorithm().as_str(),
        panic: table.panic,
        sticky: pool.config().sticky.mode.as_str(),
        upstreams,
        queue: pool.queue.as_ref().map(|q| {
            let (refused_total, served_after_wait_total) = q.totals();
            QueueSnapshot {
                waiting: q.waiting(),
                timeout_ms: round(q.timeout().as_secs_f64() * 1e3, 1),
                refused_total,
                served_after_wait_total,
            }
        }),
    }
}

fn upstream(
    pool: &Pool,
    table: &Table,
    i: usize,
    u: &Upstream,
    d: &Derived,
    now: Instant,
) -> UpstreamSnapshot {
    use std::sync::atomic::Ordering::Relaxed;
    UpstreamSnapshot {
        name: u.name.clone(),
        addr: u.addr.to_string(),
        health: if u.is_healthy() { "up" } else { "down" },
        breaker: u.breaker_state().as_str(),
        drained: u.is_drained(),
        sidelined: u.is_sidelined() && pool.algorithm().is_latency_aware(),
        measured_by: u.measured_by(now, pool.config().health_check.interval),
        mirrored_total: u.stats.mirrored_total.load(Relaxed),
        concurrency_limit: u.concurrency_limit(),
        latency_floor_ms: u.latency_floor().map(|s| round(s * 1e3, 2)),
        base_weight: u.base_weight(),
        // What the published table weighs it: 0 when it may not be picked.
        effective_weight: round(table.effective(i), 2),
        inflight: u.inflight().max(0),
        rps: round(d.rps, 1),
        error_rate: round(d.error_rate, 4),
        server_error_rate: round(d.server_error_rate, 4),
        latency_ms: LatencySnapshot {
            ewma: u
                .recent_latency(now, latency_max_age(pool))
                .map(|s| round(s * 1e3, 2)),
            probe: u.probe_latency().map(|s| round(s * 1e3, 2)),
            p50: d.p50,
            p95: d.p95,
            p99: d.p99,
        },
        reason: with_limit(u, with_panic(table, i, reason(pool, table, i, u, now))),
        requests_total: u.stats.requests_total.load(Relaxed),
        errors_total: u.stats.errors_total.load(Relaxed),
        retries_total: u.stats.retries_total.load(Relaxed),
    }
}

fn sticky(state: &SharedState) -> StickySnapshot {
    let n = |r| state.sticky_count(r);
    let (hit, new, moved, invalid) = (
        n(StickyResult::Hit),
        n(StickyResult::New),
        n(StickyResult::Moved),
        n(StickyResult::Invalid),
    );
    let total = hit + new + moved + invalid;
    StickySnapshot {
        hit,
        new,
        moved,
        invalid,
        hit_ratio: (total > 0).then(|| hit as f64 / total as f64),
    }
}

/// In panic mode, a healthy upstream's reason says first that breakers and
/// ejections are overruled.
fn with_panic(table: &Table, i: usize, reason: String) -> String {
    if table.panic && table.gates[i].is_healthy() {
        format!(
            "panic mode (too few eligible upstreams): breakers and ejections overruled; {reason}"
        )
    } else {
        reason
    }
}

/// With a concurrency limit, the reason says it, first when the limit is
/// what holds the upstream's share now.
fn with_limit(u: &Upstream, reason: String) -> String {
    let Some(limit) = u.concurrency_limit() else {
        return reason;
    };
    let floor = u
        .latency_floor()
        .map(|f| format!(", answering near its unloaded {:.1} ms", f * 1e3))
        .unwrap_or_default();
    if u.at_limit() {
        format!(
            "at its concurrency limit ({limit} at once{floor}): new requests go to another              upstream or wait in the queue; {reason}"
        )
    } else {
        format!("{reason}; concurrency limit {limit}{floor}")
    }
}

/// Why upstream `u` (index `i` of `table`) gets the traffic it gets, in a
/// sentence.
fn reason(pool: &Pool, table: &Table, i: usize, u: &Upstream, now: Instant) -> String {
    if u.is_drained() {
        return "drained by the operator: takes no new requests".into();
    }
    if u.is_awaiting_checks() {
        let hc = &pool.config().health_check;
        return format!(
            "joining: takes traffic once GET {} passes {} times in a row",
            hc.path, hc.healthy_threshold
        );
    }
    if !u.is_healthy() {
        return format!(
            "out of rotation: GET {} is failing",
            pool.config().health_check.path
        );
    }
    if let Some(until) = u.ejected_until(now) {
        return format!(
            "out of rotation: ejected for its failure rate; back in {:.1} s",
            until.saturating_duration_since(now).as_secs_f64()
        );
    }
    if u.is_standby() {
        return format!(
            "standby: SRV priority {} serves only when no target of a preferred priority is eligible",
            u.priority()
        );
    }
    match u.breaker_state() {
        BreakerState::Open => {
            let wait = u
                .breaker_open_until()
                .map(|t| t.saturating_duration_since(now).as_secs_f64())
                .unwrap_or(0.0);
            return format!(
                "out of rotation: circuit breaker open after failures; next probe in {wait:.1} s"
            );
        }
        BreakerState::HalfOpen => {
            return "probing: one request at a time tests whether it has recovered".into();
        }
        BreakerState::Closed => {}
    }
    let ramp = u.ramp();
    if ramp < 1.0 {
        return format!(
            "slow start: {:.0}% of its weight, rising to all of it over {:?}",
            ramp * 100.0,
            pool.config().slow_start
        );
    }
    let base = u.base_weight();
    let max_age = latency_max_age(pool);
    let probes = u
        .probe_latency()
        .map(|p| format!("; probes {:.1} ms", p * 1e3))
        .unwrap_or_default();
    let algorithm = pool.algorithm();
    if algorithm.is_latency_aware() && u.is_sidelined() {
        let fastest = fastest_latency(table, now, max_age);
        let measured = match u.measured_by(now, pool.config().health_check.interval) {
            "mirrored" => format!(
                "copies of client requests ({} so far, one every {:?}) measure it",
                u.stats
                    .mirrored_total
                    .load(std::sync::atomic::Ordering::Relaxed),
                crate::health::PROBE_EVERY,
            ),
            _ => format!(
                "probes (GET {} every {:?}) measure it",
                pool.config().health_check.path,
                crate::health::PROBE_EVERY,
            ),
        };
        return format!(
            "sidelined for latency: {:.1} ms, over {:.0}× the fastest ({:.1} ms); no client \
             requests while {measured}{probes}",
            u.recent_latency(now, max_age).unwrap_or(0.0) * 1e3,
            1.0 / pool.config().dynamic_weights.min_factor,
            fastest * 1e3,
        );
    }
    match algorithm {
        Algorithm::RoundRobin => "equal turns with every eligible upstream".into(),
        Algorithm::Weighted => {
            let total: u32 = table.weights.iter().sum();
            let share = table.weights[i] as f64 * 100.0 / total.max(1) as f64;
            format!("weight {base}: {share:.0}% of requests")
        }
        Algorithm::Dynamic => match u.recent_latency(now, max_age) {
            Some(own) => format!(
                "weight {base} × latency factor {:.2} (fastest {:.1} ms / own {:.1} ms, at least {}) = {:.2}{probes}",
                u.factor(),
                fastest_latency(table, now, max_age) * 1e3,
                own * 1e3,
                pool.config().dynamic_weights.min_factor,
                table.effective(i)
            ),
            None => format!("weight {base}: no latency samples yet, full weight{probes}"),
        },
        Algorithm::P2c => format!(
            "chosen per request when cheaper: latency × (in-flight + 1) / weight = {:.2} ms{probes}",
            pool.cost(u, now) * 1e3
        ),
    }
}

/// The lowest latency estimate among eligible upstreams (seconds).
fn fastest_latency(table: &Table, now: Instant, max_age: std::time::Duration) -> f64 {
    table
        .upstreams()
        .iter()
        .zip(&table.gates)
        .filter(|(_, g)| **g == Gate::Eligible)
        .filter_map(|(o, _)| o.recent_latency(now, max_age))
        .fold(f64::INFINITY, f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::time::Duration;

    #[test]
    fn the_snapshot_explains_each_share() {
        let text = "lb:\n  algorithm: weighted\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:1\", weight: 3 }\n    - { name: b, addr: \"127.0.0.1:2\", weight: 1 }\n    - { name: c, addr: \"127.0.0.1:3\", weight: 1 }\n";
        let s = SharedState::new(Config::parse(text).unwrap().0);
        s.upstream("b").unwrap().set_drained(true);
        s.upstream("c")
            .unwrap()
            .set_health(false, "GET /health failed twice");
        let mut derived = HashMap::new();
        derived.insert(
            "a".to_string(),
            Derived {
                rps: 12.345,
                ..Derived::default()
            },
        );
        let snap = build(
            &s,
            &Rates {
                upstreams: &derived,
                routes: &[],
                clients: &Derived::default(),
            },
        );
        let a = &snap.upstreams[0];
        // b is drained and c down: a takes every request.
        assert_eq!(a.reason, "weight 3: 100% of requests");
        assert_eq!(a.rps, 12.3);
        assert_eq!(a.effective_weight, 3.0);
        assert!(snap.upstreams[1].reason.starts_with("drained"));
        assert_eq!(snap.upstreams[1].effective_weight, 0.0);
        assert!(snap.upstreams[2].reason.contains("GET /health is failing"));
        assert_eq!(snap.events[0].kind, "health");
    }

    #[test]
    fn sidelining_probes_and_panic_mode_are_explained() {
        let text = "lb:\n  algorithm: p2c\n  circuit_breaker: { fail_threshold: 1 }\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:1\" }\n    - { name: b, addr: \"127.0.0.1:2\" }\n";
        let s = SharedState::new(Config::parse(text).unwrap().0);
        let now = Instant::now();
        let (a, b) = (s.upstream("a").unwrap(), s.upstream("b").unwrap());
        a.observe_latency(0.005, false, now);
        b.observe_latency(0.050, false, now);
        a.observe_probe(0.004, now, 1.0, Duration::from_secs(5));
        crate::weights::tick(s.pool(), now);
        let snap = build(
            &s,
            &Rates {
                upstreams: &HashMap::new(),
                routes: &[],
                clients: &Derived::default(),
            },
        );
        assert!(!snap.upstreams[0].sidelined);
        assert!(
            snap.upstreams[0].reason.ends_with("; probes 4.0 ms"),
            "{}",
            snap.upstreams[0].reason
        );
        assert_eq!(snap.upstreams[0].latency_ms.probe, Some(4.0));
        assert!(snap.upstreams[1].sidelined);
        assert!(
            snap.upstreams[1]
                .reason
                .starts_with("sidelined for latency: 50.0 ms, over 5× the fastest (5.0 ms)"),
            "{}",
            snap.upstreams[1].reason
        );
        assert!(s
            .events
            .newest_first()
            .iter()
            .any(|e| e.kind == "sidelined"));
        // Both breakers open: panic mode, at once.
        a.record(false, false, now);
        b.record(false, false, now);
        let snap = build(
            &s,
            &Rates {
                upstreams: &HashMap::new(),
                routes: &[],
                clients: &Derived::default(),
            },
        );
        assert!(snap.panic);
        assert!(
            snap.upstreams[0].reason.starts_with("panic mode"),
            "{}",
            snap.upstreams[0].reason
        );
    }
}
