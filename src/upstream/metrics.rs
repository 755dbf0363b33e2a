//! An upstream's counters for the dashboard and its Prometheus series,
//! resolved once so the request path never formats a label.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{Gauge, Histogram, IntCounter, IntGauge};

use crate::metrics::Metrics;

use super::Upstream;

/// Why a failed attempt was retried on another upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    Connect = 0,
    Reset = 1,
    Status = 2,
}

impl RetryReason {
    pub const ALL: [RetryReason; 3] = [
        RetryReason::Connect,
        RetryReason::Reset,
        RetryReason::Status,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Connect => "connect",
            RetryReason::Reset => "reset",
            RetryReason::Status => "status",
        }
    }
}

/// Per-upstream counters for the dashboard's rates.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// Responses received (any status).
    pub requests_total: AtomicU64,
    /// Attempts that failed: a status in `failure_status`, no answer, or a
    /// break after connecting.
    pub errors_total: AtomicU64,
    /// Failed attempts on this upstream that were retried elsewhere.
    pub retries_total: AtomicU64,
    /// Attempts that got no answer at all (also in `errors_total`).
    pub unanswered_total: AtomicU64,
    /// Answers with a 5xx status, whether or not the breaker counts them.
    pub server_errors_total: AtomicU64,
    /// Copies of client requests sent to it while sidelined.
    pub mirrored_total: AtomicU64,
}

/// This upstream's metric series.
#[derive(Debug)]
pub(super) struct Handles {
    pub inflight: IntGauge,
    pub up: IntGauge,
    pub ejected: IntGauge,
    pub sidelined: IntGauge,
    pub probe: Gauge,
    pub breaker: IntGauge,
    pub base_weight: Gauge,
    pub effective_weight: Gauge,
    pub latency: Gauge,
    duration: Histogram,
    /// `hlb_retries_total` by [`RetryReason`].
    retries: [IntCounter; 3],
    /// `hlb_requests_total{code}` by status, grown as new codes are seen (rarely).
    pub by_code: crate::metrics::ByCode,
    /// `hlb_requests_total{code="error"}`: attempts without an answer.
    unanswered: IntCounter,
    /// `hlb_mirrored_total`.
    pub mirrored: IntCounter,
    /// Its pool's name, the first label of every series.
    pool: String,
}

impl Handles {
    /// Resolves `name`'s series. The gauges a predecessor of the same name
    /// may still share are taken as they are: its requests in flight are
    /// still in flight, and count out as they end.
    pub fn new(m: &Metrics, pool: &str, name: &str, weight: u32) -> Self {
        let handles = Handles {
            pool: pool.into(),
            inflight: m.upstream_inflight.with_label_values(&[pool, name]),
            up: m.upstream_up.with_label_values(&[pool, name]),
            ejected: m.upstream_ejected.with_label_values(&[pool, name]),
            sidelined: m.upstream_sidelined.with_label_values(&[pool, name]),
            probe: m.upstream_probe_seconds.with_label_values(&[pool, name]),
            breaker: m.upstream_breaker_state.with_label_values(&[pool, name]),
            base_weight: m.upstream_weight.with_label_values(&[pool, name, "base"]),
            effective_weight: m
                .upstream_weight
                .with_label_values(&[pool, name, "effective"]),
            latency: m
                .upstream_latency_ewma_seconds
                .with_label_values(&[pool, name]),
            duration: m.request_duration_seconds.with_label_values(&[pool, name]),
            retries: RetryReason::ALL
                .map(|r| m.retries_total.with_label_values(&[pool, name, r.as_str()])),
            by_code: crate::metrics::ByCode::new(&m.requests_total, &[pool, name]),
            unanswered: m.requests_total.with_label_values(&[pool, name, "error"]),
            mirrored: m.mirrored_total.with_label_values(&[pool, name]),
        };
        handles.up.set(1);
        handles.breaker.set(0);
        handles.ejected.set(0);
        handles.sidelined.set(0);
        handles.base_weight.set(weight as f64);
        handles.effective_weight.set(weight as f64);
        handles
    }
}

impl Upstream {
    /// Removes this upstream's series from the registry (it left the table and
    /// no upstream of the same name replaced it).
    pub fn retire_metrics(&self, m: &Metrics) {
        let (pool, name) = (self.metrics.pool.as_str(), self.name.as_str());
        let _ = m.upstream_inflight.remove_label_values(&[pool, name]);
        let _ = m.upstream_up.remove_label_values(&[pool, name]);
        let _ = m.upstream_ejected.remove_label_values(&[pool, name]);
        let _ = m.upstream_sidelined.remove_label_values(&[pool, name]);
        let _ = m.upstream_probe_seconds.remove_label_values(&[pool, name]);
        let _ = m.upstream_breaker_state.remove_label_values(&[pool, name]);
        let _ = m.upstream_weight.remove_label_values(&[pool, name, "base"]);
        let _ = m
            .upstream_weight
            .remove_label_values(&[pool, name, "effective"]);
        let _ = m
            .upstream_latency_ewma_seconds
            .remove_label_values(&[pool, name]);
        let _ = m
            .request_duration_seconds
            .remove_label_values(&[pool, name]);
        for r in RetryReason::ALL {
            let _ = m
                .retries_total
                .remove_label_values(&[pool, name, r.as_str()]);
        }
        let _ = m.requests_total.remove_label_values(&[pool, name, "error"]);
        let _ = m.mirrored_total.remove_label_values(&[pool, name]);
        let _ = m
            .upstream_concurrency_limit
            .remove_label_values(&[pool, name]);
        self.metrics.by_code.retire();
    }

    /// Counts an answered attempt by status.
    pub fn count_response(&self, status: u16, failed: bool) {
        self.stats.requests_total.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.stats.errors_total.fetch_add(1, Ordering::Relaxed);
        }
        if status >= 500 {
            self.stats
                .server_errors_total
                .fetch_add(1, Ordering::Relaxed);
        }
        self.count_code(status);
    }

    /// Counts an attempt that got no answer (refused, timed out, broken).
    pub fn count_unanswered(&self) {
        self.stats.errors_total.fetch_add(1, Ordering::Relaxed);
        self.stats.unanswered_total.fetch_add(1, Ordering::Relaxed);
        self.metrics.unanswered.inc();
    }

    /// Counts an attempt whose answer broke off after its header.
    pub fn count_broken_body(&self) {
        self.stats.errors_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed attempt that was retried on another upstream.
    pub fn count_retry(&self, reason: RetryReason) {
        self.stats.retries_total.fetch_add(1, Ordering::Relaxed);
        self.metrics.retries[reason as usize].inc();
    }

    /// Observes a whole response's duration.
    pub fn observe_duration(&self, seconds: f64) {
        self.metrics.duration.observe(seconds);
    }

    /// The duration histogram's cumulative buckets, for the dashboard.
    pub fn duration_buckets(&self) -> Vec<(f64, u64)> {
        crate::metrics::buckets(&self.metrics.duration)
    }

    /// Increments `hlb_requests_total{code=status}`: a lock-free lookup of the
    /// resolved series; a code not seen before is resolved once.
    fn count_code(&self, status: u16) {
        self.metrics.by_code.inc(status);
    }
}
