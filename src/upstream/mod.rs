//! One upstream: its identity (name and address) and its state, split by
//! concern: [`gate`] (health, drain, ejection, standby and breaker, read as
//! one [`Gate`]), [`load`] (in-flight, latency estimate, probes), [`weight`]
//! (base weight, `dynamic`'s factor, slow start) and [`metrics`] (counters
//! and metric handles).
//!
//! Upstreams are shared as `Arc<Upstream>`: the pool's table holds one, and so
//! does every request in flight, so an upstream removed from the table
//! finishes its requests normally.

pub mod gate;
pub mod load;
pub mod metrics;
pub mod weight;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU16, AtomicU32, AtomicU64, AtomicU8};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::balancer::probe::Probes;
use crate::breaker::{Breaker, BreakerState};
use crate::concurrency::{Limit, Queue};
use crate::config::{BreakerConfig, UpstreamConfig};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::sticky::{Sealer, UpstreamKey};

pub use gate::{Gate, GateObserver, GateSignal};
pub use load::Inflight;
pub use metrics::{RetryReason, UpstreamStats};

use metrics::Handles;

/// What every upstream of a pool is made with: its settings and shared sinks.
#[derive(Debug, Clone)]
pub struct UpstreamEnv {
    /// The pool's name: every series of its upstreams carries it.
    pub pool: Arc<str>,
    pub breaker: BreakerConfig,
    /// Half-life of the latency estimate.
    pub half_life: Duration,
    /// Cap of a failure's penalty latency sample (the read timeout), seconds.
    pub penalty_cap: f64,
    pub metrics: Metrics,
    pub events: Arc<Events>,
    /// Seals sticky cookies; gives each upstream its cookie id.
    pub sealer: Option<Sealer>,
    /// Told whenever one of an upstream's gates changes (a breaker
    /// transition, a health flip, a drain, an ejection), so the pool
    /// republishes its eligible set and decides panic mode at once.
    pub signal: Arc<GateSignal>,
    /// `lb.slow_start`: how long a recovered or new upstream ramps its
    /// weight (zero: off).
    pub slow_start: Duration,
    /// The pool's queue, with `concurrency.adaptive` (each upstream then
    /// learns a limit and tells the queue as its requests end).
    pub queue: Option<Arc<Queue>>,
}

/// One upstream.
#[derive(Debug)]
pub struct Upstream {
    /// Identity: the table, cookie ids, metric labels, events and the
    /// dashboard's history key on it.
    pub name: String,
    pub addr: SocketAddr,
    /// Id inside sticky cookies (an HMAC of the name).
    pub sticky_key: UpstreamKey,
    /// The `dns:` or `srv:` entry it was discovered from, if any.
    pub group: Option<String>,
    /// How it is spoken to (HTTP/2, TLS).
    pub protocol: crate::config::UpstreamProtocol,
    /// The operator's weight: from the config or the admin API.
    base_weight: AtomicU32,
    /// `dynamic`'s latency factor (f64 bits), set by the weights tick.
    factor: AtomicU64,
    /// Slow start: the share of its weight it takes now (f64 bits, 1 when
    /// not ramping), set with the weights tick.
    ramp: AtomicU64,
    /// When its slow start began (milliseconds since `epoch`, plus one); 0
    /// when not ramping.
    ramp_since_ms: AtomicU64,
    slow_start: Duration,
    /// Ejected for its failure rate until then (milliseconds since `epoch`);
    /// 0 when not ejected.
    ejected_until_ms: AtomicU64,
    /// Ejections not yet lived down (each doubles the next).
    ejections: AtomicU32,
    /// SRV priority in its group (lower preferred).
    priority: AtomicU16,
    /// A lower-priority SRV target held back while its group's preferred
    /// priority has an eligible member (set by the pool as it publishes).
    standby: AtomicBool,
    /// Verdict of the active health checks (starts healthy, as Pingora's does,
    /// unless it joined at run time: see `awaiting_checks`).
    healthy: AtomicBool,
    /// Joined at run time: takes no traffic until this many health checks in
    /// a row pass (0: not waiting).
    awaiting_checks: AtomicUsize,
    /// A DNS member that joined at run time takes traffic at once, on
    /// probation: its first failed check or connection takes it out until
    /// this many checks in a row pass. 0 once a check has passed.
    probation: AtomicUsize,
    /// Taken out of rotation by the operator.
    drained: AtomicBool,
    /// The breaker; locked only to claim a probe and to record a failure or
    /// the success that ends a run of failures.
    breaker: Mutex<Breaker>,
    /// Mirror of the breaker's state (`BreakerState as u8`), written under its lock.
    breaker_state: AtomicU8,
    /// Mirror of the breaker's consecutive failures, written under its lock:
    /// a success with none pending needs no lock.
    failures: AtomicU32,
    /// Mirror of when an open breaker is due its probe (milliseconds since
    /// `epoch`, rounded down).
    open_until_ms: AtomicU64,
    /// Mirror of a half-open breaker's probe being out.
    probe_out: AtomicBool,
    /// Origin of the millisecond mirrors.
    epoch: Instant,
    /// Peak EWMA of response time (to the response header).
    ewma: crate::ewma::SharedEwma,
    /// Health-check response times, and when a client request last answered.
    probes: Probes,
    /// Too slow for client requests (`dynamic`, `p2c`): weighed 0, measured
    /// by probes.
    sidelined: AtomicBool,
    penalty_cap: f64,
    /// Requests in progress, counted by [`Inflight`] guards.
    inflight: AtomicI64,
    /// Its concurrency limit and its pool's queue (`concurrency.adaptive`).
    limit: Option<(Limit, Arc<Queue>)>,
    pub stats: UpstreamStats,
    /// Left its pool: its late breaker transitions and health flips no longer
    /// touch the series a successor of the same name now owns.
    retired: AtomicBool,
    metrics: Handles,
    events: Arc<Events>,
    signal: Arc<GateSignal>,
}

impl Upstream {
    pub fn new(conf: &UpstreamConfig, env: &UpstreamEnv) -> Self {
        let handles = Handles::new(&env.metrics, &env.pool, &conf.name, conf.weight);
        // One origin for every millisecond mirror of this upstream.
        let epoch = Instant::now();
        Upstream {
            name: conf.name.clone(),
            addr: conf.addr,
            sticky_key: env
                .sealer
                .as_ref()
                .map_or([0; 8], |s| s.upstream_key(&conf.name)),
            group: conf.group.clone(),
            protocol: conf.protocol.clone(),
            base_weight: AtomicU32::new(conf.weight),
            factor: AtomicU64::new(1f64.to_bits()),
            ramp: AtomicU64::new(1f64.to_bits()),
            ramp_since_ms: AtomicU64::new(0),
            slow_start: env.slow_start,
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            priority: AtomicU16::new(conf.priority),
            standby: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            awaiting_checks: AtomicUsize::new(0),
            probation: AtomicUsize::new(0),
            drained: AtomicBool::new(false),
            breaker: Mutex::new(Breaker::new(&env.breaker)),
            breaker_state: AtomicU8::new(BreakerState::Closed as u8),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probe_out: AtomicBool::new(false),
            epoch,
            ewma: crate::ewma::SharedEwma::new(env.half_life, epoch),
            probes: Probes::new(epoch),
            sidelined: AtomicBool::new(false),
            penalty_cap: env.penalty_cap,
            inflight: AtomicI64::new(0),
            limit: env.queue.as_ref().map(|q| {
                let gauge = env
                    .metrics
                    .upstream_concurrency_limit
                    .with_label_values(&[&*env.pool, conf.name.as_str()]);
                (Limit::new(gauge, epoch), q.clone())
            }),
            stats: UpstreamStats::default(),
            retired: AtomicBool::new(false),
            metrics: handles,
            events: env.events.clone(),
            signal: env.signal.clone(),
        }
    }

    fn millis(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The instant `ms` milliseconds after its epoch.
    fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// It left its pool. If no upstream of its name took its place, its
    /// series leave the registry; otherwise they are the successor's, and
    /// this one stops writing its gauges (its in-flight guards still count
    /// out, so the shared in-flight series stays right).
    pub fn retire(&self, m: &Metrics, replaced: bool) {
        self.retired.store(true, Ordering::Relaxed);
        if !replaced {
            self.retire_metrics(m);
        }
    }

    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }
}

/// A half-open breaker's one probe. Finished, it records its result; dropped
/// unfinished (the client went away), it is given back so the next request
/// can probe.
#[derive(Debug)]
pub struct Probe {
    upstream: Arc<Upstream>,
    finished: bool,
}

impl Probe {
    pub fn new(upstream: Arc<Upstream>) -> Self {
        Probe {
            upstream,
            finished: false,
        }
    }

    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// Records the probe's result.
    pub fn finish(mut self, ok: bool, now: Instant) {
        self.finished = true;
        self.upstream.record(ok, true, now);
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if !self.finished {
            self.upstream.release_probe();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
