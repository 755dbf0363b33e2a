//! Sidelining, for the latency-aware algorithms: an upstream slower than the
//! fastest by more than `1 / min_factor` takes no client requests at all, so
//! its slowness stops reaching clients' tail latency. Its estimate is kept
//! current by probes meanwhile, and they bring it back. Pure; the weights tick
//! applies it.
//!
//! Coming back takes two agreeing measures: the estimates (client time, or
//! probes scaled to it), and the probes alone against the fastest's probes.
//! A stall on the balancer's own machine lifts every client-side estimate of
//! the fast upstreams at once (a peak EWMA takes one slow sample whole and
//! keeps it for seconds), which would move the line past a still-slow
//! upstream; both sides' probes are taken the same way and stay put.

/// A sidelined upstream returns once it is under this share of the threshold,
/// so that one hovering at the line does not flap in and out.
pub const RETURN_AT: f64 = 0.8;

/// What the decision needs to know of one upstream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Its latency estimate in seconds, if known.
    pub estimate: Option<f64>,
    /// Healthy and not drained (counted as panic mode counts).
    pub available: bool,
    /// Available, breaker closed and not ejected.
    pub usable: bool,
    /// Whether it is sidelined now.
    pub sidelined: bool,
    /// Its typical probe (health check) time in seconds, if any passed.
    pub probe: Option<f64>,
}

/// The lowest latency estimate among usable candidates (seconds), if any is
/// known: the reference both sidelining and its explanation use.
pub fn fastest(candidates: &[Candidate]) -> Option<f64> {
    candidates
        .iter()
        .filter(|c| c.usable)
        .filter_map(|c| c.estimate)
        .min_by(f64::total_cmp)
}

/// The lowest typical probe time among usable candidates (seconds).
fn fastest_probe(candidates: &[Candidate]) -> Option<f64> {
    candidates
        .iter()
        .filter(|c| c.usable)
        .filter_map(|c| c.probe)
        .filter(|p| *p > 0.0)
        .min_by(f64::total_cmp)
}

/// Which of `candidates` sit out client traffic. Only usable upstreams are
/// judged (the others keep their state until they are usable again), and
/// never so many that fewer than half the available ones are left to serve
/// (panic mode's line): the slowest go first.
pub fn sidelined(candidates: &[Candidate], min_factor: f64) -> Vec<bool> {
    let fastest = fastest(candidates).unwrap_or(f64::INFINITY);
    let mut out: Vec<bool> = candidates
        .iter()
        .map(|c| c.sidelined && !c.usable)
        .collect();
    if !fastest.is_finite() || fastest <= 0.0 || min_factor <= 0.0 {
        return out;
    }
    let threshold = fastest / min_factor;
    let probe_line = fastest_probe(candidates).map(|f| f / min_factor * RETURN_AT);
    let mut wanted: Vec<(f64, usize)> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.usable)
        .filter_map(|(i, c)| {
            let e = c.estimate?;
            let out = if c.sidelined {
                // Stays out while either measure still puts it past the line.
                let by_probe = matches!((c.probe, probe_line), (Some(p), Some(l)) if p > l);
                e > threshold * RETURN_AT || by_probe
            } else {
                e > threshold
            };
            out.then_some((e, i))
        })
        .collect();
    let available = candidates.iter().filter(|c| c.available).count();
    let usable = candidates.iter().filter(|c| c.usable).count();
    let room = usable.saturating_sub(available.div_ceil(2));
    wanted.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (_, i) in wanted.into_iter().take(room) {
        out[i] = true;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(estimate_ms: f64, sidelined: bool) -> Candidate {
        Candidate {
            estimate: Some(estimate_ms / 1e3),
            available: true,
            usable: true,
            sidelined,
            probe: None,
        }
    }

    fn probed(estimate_ms: f64, sidelined: bool, probe_ms: f64) -> Candidate {
        Candidate {
            probe: Some(probe_ms / 1e3),
            ..up(estimate_ms, sidelined)
        }
    }

    #[test]
    fn only_an_upstream_past_the_threshold_is_sidelined() {
        // min_factor 0.2: past 5× the fastest.
        let c = [up(5.0, false), up(5.5, false), up(50.0, false)];
        assert_eq!(sidelined(&c, 0.2), [false, false, true]);
        let c = [up(5.0, false), up(20.0, false), up(24.0, false)];
        assert_eq!(sidelined(&c, 0.2), [false, false, false], "4.8× stays");
    }

    #[test]
    fn returning_needs_to_come_well_under_the_line() {
        // Threshold 25 ms; a sidelined one returns under 20 ms.
        let c = [up(5.0, false), up(5.0, false), up(22.0, true)];
        assert_eq!(sidelined(&c, 0.2), [false, false, true]);
        let c = [up(5.0, false), up(5.0, false), up(19.0, true)];
        assert_eq!(sidelined(&c, 0.2), [false, false, false]);
        let c = [up(5.0, false), up(5.0, false), up(22.0, false)];
        assert_eq!(sidelined(&c, 0.2), [false, false, false]);
    }

    #[test]
    fn a_stall_that_lifts_the_fast_estimates_does_not_bring_a_slow_one_back() {
        // The fast ones' estimates jumped to 30 ms (a stall on this machine):
        // by estimates alone the 100 ms one is under 0.8 × 5 × 30 ms.
        let stalled = [
            probed(30.0, false, 5.0),
            probed(32.0, false, 5.0),
            probed(100.0, true, 100.0),
        ];
        assert_eq!(sidelined(&stalled, 0.2), [false, false, true]);
        // Without probes to compare, the estimates decide, as before.
        let c = [up(30.0, false), up(32.0, false), up(100.0, true)];
        assert_eq!(sidelined(&c, 0.2), [false, false, false]);
        // Really fast again: both measures agree, and it returns.
        let recovered = [
            probed(5.0, false, 5.0),
            probed(5.0, false, 5.0),
            probed(6.0, true, 6.0),
        ];
        assert_eq!(sidelined(&recovered, 0.2), [false, false, false]);
        // Probes alone never sideline: entering is the estimates' call.
        let c = [
            probed(5.0, false, 5.0),
            probed(5.0, false, 5.0),
            probed(6.0, false, 90.0),
        ];
        assert_eq!(sidelined(&c, 0.2), [false, false, false]);
    }

    #[test]
    fn at_least_half_the_available_upstreams_keep_serving() {
        // Three of four are slow: two may sit out (two of four serve), the
        // slowest.
        let c = [
            up(5.0, false),
            up(60.0, false),
            up(90.0, false),
            up(70.0, false),
        ];
        assert_eq!(sidelined(&c, 0.2), [false, false, true, true]);
        // With one of them broken (not usable), one: two of four serve.
        let mut c = c;
        c[1].usable = false;
        assert_eq!(sidelined(&c, 0.2), [false, false, true, false]);
        // With two broken, none may sit out.
        c[3].usable = false;
        assert_eq!(sidelined(&c, 0.2), [false, false, false, false]);
        // Two upstreams: one may sit out (one of two is half).
        assert_eq!(
            sidelined(&[up(5.0, false), up(50.0, false)], 0.2),
            [false, true]
        );
        assert_eq!(sidelined(&[up(50.0, false)], 0.2), [false]);
    }

    #[test]
    fn unknown_and_unusable_upstreams_keep_their_state() {
        let mut broken = up(80.0, true);
        broken.usable = false;
        let unknown = Candidate {
            estimate: None,
            ..up(0.0, false)
        };
        let c = [up(5.0, false), up(5.0, false), broken, unknown];
        assert_eq!(sidelined(&c, 0.2), [false, false, true, false]);
        let nothing_known = [unknown, unknown];
        assert_eq!(sidelined(&nothing_known, 0.2), [false, false]);
    }
}
