//! Power of two choices (Mitzenmacher; Finagle's and Linkerd's balancer): draw two
//! distinct upstreams at random, in proportion to their weights, and send to the
//! one with the lower cost. Cost is supplied by the caller (peak EWMA times
//! in-flight plus one, over weight), so this stays pure; the RNG is passed in so
//! tests are deterministic.

use rand::Rng;

/// Rounds of fresh draws before falling back to a full scan.
const ROUNDS: usize = 4;

/// Prefix sums of `weights`, for weighted draws by binary search.
pub fn cumulative(weights: &[u32]) -> Vec<u64> {
    weights
        .iter()
        .scan(0u64, |sum, &w| {
            *sum += w as u64;
            Some(*sum)
        })
        .collect()
}

fn draw<R: Rng + ?Sized>(rng: &mut R, cumulative: &[u64], total: u64) -> usize {
    let r = rng.random_range(0..total);
    cumulative.partition_point(|&c| c <= r)
}

/// A weighted draw among all but `a`; None when `a` holds all the weight.
fn draw_other<R: Rng + ?Sized>(
    rng: &mut R,
    cumulative: &[u64],
    total: u64,
    a: usize,
) -> Option<usize> {
    let start = if a == 0 { 0 } else { cumulative[a - 1] };
    let wa = cumulative[a] - start;
    if total == wa {
        return None;
    }
    let mut r = rng.random_range(0..total - wa);
    if r >= start {
        r += wa;
    }
    Some(cumulative.partition_point(|&c| c <= r))
}

/// Chooses an upstream. `accept` is asked about the cheaper candidate first, then
/// the other; the first it accepts is returned (it may take a breaker probe, so
/// it is only asked about upstreams that would be chosen).
pub fn choose<R: Rng + ?Sized>(
    rng: &mut R,
    cumulative: &[u64],
    cost: impl Fn(usize) -> f64,
    mut accept: impl FnMut(usize) -> bool,
) -> Option<usize> {
    let total = cumulative.last().copied().unwrap_or(0);
    if total == 0 {
        return None;
    }
    for _ in 0..ROUNDS {
        let a = draw(rng, cumulative, total);
        let (first, second) = match draw_other(rng, cumulative, total, a) {
            None => (a, None),
            Some(b) if cost(b) < cost(a) => (b, Some(a)),
            Some(b) => (a, Some(b)),
        };
        if accept(first) {
            return Some(first);
        }
        if let Some(s) = second {
            if accept(s) {
                return Some(s);
            }
        }
    }
    // Most upstreams are vetoed: ask all of them, cheapest first (each cost
    // computed once).
    let mut ids: Vec<(f64, usize)> = (0..cumulative.len())
        .filter(|&i| cumulative[i] > if i == 0 { 0 } else { cumulative[i - 1] })
        .map(|i| (cost(i), i))
        .collect();
    ids.sort_by(|x, y| x.0.total_cmp(&y.0));
    ids.into_iter().map(|(_, i)| i).find(|&i| accept(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn the_cheaper_of_two_wins() {
        let mut rng = StdRng::seed_from_u64(7);
        let cum = cumulative(&[1, 1]);
        let costs = [5.0, 1.0];
        for _ in 0..100 {
            assert_eq!(choose(&mut rng, &cum, |i| costs[i], |_| true), Some(1));
        }
    }

    #[test]
    fn the_most_expensive_of_many_is_never_chosen() {
        let mut rng = StdRng::seed_from_u64(1);
        let cum = cumulative(&[1; 10]);
        let mut counts = [0usize; 10];
        for _ in 0..10_000 {
            let i = choose(&mut rng, &cum, |i| i as f64, |_| true).unwrap();
            counts[i] += 1;
        }
        assert_eq!(counts[9], 0);
        // The cheapest wins whenever it is drawn: about 2/10 of picks.
        assert!(counts[0] > 1500 && counts[0] < 2500, "{counts:?}");
        // Costs rank the shares.
        assert!(counts.windows(2).all(|w| w[0] >= w[1]), "{counts:?}");
    }

    #[test]
    fn draws_follow_weights_when_costs_are_equal() {
        let mut rng = StdRng::seed_from_u64(3);
        let cum = cumulative(&[3, 1, 0]);
        let mut counts = [0usize; 3];
        for _ in 0..20_000 {
            counts[choose(&mut rng, &cum, |_| 1.0, |_| true).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0, "weight 0 is never drawn");
        // Ties go to the first draw, so shares follow the weights: 3:1.
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((2.6..3.4).contains(&ratio), "{counts:?}");
    }

    #[test]
    fn a_vetoed_winner_falls_back_to_the_other() {
        let mut rng = StdRng::seed_from_u64(5);
        let cum = cumulative(&[1, 1]);
        let costs = [5.0, 1.0];
        assert_eq!(choose(&mut rng, &cum, |i| costs[i], |i| i != 1), Some(0));
        assert_eq!(choose(&mut rng, &cum, |i| costs[i], |_| false), None);
    }

    #[test]
    fn seeded_choices_repeat() {
        let cum = cumulative(&[1, 2, 3, 4]);
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50)
                .map(|_| choose(&mut rng, &cum, |i| (i % 3) as f64, |_| true).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
    }
}
