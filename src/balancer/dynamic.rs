//! `dynamic`'s latency factors, as a pure function: each upstream's factor is
//! (fastest estimate / its own estimate), clamped to [`min_factor`, 1]. The
//! fastest is taken over upstreams that can take traffic now; an upstream
//! without a recent estimate gets full weight.

/// What one weights tick computes.
#[derive(Debug, Clone, PartialEq)]
pub struct Factors {
    /// By upstream, in the order given.
    pub factors: Vec<f64>,
    /// The mean of the known estimates (seconds): assumed for upstreams without
    /// samples, so a new upstream is neither flooded nor starved. None when no
    /// estimate is known.
    pub neutral: Option<f64>,
}

/// `estimates[i]` is upstream i's recent latency (seconds), if known;
/// `usable[i]` whether it can take traffic now.
pub fn factors(estimates: &[Option<f64>], usable: &[bool], min_factor: f64) -> Factors {
    let known: Vec<f64> = estimates.iter().flatten().copied().collect();
    let neutral =
        (!known.is_empty()).then(|| (known.iter().sum::<f64>() / known.len() as f64).max(1e-6));
    let fastest = estimates
        .iter()
        .zip(usable)
        .filter(|(_, u)| **u)
        .filter_map(|(e, _)| *e)
        .fold(f64::INFINITY, f64::min);
    let factors = estimates
        .iter()
        .map(|e| match e {
            Some(own) if fastest.is_finite() && *own > 0.0 => {
                (fastest / own).clamp(min_factor, 1.0)
            }
            _ => 1.0,
        })
        .collect();
    Factors { factors, neutral }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_follow_latency_and_are_clamped() {
        let f = factors(
            &[Some(0.010), Some(0.040), Some(10.0), None],
            &[true; 4],
            0.05,
        );
        assert_eq!(f.factors[0], 1.0);
        assert!((f.factors[1] - 0.25).abs() < 1e-9, "{f:?}");
        assert_eq!(f.factors[2], 0.05, "clamped to min_factor");
        assert_eq!(f.factors[3], 1.0, "no samples: full weight");
        let mean = (0.010 + 0.040 + 10.0) / 3.0;
        assert!((f.neutral.unwrap() - mean).abs() < 1e-12);
    }

    #[test]
    fn the_fastest_is_taken_over_usable_upstreams_only() {
        // The fastest is out of rotation: the others are compared with each other.
        let f = factors(
            &[Some(0.001), Some(0.020), Some(0.040)],
            &[false, true, true],
            0.05,
        );
        assert_eq!(f.factors[1], 1.0);
        assert!((f.factors[2] - 0.5).abs() < 1e-9, "{f:?}");
    }

    #[test]
    fn nothing_known_means_full_weight_and_no_neutral() {
        let f = factors(&[None, None], &[true, true], 0.05);
        assert_eq!(f.factors, [1.0, 1.0]);
        assert_eq!(f.neutral, None);
        let f = factors(&[Some(0.01), Some(0.02)], &[false, false], 0.05);
        assert_eq!(f.factors, [1.0, 1.0], "no usable upstream to compare with");
    }

    #[test]
    fn a_recovered_upstream_gets_its_weight_back() {
        let slow = factors(&[Some(0.010), Some(0.100)], &[true, true], 0.05);
        assert!((slow.factors[1] - 0.1).abs() < 1e-9);
        let recovered = factors(&[Some(0.010), Some(0.011)], &[true, true], 0.05);
        assert!(recovered.factors[1] > 0.9);
    }
}
