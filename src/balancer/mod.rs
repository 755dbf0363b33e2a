//! The upstream table and selection.
//!
//! Readers never lock: the weights in force and the unrolled smooth-WRR cycle are
//! one immutable [`Table`] behind an `ArcSwap`, replaced whole when weights change;
//! a pick is an atomic cursor step into it.

pub mod wrr;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Algorithm;

/// Weights in force and the selection cycle derived from them.
#[derive(Debug)]
pub struct Table {
    /// Weight used for selection, by upstream id (0 = not selectable).
    pub weights: Vec<u32>,
    /// One smooth-WRR cycle over `weights`, as upstream ids.
    cycle: Vec<u32>,
}

impl Table {
    pub fn new(weights: Vec<u32>) -> Self {
        let cycle = wrr::schedule(&weights);
        Table { weights, cycle }
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
        Balancer {
            algorithm,
            table: ArcSwap::from_pointee(Table::new(Self::selection_weights(
                algorithm,
                base_weights,
            ))),
            cursor: AtomicUsize::new(0),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Round robin ignores weights; the others start from the base weights.
    fn selection_weights(algorithm: Algorithm, base: &[u32]) -> Vec<u32> {
        match algorithm {
            Algorithm::RoundRobin => base.iter().map(|&w| u32::from(w > 0)).collect(),
            _ => base.to_vec(),
        }
    }

    /// Replaces the weights in force (by upstream id).
    pub fn set_weights(&self, weights: &[u32]) {
        self.table
            .store(Arc::new(Table::new(Self::selection_weights(
                self.algorithm,
                weights,
            ))));
    }

    /// The table in force.
    pub fn table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// The next upstream in the cycle that `accept` takes (callers veto upstreams
    /// already tried, or not eligible). `accept` may have side effects (it can
    /// take a breaker's probe), so the first upstream it accepts is the one
    /// returned. None when no upstream is acceptable.
    pub fn select(&self, mut accept: impl FnMut(usize) -> bool) -> Option<usize> {
        let table = self.table.load();
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
        let picks: Vec<usize> = (0..1000).filter_map(|_| b.select(|_| true)).collect();
        let count = |i| picks.iter().filter(|&&x| x == i).count();
        assert_eq!((count(0), count(1), count(2)), (500, 300, 200));
    }

    #[test]
    fn round_robin_ignores_weights() {
        let b = Balancer::new(Algorithm::RoundRobin, &[5, 3, 2]);
        let picks: Vec<usize> = (0..6).filter_map(|_| b.select(|_| true)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn vetoed_upstreams_are_skipped() {
        let b = Balancer::new(Algorithm::Weighted, &[5, 3, 2]);
        for _ in 0..100 {
            let id = b.select(|id| id != 0).unwrap();
            assert_ne!(id, 0);
        }
        assert_eq!(b.select(|_| false), None);
    }

    #[test]
    fn a_rarely_scheduled_upstream_is_still_found() {
        // Upstream 1 appears once in a cycle far longer than the walk.
        let b = Balancer::new(Algorithm::Weighted, &[10_000, 1]);
        assert_eq!(b.select(|id| id == 1), Some(1));
    }

    #[test]
    fn new_weights_take_effect() {
        let b = Balancer::new(Algorithm::Weighted, &[1, 1]);
        b.set_weights(&[0, 4]);
        for _ in 0..10 {
            assert_eq!(b.select(|_| true), Some(1));
        }
    }
}
