//! The upstream table and selection.
//!
//! Readers never lock: the weights in force and the unrolled smooth-WRR cycle are
//! one immutable [`Table`] behind an `ArcSwap`, replaced whole when weights change;
//! a pick is an atomic cursor step into it.

pub mod p2c;
pub mod wrr;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rand::Rng;

use crate::config::Algorithm;

/// Selection weights carry two decimals of the latency factor.
pub const DYNAMIC_SCALE: u32 = 100;

/// Weights in force and the selection structures derived from them.
#[derive(Debug)]
pub struct Table {
    /// Integer selection weight by upstream id (0 = not selectable); the weight
    /// in force is `weights[id] / scale`.
    pub weights: Vec<u32>,
    /// Fixed-point scale of `weights` (1, or [`DYNAMIC_SCALE`] for `dynamic`).
    pub scale: u32,
    /// One smooth-WRR cycle over `weights`, as upstream ids.
    cycle: Vec<u32>,
    /// Prefix sums of `weights`, for P2C's weighted draws.
    cumulative: Vec<u64>,
}

impl Table {
    pub fn new(weights: Vec<u32>, scale: u32, algorithm: Algorithm) -> Self {
        let (cycle, cumulative) = match algorithm {
            Algorithm::P2c => (Vec::new(), p2c::cumulative(&weights)),
            _ => (wrr::schedule(&weights), Vec::new()),
        };
        Table {
            weights,
            scale,
            cycle,
            cumulative,
        }
    }

    /// The weight in force for upstream `id`.
    pub fn effective(&self, id: usize) -> f64 {
        self.weights.get(id).copied().unwrap_or(0) as f64 / self.scale as f64
    }
}

/// Picks upstreams by id. Ids are indices into the state's upstream list.
#[derive(Debug)]
pub struct Balancer {
    algorithm: Algorithm,
    table: ArcSwap<Table>,
    cursor: AtomicUsize,
}

/// How far a pick walks the cycle looking for an acceptable upstream before it
/// falls back to a scan of the table.
const MAX_WALK: usize = 64;

impl Balancer {
    /// `base_weights` by upstream id.
    pub fn new(algorithm: Algorithm, base_weights: &[u32]) -> Self {
        let b = Balancer {
            algorithm,
            table: ArcSwap::from_pointee(Table::new(Vec::new(), 1, algorithm)),
            cursor: AtomicUsize::new(0),
        };
        b.set_weights(base_weights);
        b
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Installs base weights (by upstream id) as the weights in force. Round
    /// robin ignores their values.
    pub fn set_weights(&self, base: &[u32]) {
        let weights = match self.algorithm {
            Algorithm::RoundRobin => base.iter().map(|&w| u32::from(w > 0)).collect(),
            _ => base.to_vec(),
        };
        self.table
            .store(Arc::new(Table::new(weights, 1, self.algorithm)));
    }

    /// Installs fractional effective weights (by upstream id), as `dynamic`
    /// computes them. Returns false when nothing changed at the table's
    /// resolution, so the cycle is not rebuilt for nothing.
    pub fn set_effective_weights(&self, effective: &[f64]) -> bool {
        let weights: Vec<u32> = effective
            .iter()
            .map(|&e| {
                if e > 0.0 {
                    ((e * DYNAMIC_SCALE as f64).round() as u32).max(1)
                } else {
                    0
                }
            })
            .collect();
        if self.table.load().weights == weights {
            return false;
        }
        self.table
            .store(Arc::new(Table::new(weights, DYNAMIC_SCALE, self.algorithm)));
        true
    }

    /// The table in force.
    pub fn table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// Chooses an upstream that `accept` takes (callers veto upstreams already
    /// tried, or not eligible). `accept` may have side effects (it can take a
    /// breaker's probe), so the first upstream it accepts is the one returned.
    /// `cost` ranks candidates for P2C. None when no upstream is acceptable.
    pub fn select(
        &self,
        accept: impl FnMut(usize) -> bool,
        cost: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        self.select_with_rng(&mut rand::rng(), accept, cost)
    }

    /// [`Balancer::select`] with the RNG P2C draws from.
    pub fn select_with_rng<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        mut accept: impl FnMut(usize) -> bool,
        cost: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        let table = self.table.load();
        if self.algorithm == Algorithm::P2c {
            return p2c::choose(rng, &table.cumulative, cost, accept);
        }
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

    #[test]
    fn weighted_follows_the_cycle() {
        let b = Balancer::new(Algorithm::Weighted, &[5, 3, 2]);
        let picks: Vec<usize> = (0..1000)
            .filter_map(|_| b.select(|_| true, |_| 0.0))
            .collect();
        let count = |i| picks.iter().filter(|&&x| x == i).count();
        assert_eq!((count(0), count(1), count(2)), (500, 300, 200));
    }

    #[test]
    fn round_robin_ignores_weights() {
        let b = Balancer::new(Algorithm::RoundRobin, &[5, 3, 2]);
        let picks: Vec<usize> = (0..6).filter_map(|_| b.select(|_| true, |_| 0.0)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn vetoed_upstreams_are_skipped() {
        let b = Balancer::new(Algorithm::Weighted, &[5, 3, 2]);
        for _ in 0..100 {
            let id = b.select(|id| id != 0, |_| 0.0).unwrap();
            assert_ne!(id, 0);
        }
        assert_eq!(b.select(|_| false, |_| 0.0), None);
    }

    #[test]
    fn a_rarely_scheduled_upstream_is_still_found() {
        // Upstream 1 appears once in a cycle far longer than the walk.
        let b = Balancer::new(Algorithm::Weighted, &[10_000, 1]);
        assert_eq!(b.select(|id| id == 1, |_| 0.0), Some(1));
    }

    #[test]
    fn effective_weights_steer_the_cycle() {
        let b = Balancer::new(Algorithm::Dynamic, &[1, 1]);
        assert!(b.set_effective_weights(&[1.0, 0.05]));
        assert!(!b.set_effective_weights(&[1.0, 0.05]), "unchanged");
        let picks: Vec<usize> = (0..1050)
            .filter_map(|_| b.select(|_| true, |_| 0.0))
            .collect();
        let slow = picks.iter().filter(|&&i| i == 1).count();
        assert_eq!(slow, 50);
        assert_eq!(b.table().effective(1), 0.05);
        // Back to equal: shares follow at once.
        b.set_effective_weights(&[1.0, 1.0]);
        let picks: Vec<usize> = (0..100)
            .filter_map(|_| b.select(|_| true, |_| 0.0))
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 50);
    }

    #[test]
    fn p2c_prefers_the_cheaper_upstream() {
        use rand::SeedableRng;
        let b = Balancer::new(Algorithm::P2c, &[1, 1, 1]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let costs = [0.5, 0.1, 9.0];
        let picks: Vec<usize> = (0..300)
            .filter_map(|_| b.select_with_rng(&mut rng, |_| true, |i| costs[i]))
            .collect();
        assert!(!picks.contains(&2));
        assert!(picks.iter().filter(|&&i| i == 1).count() > 150);
    }

    #[test]
    fn new_weights_take_effect() {
        let b = Balancer::new(Algorithm::Weighted, &[1, 1]);
        b.set_weights(&[0, 4]);
        for _ in 0..10 {
            assert_eq!(b.select(|_| true, |_| 0.0), Some(1));
        }
    }
}
