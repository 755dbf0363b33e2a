//! The dashboard's demo controls: make a demo upstream slow, failing or
//! unhealthy, or normal again, by changing its in-process mock backend (what
//! `POST /_mock/config` would do), so a newcomer can watch the balancer adapt.

use std::sync::{Arc, Mutex};

use mock_backend::{BehaviourPatch, MockServer};
use serde::Serialize;

use crate::config::DemoBackend;

/// What a control does to a demo upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Normal,
    /// Ten times its usual latency, at least 200 ms: sidelined by `dynamic`
    /// and `p2c`.
    Slow,
    /// Half its answers are 503: breakers open, retries and ejection step in.
    Failing,
    /// `/health` answers 503: health checks take it out.
    Unhealthy,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "normal" => Action::Normal,
            "slow" => Action::Slow,
            "failing" => Action::Failing,
            "unhealthy" => Action::Unhealthy,
            _ => return None,
        })
    }

    /// The change to `configured`'s behaviour, from any state.
    pub fn patch(self, configured: &DemoBackend) -> BehaviourPatch {
        let normal = BehaviourPatch {
            error_rate: Some(configured.error_rate),
            error_status: Some(500),
            latency_ms: Some(configured.latency_ms),
            jitter_ms: Some(configured.jitter_ms),
            healthy: Some(configured.healthy),
            health_latency: Some(true),
            ..BehaviourPatch::default()
        };
        match self {
            Action::Normal => normal,
            Action::Slow => BehaviourPatch {
                latency_ms: Some((configured.latency_ms * 10).max(200)),
                ..normal
            },
            Action::Failing => BehaviourPatch {
                error_rate: Some(0.5),
                error_status: Some(503),
                ..normal
            },
            Action::Unhealthy => BehaviourPatch {
                healthy: Some(false),
                ..normal
            },
        }
    }
}

/// A demo upstream's state, for the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct DemoSnapshot {
    pub name: String,
    pub action: Action,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DemoError {
    #[error("no demo upstream named {0}")]
    Unknown(String),
    #[error("unknown demo action {0}: normal, slow, failing or unhealthy")]
    BadAction(String),
}

struct Running {
    configured: DemoBackend,
    server: Arc<MockServer>,
    action: Action,
}

/// The demo backends while they run.
#[derive(Default)]
pub struct DemoControls {
    running: Mutex<Vec<Running>>,
}

impl std::fmt::Debug for DemoControls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoControls").finish_non_exhaustive()
    }
}

impl DemoControls {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the started backends under control.
    pub fn register(&self, servers: Vec<(DemoBackend, Arc<MockServer>)>) {
        *self.lock() = servers
            .into_iter()
            .map(|(configured, server)| Running {
                configured,
                server,
                action: Action::Normal,
            })
            .collect();
    }

    /// Lets the backends go (they stop once their last handle drops).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Applies `action` to the demo upstream `name`.
    pub fn apply(&self, name: &str, action: &str) -> Result<Action, DemoError> {
        let action = Action::parse(action).ok_or_else(|| DemoError::BadAction(action.into()))?;
        let mut running = self.lock();
        let r = running
            .iter_mut()
            .find(|r| r.configured.name == name)
            .ok_or_else(|| DemoError::Unknown(name.into()))?;
        // The patch is built from valid configured values: it cannot be refused.
        let _ = r.server.set(&action.patch(&r.configured));
        r.action = action;
        Ok(action)
    }

    pub fn snapshot(&self) -> Vec<DemoSnapshot> {
        self.lock()
            .iter()
            .map(|r| DemoSnapshot {
                name: r.configured.name.clone(),
                action: r.action,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> DemoBackend {
        DemoBackend {
            name: "s1".into(),
            port: 0,
            error_rate: 0.02,
            latency_ms: 5,
            jitter_ms: 2,
            healthy: true,
        }
    }

    #[test]
    fn each_action_changes_one_thing_and_normal_undoes_it() {
        let b = backend();
        assert_eq!(Action::Slow.patch(&b).latency_ms, Some(200));
        assert_eq!(Action::Slow.patch(&b).error_rate, Some(0.02));
        let failing = Action::Failing.patch(&b);
        assert_eq!(
            (failing.error_rate, failing.error_status),
            (Some(0.5), Some(503))
        );
        assert_eq!(Action::Unhealthy.patch(&b).healthy, Some(false));
        let normal = Action::Normal.patch(&b);
        assert_eq!(
            (normal.latency_ms, normal.error_rate, normal.healthy),
            (Some(5), Some(0.02), Some(true))
        );
        assert_eq!(Action::parse("fast"), None);
    }

    #[tokio::test]
    async fn controls_change_the_running_backend() {
        let server = MockServer::start(([127, 0, 0, 1], 0).into(), "s1", Default::default())
            .await
            .unwrap();
        let server = Arc::new(server);
        let c = DemoControls::default();
        c.register(vec![(backend(), server.clone())]);
        assert_eq!(c.apply("s1", "slow"), Ok(Action::Slow));
        assert_eq!(server.behaviour().latency_ms, 200);
        assert_eq!(c.snapshot()[0].action, Action::Slow);
        assert_eq!(c.apply("s9", "slow"), Err(DemoError::Unknown("s9".into())));
        assert!(matches!(
            c.apply("s1", "fast"),
            Err(DemoError::BadAction(_))
        ));
        c.apply("s1", "normal").unwrap();
        assert_eq!(server.behaviour().latency_ms, 5);
    }
}
