//! Reads every route's `access.basic_auth` file again when it changes (every
//! two seconds it looks), as certificate rotation does for certificates: a
//! changed file is in force for the next request; a broken one is refused
//! with an event, and the one before stays in force.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::state::SharedState;

const LOOK_EVERY: Duration = Duration::from_secs(2);

pub struct HtpasswdWatch {
    state: Arc<SharedState>,
}

impl HtpasswdWatch {
    pub fn new(state: Arc<SharedState>) -> Self {
        HtpasswdWatch { state }
    }

    fn look(&self) {
        for auth in self
            .state
            .routes
            .all_served()
            .iter()
            .filter_map(|s| s.basic_auth.as_ref())
        {
            let detail = match auth.reread() {
                None => continue,
                Some(Ok(users)) => format!(
                    "route {}: {} read again, {users} users",
                    auth.realm,
                    auth.path().display()
                ),
                Some(Err(e)) => {
                    let d = format!("route {}: {e}; the file before stays in force", auth.realm);
                    log::warn!("{d}");
                    d
                }
            };
            self.state.events.push(None, "basic_auth", detail);
        }
    }
}

#[async_trait]
impl BackgroundService for HtpasswdWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut interval = tokio::time::interval(LOOK_EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    // File reads: off the housekeeping thread.
                    let me = HtpasswdWatch { state: self.state.clone() };
                    let _ = tokio::task::spawn_blocking(move || me.look()).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
