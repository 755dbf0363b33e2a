//! Panic mode (Envoy's healthy-panic threshold): breakers and ejections must
//! never leave fewer than half of the healthy upstreams eligible. Past that
//! point, failing answers are more likely the requests' fault than the
//! upstreams' (any client can ask for a URL that errors), so selection
//! overrules breakers and ejections and balances over every healthy
//! upstream. Decided each time the pool publishes its table, i.e. the moment
//! a gate changes; breakers keep probing meanwhile, so it ends once they
//! close again.

/// Whether `eligible` of `healthy` upstreams (healthy and in rotation) is too
/// few: fewer than half.
pub fn in_panic(healthy: usize, eligible: usize) -> bool {
    healthy > 0 && eligible * 2 < healthy
}

/// The event's text for a change into (or out of) panic mode.
pub fn describe(panic: bool, healthy: usize, eligible: usize) -> String {
    if panic {
        format!(
            "on: breakers and ejections leave {eligible} of {healthy} healthy upstreams \
             eligible; balancing over all {healthy} healthy upstreams"
        )
    } else {
        format!("off: {eligible} of {healthy} healthy upstreams eligible")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_half_of_the_healthy() {
        assert!(!in_panic(0, 0), "nothing healthy: a 503, not a panic");
        assert!(!in_panic(2, 1));
        assert!(in_panic(2, 0));
        assert!(in_panic(3, 1));
        assert!(!in_panic(4, 2));
        assert!(in_panic(5, 2));
    }
}
