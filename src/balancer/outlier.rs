//! Ejection (`lb.outlier`, Envoy's outlier detection): every `interval`, an
//! upstream that answered at least `min_requests` attempts, of which at least
//! `failure_rate` failed, is taken out for `ejection_time`, doubled on each
//! repeat; the failures need not be consecutive (the breaker handles runs).
//! Never more than `max_ejection_percent` of the upstreams are out at once,
//! the worst first. The judgement is pure; `crate::outlier` applies it.

use std::time::Duration;

use crate::config::OutlierConfig;

/// The longest an ejection lasts, however often it repeats (Envoy's
/// `max_ejection_time` default), unless `ejection_time` itself is longer.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// One upstream over the last interval, as the judgement sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Candidate {
    pub attempts: u64,
    pub failures: u64,
    /// Ejected now.
    pub ejected: bool,
    /// Ejections so far that have not been lived down.
    pub ejections: u32,
}

/// How long the `n`th ejection (counting from 0) lasts.
pub fn ejection_length(conf: &OutlierConfig, n: u32) -> Duration {
    let doubled = conf.ejection_time.saturating_mul(1u32 << n.min(16));
    doubled.min(MAX_EJECTION.max(conf.ejection_time))
}

/// Which upstreams to eject now, and for how long (None: leave it be).
pub fn judge(conf: &OutlierConfig, candidates: &[Candidate]) -> Vec<Option<Duration>> {
    let mut out = vec![None; candidates.len()];
    if conf.max_ejection_percent == 0 {
        return out;
    }
    let allowed = candidates.len() * conf.max_ejection_percent as usize / 100;
    let ejected = candidates.iter().filter(|c| c.ejected).count();
    let rate = |c: &Candidate| c.failures as f64 / c.attempts.max(1) as f64;
    let mut failing: Vec<usize> = (0..candidates.len())
        .filter(|&i| {
            let c = &candidates[i];
            !c.ejected && c.attempts >= conf.min_requests && rate(c) >= conf.failure_rate
        })
        .collect();
    failing.sort_by(|&a, &b| rate(&candidates[b]).total_cmp(&rate(&candidates[a])));
    for i in failing.into_iter().take(allowed.saturating_sub(ejected)) {
        out[i] = Some(ejection_length(conf, candidates[i].ejections));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(max_percent: u32) -> OutlierConfig {
        OutlierConfig {
            failure_rate: 0.3,
            min_requests: 20,
            interval: Duration::from_secs(10),
            ejection_time: Duration::from_secs(30),
            max_ejection_percent: max_percent,
        }
    }

    fn c(attempts: u64, failures: u64) -> Candidate {
        Candidate {
            attempts,
            failures,
            ..Default::default()
        }
    }

    #[test]
    fn a_failure_rate_at_the_threshold_ejects_and_too_few_attempts_do_not() {
        let out = judge(&conf(100), &[c(40, 12), c(40, 11), c(19, 19), c(100, 0)]);
        assert_eq!(out, [Some(Duration::from_secs(30)), None, None, None]);
    }

    #[test]
    fn never_more_than_the_allowed_share_worst_first() {
        // Three upstreams, 50%: one may be out.
        let out = judge(&conf(50), &[c(40, 20), c(40, 30), c(40, 0)]);
        assert_eq!(out, [None, Some(Duration::from_secs(30)), None]);
        // One is out already: no room for another.
        let mut out_now = c(0, 0);
        out_now.ejected = true;
        assert_eq!(
            judge(&conf(50), &[c(40, 40), out_now, c(40, 0)]),
            [None, None, None]
        );
        // 0 turns it off.
        assert_eq!(judge(&conf(0), &[c(40, 40), c(40, 0)]), [None, None]);
    }

    #[test]
    fn each_repeat_doubles_the_ejection_up_to_a_cap() {
        let conf = conf(100);
        assert_eq!(ejection_length(&conf, 0), Duration::from_secs(30));
        assert_eq!(ejection_length(&conf, 1), Duration::from_secs(60));
        assert_eq!(ejection_length(&conf, 3), Duration::from_secs(240));
        assert_eq!(ejection_length(&conf, 4), MAX_EJECTION);
        assert_eq!(ejection_length(&conf, 40), MAX_EJECTION);
        let mut again = c(40, 40);
        again.ejections = 2;
        assert_eq!(judge(&conf, &[again]), [Some(Duration::from_secs(120))]);
    }
}
