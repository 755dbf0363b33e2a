//! The concurrency limits' tick (`concurrency.adaptive`): every window, each
//! upstream of a pool ends its window of answers and takes the limit it
//! teaches; when a limit rises, the pool's waiting requests look again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::pool::Pool;

/// One window: long enough for a few answers at modest load, short enough
/// to follow a burst within a second.
pub const WINDOW: Duration = Duration::from_millis(100);

/// One tick at `now`.
pub fn tick(pool: &Pool, now: Instant) {
    let Some(queue) = &pool.queue else {
        return;
    };
    let table = pool.load();
    let mut rose = false;
    for u in table.upstreams() {
        rose |= u.tick_limit(now);
    }
    if rose {
        queue.grew();
    }
}

pub struct ConcurrencyService {
    pool: Arc<Pool>,
}

impl ConcurrencyService {
    pub fn new(pool: Arc<Pool>) -> Self {
        ConcurrencyService { pool }
    }
}

#[async_trait]
impl BackgroundService for ConcurrencyService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if self.pool.queue.is_none() {
            return;
        }
        let mut interval = tokio::time::interval(WINDOW);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => tick(&self.pool, Instant::now()),
                _ = shutdown.changed() => return,
            }
        }
    }
}
