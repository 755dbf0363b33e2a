//! Smooth weighted round robin, nginx's algorithm: each pick adds every weight to
//! its upstream's score, takes the highest score and subtracts the total from it.
//! Weights 5:1 give A A A B A A rather than A A A A A B.
//!
//! The request path does not run this: [`schedule`] unrolls one whole cycle into
//! a list that readers walk with an atomic cursor, so a pick costs O(1).

use std::sync::atomic::{AtomicUsize, Ordering};

/// How far a pick walks the cycle looking for an acceptable upstream before it
/// falls back to a scan of the weights.
const MAX_WALK: usize = 64;

/// Walks `cycle` from the shared `cursor` to the first index `accept` takes;
/// past [`MAX_WALK`] steps, asks every weighted index, heaviest first.
pub fn walk(
    cycle: &[u32],
    weights: &[u32],
    cursor: &AtomicUsize,
    mut accept: impl FnMut(usize) -> bool,
) -> Option<usize> {
    let len = cycle.len();
    if len == 0 {
        return None;
    }
    for _ in 0..len.min(MAX_WALK) {
        let i = cursor.fetch_add(1, Ordering::Relaxed) % len;
        let id = cycle[i] as usize;
        if accept(id) {
            return Some(id);
        }
    }
    // Most of the cycle is ruled out: ask every upstream, heaviest first.
    let mut rest: Vec<usize> = (0..weights.len()).filter(|&id| weights[id] > 0).collect();
    rest.sort_by_key(|&id| std::cmp::Reverse(weights[id]));
    rest.into_iter().find(|&id| accept(id))
}

/// nginx's smooth weighted round robin, one pick at a time.
#[derive(Debug, Clone)]
pub struct SmoothWrr {
    weights: Vec<u64>,
    current: Vec<i64>,
    total: i64,
}

impl SmoothWrr {
    pub fn new(weights: &[u32]) -> Self {
        SmoothWrr {
            weights: weights.iter().map(|&w| w as u64).collect(),
            current: vec![0; weights.len()],
            total: weights.iter().map(|&w| w as i64).sum(),
        }
    }

    /// The next index, or None when every weight is zero. Ties go to the lowest
    /// index, as in nginx.
    pub fn pick(&mut self) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        let mut best: Option<usize> = None;
        for (i, w) in self.weights.iter().enumerate() {
            if *w == 0 {
                continue;
            }
            self.current[i] += *w as i64;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= self.total;
        Some(b)
    }
}

/// Longest cycle unrolled; heavier weight sets are scaled down to fit, keeping
/// every non-zero weight at least 1.
pub const MAX_CYCLE: u64 = 1 << 16;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One full cycle of smooth WRR over `weights`, as indices. Weights are first
/// divided by their common divisor (5:5 is 1:1), then scaled down if the cycle
/// would exceed [`MAX_CYCLE`].
pub fn schedule(weights: &[u32]) -> Vec<u32> {
    let g = weights
        .iter()
        .filter(|&&w| w > 0)
        .fold(0u64, |g, &w| gcd(g, w as u64));
    if g == 0 {
        return Vec::new();
    }
    let mut w: Vec<u32> = weights.iter().map(|&x| (x as u64 / g) as u32).collect();
    let sum: u64 = w.iter().map(|&x| x as u64).sum();
    if sum > MAX_CYCLE {
        let scale = MAX_CYCLE as f64 / sum as f64;
        for x in w.iter_mut().filter(|x| **x > 0) {
            *x = ((*x as f64 * scale).round() as u32).max(1);
        }
    }
    let len: u64 = w.iter().map(|&x| x as u64).sum();
    let mut wrr = SmoothWrr::new(&w);
    (0..len)
        .map_while(|_| wrr.pick().map(|i| i as u32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(seq: &[u32]) -> String {
        seq.iter().map(|&i| (b'A' + i as u8) as char).collect()
    }

    fn max_run(seq: &[u32]) -> usize {
        let mut best = 0;
        let mut run = 0;
        for (i, x) in seq.iter().enumerate() {
            run = if i > 0 && seq[i - 1] == *x {
                run + 1
            } else {
                1
            };
            best = best.max(run);
        }
        best
    }

    #[test]
    fn five_to_one_interleaves() {
        let seq = schedule(&[5, 1]);
        assert_eq!(names(&seq), "AAABAA");
    }

    #[test]
    fn nginx_reference_sequence() {
        // The sequence nginx documents for weights 5, 1, 1.
        assert_eq!(names(&schedule(&[5, 1, 1])), "AABACAA");
    }

    #[test]
    fn five_three_two_never_runs_more_than_two() {
        let seq = schedule(&[5, 3, 2]);
        assert_eq!(seq.len(), 10);
        // Across the cycle boundary too: check two cycles back to back.
        let twice: Vec<u32> = seq.iter().chain(seq.iter()).copied().collect();
        assert!(max_run(&twice) <= 2, "{}", names(&twice));
        let count = |i| seq.iter().filter(|&&x| x == i).count();
        assert_eq!((count(0), count(1), count(2)), (5, 3, 2));
    }

    #[test]
    fn shares_follow_weights() {
        let weights = [7, 1, 4, 0, 12];
        let seq = schedule(&weights);
        for (i, w) in weights.iter().enumerate() {
            let n = seq.iter().filter(|&&x| x == i as u32).count();
            assert_eq!(n, *w as usize, "upstream {i}");
        }
    }

    #[test]
    fn common_divisor_shortens_the_cycle() {
        assert_eq!(schedule(&[10, 10]).len(), 2);
        assert_eq!(schedule(&[6, 4]).len(), 5);
    }

    #[test]
    fn all_zero_gives_nothing() {
        assert!(schedule(&[0, 0]).is_empty());
        assert!(schedule(&[]).is_empty());
        assert_eq!(SmoothWrr::new(&[0]).pick(), None);
    }

    #[test]
    fn heavy_weights_are_scaled_to_the_cap() {
        let weights: Vec<u32> = (0..1000).map(|i| 9_999 - i).collect();
        let seq = schedule(&weights);
        assert!(seq.len() as u64 <= MAX_CYCLE + 1000);
        // Every upstream still appears.
        let mut seen = vec![false; weights.len()];
        for &i in &seq {
            seen[i as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Over one cycle every upstream gets exactly its weight's share (after
        /// the common divisor), and over any window the deviation from the ideal
        /// share stays below one pick per upstream: smoothness.
        #[test]
        fn shares_converge_to_the_weights(weights in prop::collection::vec(0u32..50, 1..12)) {
            let seq = schedule(&weights);
            let total: u64 = weights.iter().map(|&w| w as u64).sum();
            prop_assume!(total > 0);
            let g = weights.iter().filter(|&&w| w > 0).fold(0u64, |g, &w| gcd(g, w as u64));
            prop_assert_eq!(seq.len() as u64, total / g);
            for (i, &w) in weights.iter().enumerate() {
                let n = seq.iter().filter(|&&x| x as usize == i).count() as u64;
                prop_assert_eq!(n, w as u64 / g);
            }
            let mut counts = vec![0f64; weights.len()];
            for (k, &id) in seq.iter().enumerate() {
                counts[id as usize] += 1.0;
                for (i, &w) in weights.iter().enumerate() {
                    let ideal = (k + 1) as f64 * w as f64 / total as f64;
                    prop_assert!((counts[i] - ideal).abs() < weights.len() as f64,
                        "upstream {} strays from its share at pick {}", i, k);
                }
            }
        }
    }
}
