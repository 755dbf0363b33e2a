//! One service's pool of upstreams: its table, the eligible set published
//! over it (with panic mode), and selection from that set.
//!
//! Readers never lock: the table is immutable behind an `ArcSwap` and replaced
//! whole. It is republished the moment any upstream's gate changes (the
//! upstream signals on the thread that changed it), when a gate comes due by
//! itself (the first pick past `next_change`, or the publisher loop when
//! idle), when weights change (the weights tick) and when the set changes.
//! Writers take a small mutex so that their rebuilds do not race.

pub mod compose;
pub mod mirror;
pub mod panic;
pub mod policy;
pub mod publisher;
pub mod sources;
pub mod table;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::{ArcSwap, Guard};
use rand::Rng;
use smallvec::SmallVec;
use tokio::sync::Notify;

use crate::balancer::{p2c, wrr};
use crate::breaker::Admission;
use crate::concurrency::Queue;
use crate::config::{Algorithm, UpstreamConfig};
use crate::events::Events;
use crate::upstream::{Gate, GateObserver, Upstream, UpstreamEnv};

pub use compose::{compose, Desired};
pub use policy::{Policy, Sticky};
pub use sources::EditError;
pub use table::{Members, Table, DYNAMIC_SCALE};

/// Latency estimate assumed before any upstream has answered (seconds).
const DEFAULT_LATENCY: f64 = 0.001;

/// What a replacement of the set did.
#[derive(Debug, Default)]
pub struct Change {
    /// New upstreams (a new name, or a known name at a new address).
    pub added: Vec<Arc<Upstream>>,
    /// Upstreams that left the table; their requests in flight finish normally.
    pub removed: Vec<Arc<Upstream>>,
    /// Upstreams kept with their state (same name and address).
    pub kept: usize,
}

/// One pick: the upstream's index in the table picked from, and whether the
/// request carries its breaker's probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    pub probe: bool,
}

/// One service's upstreams.
#[derive(Debug)]
pub struct Pool {
    /// Its name, config, stickiness and retry budget.
    pub policy: Policy,
    algorithm: Algorithm,
    /// Fixed-point scale of the selection weights.
    scale: u32,
    /// Whether tables carry client-IP mode's ring.
    ip_ring: bool,
    table: ArcSwap<Table>,
    cursor: AtomicUsize,
    /// Serializes writers; readers never take it.
    writer: Mutex<()>,
    /// Latency (f64 bits, seconds) assumed for upstreams without samples.
    neutral: AtomicU64,
    probe_scale: AtomicU64,
    events: Arc<Events>,
    /// Woken on every publication, so the publisher loop learns the next
    /// deadline.
    published: Notify,
    /// What each source wants; the set is replaced with their composition,
    /// one edit at a time.
    desired: Mutex<Desired>,
    /// What upstreams joining at run time are made with.
    env: UpstreamEnv,
    rules: SetRules,
    /// Copies of client requests for its sidelined upstreams.
    pub mirror: mirror::Mirror,
    /// Where requests wait when every upstream is at its concurrency limit
    /// (`concurrency.adaptive`).
    pub queue: Option<Arc<Queue>>,
}

/// What a pool holds its sources' sets to.
#[derive(Debug, Clone, Default)]
pub struct SetRules {
    /// Health checks in a row an upstream joining at run time must pass.
    pub passes: usize,
    /// `lb.limits.max_upstreams`: the most the sources together may name.
    pub max_upstreams: usize,
    /// The balancer's own listeners: an upstream there is refused (a loop).
    pub own: Vec<std::net::SocketAddr>,
}

impl GateObserver for Pool {
    fn gate_changed(&self) {
        self.publish(Instant::now());
    }
}

impl Pool {
    /// A pool balanced by `policy` over what `desired` composes to, its
    /// upstreams made with `env` (whose gate signal the caller attaches to
    /// it) and held to `rules`.
    pub fn new(policy: Policy, desired: Desired, env: UpstreamEnv, rules: SetRules) -> Self {
        let algorithm = policy.config.algorithm;
        let ip_ring = matches!(policy.sticky, Sticky::Ip);
        // Slow start needs a finer scale of weights.
        let ramps = !policy.config.slow_start.is_zero();
        let upstreams = compose(&desired)
            .iter()
            .filter(|c| !crate::config::rules::is_own(c.addr, &rules.own))
            .map(|c| Arc::new(Upstream::new(c, &env)))
            .collect();
        let members = Arc::new(Members::new(upstreams, ip_ring));
        let scale = table::scale(algorithm, ramps);
        let first = Table::publish(members, algorithm, scale, Instant::now());
        let pool = Pool {
            policy,
            algorithm,
            scale,
            ip_ring,
            table: ArcSwap::from_pointee(first),
            cursor: AtomicUsize::new(0),
            writer: Mutex::new(()),
            neutral: AtomicU64::new(DEFAULT_LATENCY.to_bits()),
            probe_scale: AtomicU64::new(1f64.to_bits()),
            events: env.events.clone(),
            published: Notify::new(),
            desired: Mutex::new(desired),
            queue: env.queue.clone(),
            env,
            rules,
            mirror: mirror::Mirror::default(),
        };
        pool.publish_weights(&pool.table.load());
        pool
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn name(&self) -> &str {
        &self.policy.config.name
    }

    pub fn config(&self) -> &crate::config::PoolConfig {
        &self.policy.config
    }

    /// A pool made by `policy` from the file's start (and etcd's, if
    /// given), attached to its upstreams' gate signal.
    pub fn build(
        policy: Policy,
        metrics: &crate::metrics::Metrics,
        events: &Arc<Events>,
        etcd: Option<compose::EtcdSet>,
        rules: SetRules,
    ) -> Arc<Pool> {
        let conf = &policy.config;
        let groups: Vec<String> = conf.discovered.iter().map(|g| g.name.clone()).collect();
        let mut desired = Desired::from_start(&conf.upstreams, &groups);
        if let Some(etcd) = etcd {
            desired.etcd = etcd;
        }
        let env = policy.env(metrics, events);
        let pool = Arc::new(Pool::new(policy, desired, env, rules));
        let observer: Arc<dyn GateObserver> = pool.clone();
        pool.env().signal.attach(Arc::downgrade(&observer));
        pool
    }

    /// The table in force, for the request path (no reference count touched).
    pub fn load(&self) -> Guard<Arc<Table>> {
        self.table.load()
    }

    /// The table in force at `now`: republished first if a gate has come due
    /// by itself since (unless another writer is at it).
    pub fn current(&self, now: Instant) -> Guard<Arc<Table>> {
        let table = self.table.load();
        if table.next_change.is_none_or(|t| now < t) {
            return table;
        }
        drop(table);
        if let Ok(w) = self.writer.try_lock() {
            self.store(Table::publish(
                self.table.load_full().members.clone(),
                self.algorithm,
                self.scale,
                now,
            ));
            drop(w);
        }
        self.table.load()
    }

    /// The table in force, to keep.
    pub fn table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    fn write_lock(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Republishes the table at `now`: every gate, panic mode and every
    /// weight (base, `dynamic`'s factor, slow start) read afresh. Returns
    /// false when nothing changed, so the cycle is not rebuilt for nothing.
    pub fn publish(&self, now: Instant) -> bool {
        let _w = self.write_lock();
        let current = self.table.load_full();
        let next = Table::publish(current.members.clone(), self.algorithm, self.scale, now);
        if next.same_as(&current) {
            return false;
        }
        self.store(next);
        true
    }

    /// Puts `next` in force (the writer lock held): its weights go to the
    /// metrics, and a change of panic mode is an event.
    fn store(&self, next: Table) {
        let was = self.table.load().panic;
        self.publish_weights(&next);
        if next.panic != was {
            let (healthy, eligible) = next.counts();
            let detail = panic::describe(next.panic, healthy, eligible);
            log::warn!("panic mode {detail}");
            self.events.push(None, "panic", detail);
        }
        self.table.store(Arc::new(next));
        self.published.notify_one();
    }

    /// Replaces the set with `configs`. An upstream whose name and address are
    /// unchanged is kept, with its breaker, latency, counters and in-flight
    /// requests, and takes the new weight; any other is new. Removed upstreams
    /// leave the table at once; requests already on them finish normally.
    pub fn replace(
        &self,
        configs: &[UpstreamConfig],
        make: impl Fn(&UpstreamConfig) -> Upstream,
    ) -> Change {
        let _w = self.write_lock();
        let current = self.table.load_full();
        let mut change = Change::default();
        let mut next = Vec::with_capacity(configs.len());
        for c in configs {
            match current.members.get(&c.name) {
                Some(u) if u.addr == c.addr && u.group == c.group && u.protocol == c.protocol => {
                    if u.base_weight() != c.weight {
                        u.set_base_weight(c.weight);
                    }
                    u.set_priority(c.priority);
                    change.kept += 1;
                    next.push(u.clone());
                }
                _ => {
                    let u = Arc::new(make(c));
                    change.added.push(u.clone());
                    next.push(u);
                }
            }
        }
        change.removed = current
            .upstreams()
            .iter()
            .filter(|u| !next.iter().any(|n| Arc::ptr_eq(n, u)))
            .cloned()
            .collect();
        let members = Arc::new(Members::new(next, self.ip_ring));
        self.store(Table::publish(
            members,
            self.algorithm,
            self.scale,
            Instant::now(),
        ));
        change
    }

    /// Publishes the weights in force to the metrics.
    fn publish_weights(&self, table: &Table) {
        for (i, u) in table.upstreams().iter().enumerate() {
            u.publish_effective_weight(table.effective(i));
        }
    }

    /// What each source wants, locked: edits of the set run one at a time.
    pub fn desired(&self) -> MutexGuard<'_, Desired> {
        self.desired.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What upstreams of this pool are made with.
    pub fn env(&self) -> &UpstreamEnv {
        &self.env
    }

    /// Whether panic mode overrules breakers and ejections now.
    pub fn in_panic(&self) -> bool {
        self.table.load().panic
    }

    /// Woken on every publication.
    pub fn published(&self) -> &Notify {
        &self.published
    }

    /// Client-request time over probe time (see [`crate::balancer::probe::scale`]);
    /// 1 until measured.
    pub fn probe_scale(&self) -> f64 {
        f64::from_bits(self.probe_scale.load(Ordering::Relaxed))
    }

    pub fn set_probe_scale(&self, scale: f64) {
        self.probe_scale.store(scale.to_bits(), Ordering::Relaxed);
    }

    /// The latency assumed for upstreams without samples (seconds).
    pub fn neutral_latency(&self) -> f64 {
        f64::from_bits(self.neutral.load(Ordering::Relaxed))
    }

    pub fn set_neutral_latency(&self, seconds: f64) {
        self.neutral.store(seconds.to_bits(), Ordering::Relaxed);
    }

    /// P2C's cost of sending to `u` now: latency × (in-flight + 1) / weight.
    pub fn cost(&self, u: &Upstream, now: Instant) -> f64 {
        let latency = u
            .latency_estimate(now)
            .unwrap_or_else(|| self.neutral_latency());
        let load = (u.inflight().max(0) + 1) as f64;
        latency * load / u.base_weight().max(1) as f64
    }

    /// Picks an upstream of `table` that `skip` does not rule out (upstreams
    /// a request already tried), then claims its breaker's probe if one is
    /// due; an upstream whose probe another request claimed first is passed
    /// over. None when nothing may be picked.
    pub fn pick(&self, table: &Table, skip: impl Fn(usize) -> bool, now: Instant) -> Option<Pick> {
        self.pick_with_rng(&mut rand::rng(), table, skip, now)
    }

    /// [`Pool::pick`] with the RNG P2C draws from.
    pub fn pick_with_rng<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        table: &Table,
        skip: impl Fn(usize) -> bool,
        now: Instant,
    ) -> Option<Pick> {
        let mut lost: SmallVec<[usize; 2]> = SmallVec::new();
        let cost = |i: usize| self.cost(&table.upstreams()[i], now);
        let limited = self.queue.is_some();
        for _ in 0..=table.gates.len() {
            let skipped = |i: usize| {
                skip(i) || lost.contains(&i) || (limited && table.upstreams()[i].at_limit())
            };
            let index = self.select(rng, table, &skipped, &cost)?;
            match claim(table, index, now) {
                Some(probe) => return Some(Pick { index, probe }),
                None => lost.push(index),
            }
        }
        None
    }

    /// After a pick found nothing: whether some upstream `skip` does not
    /// rule out could have been picked but for its concurrency limit.
    pub fn full(&self, table: &Table, skip: impl Fn(usize) -> bool) -> bool {
        self.queue.is_some()
            && table.upstreams().iter().enumerate().any(|(i, u)| {
                !skip(i) && (table.pickable(i) || table.sidelined.contains(&i)) && u.at_limit()
            })
    }

    /// How many places a second its upstreams free up at their limits:
    /// each one's limit over its response time.
    pub fn places_per_sec(&self, table: &Table, now: Instant) -> f64 {
        table
            .upstreams()
            .iter()
            .enumerate()
            .filter(|&(i, _)| table.pickable(i))
            .filter_map(|(_, u)| {
                let latency = u
                    .latency_estimate(now)
                    .unwrap_or_else(|| self.neutral_latency());
                Some(f64::from(u.concurrency_limit()?) / latency.max(1e-6))
            })
            .sum()
    }

    /// Chooses among what `table` publishes as pickable, save what `skip`
    /// rules out: smooth WRR or P2C by `cost`; a sidelined upstream only
    /// when nothing else is left.
    fn select<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        table: &Table,
        skip: &impl Fn(usize) -> bool,
        cost: &impl Fn(usize) -> f64,
    ) -> Option<usize> {
        let chosen = if self.algorithm == Algorithm::P2c {
            p2c::choose(rng, &table.cumulative, cost, |i| !skip(i))
        } else {
            wrr::walk(&table.cycle, &table.weights, &self.cursor, |i| !skip(i))
        };
        chosen.or_else(|| table.sidelined.iter().copied().find(|&i| !skip(i)))
    }
}

/// Lets a request picked for index `i` go there: `Some(probe)`, where
/// `probe` says it carries the breaker's probe that was due; None if another
/// request claimed that probe first (outside panic mode it may not go).
pub fn claim(table: &Table, i: usize, now: Instant) -> Option<bool> {
    if table.gates[i] != Gate::ProbeDue {
        return Some(false);
    }
    match table.upstreams()[i].claim_probe(now) {
        Admission::Probe => Some(true),
        Admission::Allowed => Some(false),
        Admission::Refused => table.panic.then_some(false),
    }
}

#[cfg(test)]
mod tests;
