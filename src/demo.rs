//! Demo upstreams: mock backends started in-process from the config's `demo:`
//! section, so the default config runs on its own.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use log::{error, info};
use mock_backend::{Behaviour, MockServer};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::DemoConfig;
use crate::state::SharedState;

/// Runs the demo backends on 127.0.0.1, and the demo's own light traffic,
/// until the server shuts down.
pub struct DemoService {
    config: DemoConfig,
    /// Where the demo traffic goes: the proxy's first listener.
    proxy: SocketAddr,
    /// Where the dashboard's demo controls find the backends.
    state: Arc<SharedState>,
}

impl DemoService {
    pub fn new(config: DemoConfig, proxy: SocketAddr, state: Arc<SharedState>) -> Self {
        let proxy = if proxy.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], proxy.port()))
        } else {
            proxy
        };
        DemoService {
            config,
            proxy,
            state,
        }
    }
}

/// Sends `rps` requests per second to the proxy, over a mix of paths.
async fn traffic(proxy: SocketAddr, rps: f64) {
    const PATHS: [&str; 4] = ["/", "/api/items", "/api/items/42", "/static/app.css"];
    let client = reqwest::Client::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs_f64(1.0 / rps));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for i in 0usize.. {
        tick.tick().await;
        let url = format!("http://{proxy}{}", PATHS[i % PATHS.len()]);
        let client = client.clone();
        tokio::spawn(async move {
            if let Ok(resp) = client.get(url).send().await {
                let _ = resp.bytes().await;
            }
        });
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
                error_status: 500,
                latency_ms: b.latency_ms,
                jitter_ms: b.jitter_ms,
                healthy: b.healthy,
                health_latency: true,
                ..Behaviour::default()
            };
            match MockServer::start_shared(addr, &b.name, behaviour).await {
                Ok(s) => {
                    info!("demo upstream {} listening on {addr}", b.name);
                    servers.push((b.clone(), Arc::new(s)));
                }
                Err(e) => error!("demo upstream {}: cannot listen on {addr}: {e}", b.name),
            }
        }
        self.state.demo.register(servers);
        let load = self
            .config
            .traffic_rps
            .filter(|r| *r > 0.0)
            .map(|rps| tokio::spawn(traffic(self.proxy, rps)));
        let _ = shutdown.changed().await;
        if let Some(l) = load {
            l.abort();
        }
        self.state.demo.clear();
    }
}
