//! The process's own lifecycle, as Pingora reports it: when a new process takes
//! over (SIGQUIT) or the server stops (SIGTERM), start draining — answers ask
//! clients to close their connections, so keep-alive clients reconnect, and on an
//! upgrade land on the new process — and record it as an event.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use tokio::sync::broadcast;

use crate::state::SharedState;

/// When the listeners close for good, how long connections already accepted
/// may still deliver a request (answered with `Connection: close`) before the
/// rest are cut: a client that connected just before the close has usually
/// sent its request, not yet read, and would otherwise lose it. Kept below
/// the shortest `grace_period_seconds` worth using (1 s).
pub const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_millis(500);

pub struct LifecycleService {
    state: Arc<SharedState>,
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
}

impl LifecycleService {
    pub fn new(state: Arc<SharedState>, phases: broadcast::Receiver<ExecutionPhase>) -> Self {
        LifecycleService {
            state,
            phases: Mutex::new(Some(phases)),
        }
    }
}

#[async_trait]
impl BackgroundService for LifecycleService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(mut phases) = self.phases.lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        loop {
            let phase = match phases.recv().await {
                Ok(p) => p,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let detail = match phase {
                ExecutionPhase::GracefulUpgradeTransferringFds => {
                    "handing the listening sockets to a new process (SIGQUIT); draining"
                }
                ExecutionPhase::GracefulTerminate => "stopping gracefully (SIGTERM); draining",
                ExecutionPhase::ShutdownStarted => {
                    if !self.state.is_draining() {
                        self.state.start_draining();
                    }
                    continue;
                }
                _ => continue,
            };
            log::info!("{detail}");
            self.state.start_draining();
            self.state.events.push(None, "reload", detail.to_string());
        }
    }
}
