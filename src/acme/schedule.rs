//! When to order: a certificate is renewed two thirds into its life (30 days
//! before the end of Let's Encrypt's 90, as certbot and Caddy do), at once
//! when there is none or it lacks a name; after a failure the next attempt
//! waits, doubling from 5 s to at most an hour. Pure: times are passed in.

use std::time::Duration;

/// The first wait after a failed order.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between attempts.
const LONGEST_RETRY: Duration = Duration::from_secs(3600);

/// When a certificate valid from `not_before` to `not_after` (Unix seconds)
/// is renewed.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before).max(0) * 2 / 3
}

/// Whether to order at `now`: no certificate, one that does not `fit`
/// (lacks a wanted name, or was ordered for another set or server), or one
/// due for renewal.
pub fn due(now: i64, cert: Option<(i64, i64)>, fits: bool) -> bool {
    match cert {
        None => true,
        Some(_) if !fits => true,
        Some((from, to)) => now >= renew_at(from, to),
    }
}

/// The wait after `failures` failed orders in a row (at least one).
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    FIRST_RETRY
        .saturating_mul(1u32 << doublings)
        .min(LONGEST_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ninety_day_certificate_renews_thirty_days_before_it_ends() {
        let day = 86_400;
        assert_eq!(renew_at(0, 90 * day), 60 * day);
        assert!(!due(59 * day, Some((0, 90 * day)), true));
        assert!(due(60 * day, Some((0, 90 * day)), true));
        // A short-lived one (an hour) at 40 minutes.
        assert_eq!(renew_at(1000, 1000 + 3600), 1000 + 2400);
    }

    #[test]
    fn none_or_a_name_missing_orders_at_once() {
        assert!(due(0, None, true));
        assert!(due(0, Some((0, 1_000_000)), false));
    }

    #[test]
    fn failures_back_off_doubling_to_an_hour() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(5), Duration::from_secs(80));
        assert_eq!(backoff(12), Duration::from_secs(3600));
        assert_eq!(backoff(1000), Duration::from_secs(3600));
    }
}
