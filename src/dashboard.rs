//! The dashboard sidecar: an Axum server run as a Pingora background service,
//! reading the same shared state as the proxy.

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use log::{error, info};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::net::TcpListener;

use crate::state::{SharedState, Snapshot};

/// Serves the sidecar on `dashboard.listen` until the server shuts down.
pub struct DashboardService {
    state: Arc<SharedState>,
}

impl DashboardService {
    pub fn new(state: Arc<SharedState>) -> Self {
        DashboardService { state }
    }
}

/// The sidecar's routes.
pub fn router(state: Arc<SharedState>) -> Router {
    Router::new()
        .route("/api/state", get(api_state))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn api_state(State(state): State<Arc<SharedState>>) -> Json<Snapshot> {
    Json(state.snapshot())
}

async fn metrics(State(state): State<Arc<SharedState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

#[async_trait]
impl BackgroundService for DashboardService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let addr = self.state.config.dashboard.listen;
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                error!("dashboard: cannot listen on {addr}: {e}");
                return;
            }
        };
        info!("dashboard listening on http://{addr}/");
        let app = router(self.state.clone());
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            error!("dashboard: {e}");
        }
    }
}
