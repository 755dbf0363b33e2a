//! The weights tick: a Pingora background service that recomputes effective
//! weights from latency every `lb.dynamic_weights.interval` and publishes them
//! through the balancer's `ArcSwap` table.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::state::SharedState;

pub struct WeightsService {
    state: Arc<SharedState>,
}

impl WeightsService {
    pub fn new(state: Arc<SharedState>) -> Self {
        WeightsService { state }
    }
}

#[async_trait]
impl BackgroundService for WeightsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.state.config.lb.dynamic_weights.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.state.refresh_weights(Instant::now());
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
