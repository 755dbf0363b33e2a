//! What one pool is balanced by besides its table: its config (algorithm,
//! checks, breaker, retries…), its stickiness (a cookie sealed for this pool
//! alone) and its retry budget.

use std::sync::Arc;
use std::time::Instant;

use crate::concurrency::Queue;
use crate::config::{PoolConfig, StickyMode, DEFAULT_POOL, SECRET_ENV};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::retry_budget::RetryBudget;
use crate::sticky::Sealer;
use crate::upstream::{GateSignal, UpstreamEnv};

/// The stickiness in force.
#[derive(Debug)]
pub enum Sticky {
    Off,
    Cookie(Sealer),
    Ip,
}

/// One pool's policies.
#[derive(Debug)]
pub struct Policy {
    pub config: PoolConfig,
    pub sticky: Sticky,
    /// Retries allowed over the last 10 s (`retry_budget`).
    pub retry_budget: RetryBudget,
}

impl Policy {
    pub fn new(config: PoolConfig) -> Self {
        let sticky = match config.sticky.mode {
            StickyMode::Off => Sticky::Off,
            StickyMode::Ip => Sticky::Ip,
            StickyMode::Cookie => Sticky::Cookie(Sealer::new(&pool_secret(&config))),
        };
        let retry_budget = RetryBudget::new(&config.retry_budget, Instant::now());
        Policy {
            config,
            sticky,
            retry_budget,
        }
    }

    /// What this pool's upstreams are made with.
    pub fn env(&self, metrics: &Metrics, events: &Arc<Events>) -> UpstreamEnv {
        UpstreamEnv {
            pool: self.config.name.as_str().into(),
            breaker: self.config.circuit_breaker.clone(),
            half_life: self.config.dynamic_weights.half_life,
            penalty_cap: self.config.timeouts.read.as_secs_f64(),
            metrics: metrics.clone(),
            events: events.clone(),
            sealer: match &self.sticky {
                Sticky::Cookie(s) => Some(s.clone()),
                _ => None,
            },
            signal: Arc::new(GateSignal::default()),
            slow_start: self.config.slow_start,
            queue: self.config.concurrency.adaptive.then(|| {
                let pool = self.config.name.as_str();
                Arc::new(Queue::new(
                    self.config.concurrency.queue_timeout,
                    metrics.queue_wait_seconds.with_label_values(&[pool]),
                    metrics.overload_refused_total.with_label_values(&[pool]),
                ))
            }),
        }
    }
}

/// The key this pool seals cookies with: the configured secret, bound to the
/// pool's name for any pool but `default` (whose cookies stay as they were),
/// so a cookie of one pool never opens in another.
fn pool_secret(config: &PoolConfig) -> Vec<u8> {
    let mut secret = match &config.sticky.secret {
        Some(s) => s.as_bytes().to_vec(),
        None => {
            log::warn!(
                "sticky cookies of pool {}: no sticky.secret or {SECRET_ENV} set; using a random \
                 secret, so sessions will not survive a reload or be shared with other instances",
                config.name
            );
            rand::random::<[u8; 32]>().to_vec()
        }
    };
    if config.name != DEFAULT_POOL {
        secret.extend_from_slice(b"\0pool\0");
        secret.extend_from_slice(config.name.as_bytes());
    }
    secret
}
