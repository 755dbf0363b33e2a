//! Demo upstreams: mock backends started in-process from the config's `demo:`
//! section, so the default config runs on its own.

use std::net::SocketAddr;

use async_trait::async_trait;
use log::{error, info};
use mock_backend::{Behaviour, MockServer};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::DemoConfig;

/// Runs the demo backends on 127.0.0.1 until the server shuts down.
pub struct DemoService {
    config: DemoConfig,
}

impl DemoService {
    pub fn new(config: DemoConfig) -> Self {
        DemoService { config }
    }
}

#[async_trait]
impl BackgroundService for DemoService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut servers = Vec::new();
        for b in &self.config.backends {
            let addr = SocketAddr::from(([127, 0, 0, 1], b.port));
            let behaviour = Behaviour {
                error_rate: b.error_rate,
                latency_ms: b.latency_ms,
                jitter_ms: b.jitter_ms,
                healthy: b.healthy,
            };
            match MockServer::start(addr, &b.name, behaviour).await {
                Ok(s) => {
                    info!("demo upstream {} listening on {addr}", b.name);
                    servers.push(s);
                }
                Err(e) => error!("demo upstream {}: cannot listen on {addr}: {e}", b.name),
            }
        }
        let _ = shutdown.changed().await;
        drop(servers);
    }
}
