//! The upstream table and selection.
//!
//! Readers never lock: the set of upstreams and the weights in force are one
//! immutable [`Table`] behind an `ArcSwap`, replaced whole when either changes;
//! a WRR pick is an atomic cursor step into it. Writers (the weights tick, the
//! admin API, discovery) take a small mutex so that their rebuilds do not race.

pub mod dynamic;
pub mod outlier;
pub mod p2c;
pub mod probe;
pub mod sideline;
pub mod slow_start;
pub mod standby;
pub mod table;
pub mod wrr;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::{ArcSwap, Guard};
use rand::Rng;

use crate::config::{Algorithm, UpstreamConfig};
use crate::upstream::Upstream;

pub use table::{Members, Table, DYNAMIC_SCALE};

/// How far a pick walks the cycle looking for an acceptable upstream before it
/// falls back to a scan of the table.
const MAX_WALK: usize = 64;

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

/// Picks upstreams from the table in force.
#[derive(Debug)]
pub struct Balancer {
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
    /// Panic mode: breakers are overruled (see `crate::panic`).
    panic: AtomicBool,
}

impl Balancer {
    /// A balancer over `upstreams`; `ramps` says slow start is on, so weights
    /// need a finer scale.
    pub fn new(
        algorithm: Algorithm,
        ip_ring: bool,
        ramps: bool,
        upstreams: Vec<Arc<Upstream>>,
    ) -> Self {
        let members = Arc::new(Members::new(upstreams, ip_ring));
        let scale = table::scale(algorithm, ramps);
        let b = Balancer {
            algorithm,
            scale,
            ip_ring,
            table: ArcSwap::from_pointee(Table::new(members, algorithm, scale)),
            cursor: AtomicUsize::new(0),
            writer: Mutex::new(()),
            neutral: AtomicU64::new(DEFAULT_LATENCY.to_bits()),
            probe_scale: AtomicU64::new(1f64.to_bits()),
            panic: AtomicBool::new(false),
        };
        b.publish(&b.table.load());
        b
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The table in force, for the request path (no reference count touched).
    pub fn load(&self) -> Guard<Arc<Table>> {
        self.table.load()
    }

    /// The table in force, to keep.
    pub fn table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    fn write_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads every upstream's weight (base, and `dynamic`'s factor) and puts
    /// the result in force. Returns false when nothing changed at the table's
    /// resolution, so the cycle is not rebuilt for nothing.
    pub fn refresh(&self) -> bool {
        let _w = self.write_lock();
        let current = self.table.load_full();
        let next = Table::new(current.members.clone(), self.algorithm, self.scale);
        if next.weights == current.weights {
            return false;
        }
        self.publish(&next);
        self.table.store(Arc::new(next));
        true
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
        let table = Table::new(members, self.algorithm, self.scale);
        self.publish(&table);
        self.table.store(Arc::new(table));
        change
    }

    /// Publishes the weights in force to the metrics.
    fn publish(&self, table: &Table) {
        for (i, u) in table.upstreams().iter().enumerate() {
            u.publish_effective_weight(table.effective(i));
        }
    }

    /// Whether panic mode overrules breakers now.
    pub fn in_panic(&self) -> bool {
        self.panic.load(Ordering::Relaxed)
    }

    /// Sets panic mode; returns what it was.
    pub fn set_panic(&self, panic: bool) -> bool {
        self.panic.swap(panic, Ordering::Relaxed)
    }

    /// Client-request time over probe time (see [`probe::scale`]); 1 until
    /// measured.
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

    /// Chooses an index of `table` that `accept` takes (callers veto upstreams
    /// already tried, or not eligible). `accept` may have side effects (it can
    /// take a breaker's probe), so the first index it accepts is the one
    /// returned. `cost` ranks candidates for P2C. None when none is acceptable.
    pub fn select(
        &self,
        table: &Table,
        accept: impl FnMut(usize) -> bool,
        cost: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        self.select_with_rng(&mut rand::rng(), table, accept, cost)
    }

    /// [`Balancer::select`] with the RNG P2C draws from.
    pub fn select_with_rng<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        table: &Table,
        mut accept: impl FnMut(usize) -> bool,
        cost: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        let chosen = if self.algorithm == Algorithm::P2c {
            p2c::choose(rng, &table.cumulative, cost, &mut accept)
        } else {
            self.walk(table, &mut accept)
        };
        // A slow upstream serves rather than none: sidelined ones are asked
        // only when every other is vetoed.
        chosen.or_else(|| table.sidelined.iter().copied().find(|&i| accept(i)))
    }

    /// Smooth WRR: walks the cycle, then asks every upstream, heaviest first.
    fn walk(&self, table: &Table, accept: &mut impl FnMut(usize) -> bool) -> Option<usize> {
        let len = table.cycle.len();
        if len == 0 {
            return None;
        }
        for _ in 0..len.min(MAX_WALK) {
            let i = self.cursor.fetch_add(1, Ordering::Relaxed) % len;
            let id = table.cycle[i] as usize;
            if accept(id) {
                return Some(id);
            }
        }
        // Most of the cycle is vetoed: ask every upstream, heaviest first.
        let mut rest: Vec<usize> = (0..table.weights.len())
            .filter(|&id| table.weights[id] > 0)
            .collect();
        rest.sort_by_key(|&id| std::cmp::Reverse(table.weights[id]));
        rest.into_iter().find(|&id| accept(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::tests::env;
    use crate::upstream::UpstreamEnv;

    fn configs(weights: &[u32]) -> Vec<UpstreamConfig> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let addr = format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
                UpstreamConfig::new(format!("u{i}"), addr, w)
            })
            .collect()
    }

    fn balancer(algorithm: Algorithm, weights: &[u32]) -> (Balancer, UpstreamEnv) {
        let env = env("lb:\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:1\" }\n");
        let ups = configs(weights)
            .iter()
            .map(|c| Arc::new(Upstream::new(c, &env)))
            .collect();
        (Balancer::new(algorithm, false, false, ups), env)
    }

    fn picks(b: &Balancer, n: usize) -> Vec<usize> {
        let t = b.table();
        (0..n)
            .filter_map(|_| b.select(&t, |_| true, |_| 0.0))
            .collect()
    }

    #[test]
    fn weighted_follows_the_cycle() {
        let (b, _) = balancer(Algorithm::Weighted, &[5, 3, 2]);
        let p = picks(&b, 1000);
        let count = |i| p.iter().filter(|&&x| x == i).count();
        assert_eq!((count(0), count(1), count(2)), (500, 300, 200));
    }

    #[test]
    fn round_robin_ignores_weights() {
        let (b, _) = balancer(Algorithm::RoundRobin, &[5, 3, 2]);
        assert_eq!(picks(&b, 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn vetoed_upstreams_are_skipped() {
        let (b, _) = balancer(Algorithm::Weighted, &[5, 3, 2]);
        let t = b.table();
        for _ in 0..100 {
            assert_ne!(b.select(&t, |id| id != 0, |_| 0.0).unwrap(), 0);
        }
        assert_eq!(b.select(&t, |_| false, |_| 0.0), None);
    }

    #[test]
    fn a_rarely_scheduled_upstream_is_still_found() {
        let (b, _) = balancer(Algorithm::Weighted, &[10_000, 1]);
        assert_eq!(b.select(&b.table(), |id| id == 1, |_| 0.0), Some(1));
    }

    #[test]
    fn factors_steer_dynamic_and_refresh_rebuilds_only_on_change() {
        let (b, _) = balancer(Algorithm::Dynamic, &[1, 1]);
        b.table().upstreams()[1].set_factor(0.05);
        assert!(b.refresh());
        assert!(!b.refresh(), "unchanged");
        let p = picks(&b, 1050);
        assert_eq!(p.iter().filter(|&&i| i == 1).count(), 50);
        assert_eq!(b.table().effective(1), 0.05);
        b.table().upstreams()[1].set_factor(1.0);
        b.refresh();
        assert_eq!(picks(&b, 100).iter().filter(|&&i| i == 1).count(), 50);
    }

    #[test]
    fn a_sidelined_upstream_serves_only_when_every_other_is_vetoed() {
        for algorithm in [Algorithm::Dynamic, Algorithm::P2c] {
            let (b, _) = balancer(algorithm, &[1, 1, 1]);
            b.table().upstreams()[2].set_sidelined(true, "test");
            assert!(b.refresh());
            let t = b.table();
            assert_eq!(t.effective(2), 0.0);
            assert_eq!(t.sidelined, [2]);
            assert!(picks(&b, 300).iter().all(|&i| i != 2), "{algorithm:?}");
            assert_eq!(b.select(&t, |i| i == 2, |_| 0.0), Some(2));
            assert_eq!(b.select(&t, |_| false, |_| 0.0), None);
        }
        // The other algorithms take no account of latency.
        let (b, _) = balancer(Algorithm::Weighted, &[1, 1]);
        b.table().upstreams()[1].set_sidelined(true, "test");
        b.refresh();
        assert_eq!(b.table().effective(1), 1.0);
    }

    #[test]
    fn p2c_prefers_the_cheaper_upstream() {
        use rand::SeedableRng;
        let (b, _) = balancer(Algorithm::P2c, &[1, 1, 1]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let costs = [0.5, 0.1, 9.0];
        let t = b.table();
        let p: Vec<usize> = (0..300)
            .filter_map(|_| b.select_with_rng(&mut rng, &t, |_| true, |i| costs[i]))
            .collect();
        assert!(!p.contains(&2));
        assert!(p.iter().filter(|&&i| i == 1).count() > 150);
    }

    #[test]
    fn replace_keeps_the_state_of_unchanged_upstreams() {
        let (b, env) = balancer(Algorithm::Weighted, &[1, 1, 1]);
        let before = b.table();
        let u1 = before.upstreams()[1].clone();
        u1.set_drained(true);
        // u0 keeps its address with a new weight, u1 moves, u2 leaves, u3 arrives.
        let mut next = configs(&[4, 1, 1, 2]);
        next[1].addr = "127.0.0.1:2999".parse().unwrap();
        next.remove(2);
        let change = b.replace(&next, |c| Upstream::new(c, &env));
        assert_eq!(change.kept, 1);
        let added: Vec<&str> = change.added.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(added, ["u1", "u3"]);
        let removed: Vec<&str> = change.removed.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(removed, ["u1", "u2"]);
        let after = b.table();
        assert!(Arc::ptr_eq(&after.upstreams()[0], &before.upstreams()[0]));
        assert_eq!(after.upstreams()[0].base_weight(), 4);
        assert!(
            !after.upstreams()[1].is_drained(),
            "a moved upstream starts afresh"
        );
        assert_eq!(after.members.index_of("u3"), Some(2));
        assert_eq!(after.members.index_of("u2"), None);
        let p = picks(&b, 700);
        assert_eq!(p.iter().filter(|&&i| i == 0).count(), 400);
        // The old table still reads consistently for whoever holds it.
        assert_eq!(before.upstreams()[2].name, "u2");
    }
}
