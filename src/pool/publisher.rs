//! Keeps an idle pool's table current: a gate that changes by itself (an
//! open breaker coming due, an ejection running out) is republished at that
//! moment even when no request arrives to notice it, so the dashboard and
//! the metrics never show a stale eligible set. Under traffic the first pick
//! past the deadline has already done it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::Pool;

/// How long to sleep when no gate is due to change by itself.
const IDLE: Duration = Duration::from_secs(3600);

pub struct Publisher {
    pool: Arc<Pool>,
}

impl Publisher {
    pub fn new(pool: Arc<Pool>) -> Self {
        Publisher { pool }
    }
}

#[async_trait]
impl BackgroundService for Publisher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let now = Instant::now();
            let wait = self
                .pool
                .load()
                .next_change
                .map_or(IDLE, |t| t.saturating_duration_since(now));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {
                    self.pool.publish(Instant::now());
                }
                // A new table may bring a nearer deadline.
                _ = self.pool.published().notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
