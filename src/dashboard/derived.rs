//! Rates and percentiles over the last few seconds, as the hub works them
//! out once a second for each upstream and each route.

/// One upstream's or route's rates over the last window.
#[derive(Debug, Clone, Default)]
pub struct Derived {
    pub rps: f64,
    /// Failures as the breaker counts them (`failure_status`, no answer).
    pub error_rate: f64,
    /// Answers with a 5xx status, whatever the breaker counts.
    pub server_error_rate: f64,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}
