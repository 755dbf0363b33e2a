//! The dashboard sidecar: an Axum server run as a Pingora background service,
//! reading the same shared state and Prometheus registry as the proxy.
//!
//! A ticker computes one snapshot per second (with rates and percentiles over
//! the last few seconds), serializes it once, and hands the same bytes to every
//! `/api/stream` viewer; the last five minutes are kept for `/api/history`, so
//! charts are full when the page opens.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use futures_util::Stream;
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use log::{error, info};
use pingora::apps::ServerApp;
use pingora::protocols::Stream as Connection;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::core::Metric;
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use crate::state::{SharedState, Snapshot, UpstreamSnapshot};

const INDEX_HTML: &str = include_str!("../dashboard/index.html");
const APP_JS: &str = include_str!("../dashboard/app.js");
const STYLE_CSS: &str = include_str!("../dashboard/style.css");
/// Chart.js, from npm (`dashboard/package.json`), embedded at build time.
const CHART_JS: &str = include_str!("../dashboard/node_modules/chart.js/dist/chart.umd.min.js");

/// Seconds of history kept at one point per second.
pub const HISTORY_SECONDS: usize = 300;
/// Window over which rates and percentiles are computed.
const RATE_WINDOW: usize = 5;

/// Rates and percentiles of one upstream over the last window.
#[derive(Debug, Clone, Default)]
struct Derived {
    rps: f64,
    error_rate: f64,
    p50: Option<f64>,
    p95: Option<f64>,
    p99: Option<f64>,
}

/// One point of the charts' history.
#[derive(Debug, Clone, Serialize)]
struct HistoryPoint {
    time: f64,
    upstreams: Vec<HistoryUpstream>,
}

#[derive(Debug, Clone, Serialize)]
struct HistoryUpstream {
    name: String,
    ewma: Option<f64>,
    p95: Option<f64>,
    base_weight: u32,
    effective_weight: f64,
    inflight: i64,
    rps: f64,
    error_rate: f64,
}

/// What the ticker publishes and the handlers read.
pub struct Hub {
    /// The latest snapshot as JSON, shared by every stream viewer.
    latest: watch::Sender<Arc<str>>,
    derived: Mutex<Vec<Derived>>,
    history: Mutex<VecDeque<HistoryPoint>>,
}

#[derive(Clone)]
struct App {
    state: Arc<SharedState>,
    hub: Arc<Hub>,
}

/// Counters of one upstream at one tick.
struct Sample {
    at: Instant,
    /// Attempts: responses plus connect failures.
    requests: u64,
    errors: u64,
    buckets: Vec<(f64, u64)>,
}

fn sample(state: &SharedState, id: usize, at: Instant) -> Sample {
    use std::sync::atomic::Ordering::Relaxed;
    let u = &state.upstreams[id];
    let m = u.duration.metric();
    let buckets = m
        .get_histogram()
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect();
    Sample {
        at,
        requests: u.stats.requests_total.load(Relaxed)
            + u.stats.connect_failures_total.load(Relaxed),
        errors: u.stats.errors_total.load(Relaxed),
        buckets,
    }
}

/// The q-quantile (seconds) of observations between two cumulative bucket sets,
/// interpolated linearly within the bucket, as Prometheus' histogram_quantile.
fn quantile(old: &[(f64, u64)], new: &[(f64, u64)], q: f64) -> Option<f64> {
    let counts: Vec<(f64, u64)> = new
        .iter()
        .zip(old)
        .map(|((bound, n), (_, o))| (*bound, n.saturating_sub(*o)))
        .collect();
    let total = counts.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = 0.0;
    let mut below = 0u64;
    for (bound, cum) in counts {
        if cum as f64 >= rank {
            let in_bucket = (cum - below) as f64;
            let frac = if in_bucket > 0.0 {
                (rank - below as f64) / in_bucket
            } else {
                1.0
            };
            return Some(lower + (bound - lower) * frac.clamp(0.0, 1.0));
        }
        lower = bound;
        below = cum;
    }
    Some(lower)
}

fn derive(old: &Sample, new: &Sample) -> Derived {
    let dt = new.at.saturating_duration_since(old.at).as_secs_f64();
    let requests = new.requests.saturating_sub(old.requests);
    let errors = new.errors.saturating_sub(old.errors);
    let ms = |v: Option<f64>| v.map(|s| (s * 1e5).round() / 100.0);
    Derived {
        rps: if dt > 0.0 { requests as f64 / dt } else { 0.0 },
        error_rate: if requests > 0 {
            errors as f64 / requests as f64
        } else {
            0.0
        },
        p50: ms(quantile(&old.buckets, &new.buckets, 0.50)),
        p95: ms(quantile(&old.buckets, &new.buckets, 0.95)),
        p99: ms(quantile(&old.buckets, &new.buckets, 0.99)),
    }
}

fn fill(snapshot: &mut Snapshot, derived: &[Derived]) {
    for (u, d) in snapshot.upstreams.iter_mut().zip(derived) {
        u.rps = (d.rps * 10.0).round() / 10.0;
        u.error_rate = (d.error_rate * 1e4).round() / 1e4;
        u.latency_ms.p50 = d.p50;
        u.latency_ms.p95 = d.p95;
        u.latency_ms.p99 = d.p99;
    }
}

impl Hub {
    pub fn new() -> Self {
        Hub {
            latest: watch::channel(Arc::from("{}")).0,
            derived: Mutex::new(Vec::new()),
            history: Mutex::new(VecDeque::with_capacity(HISTORY_SECONDS)),
        }
    }

    /// A fresh snapshot with the last tick's rates and percentiles.
    fn snapshot(&self, state: &SharedState) -> Snapshot {
        let mut s = state.snapshot();
        fill(
            &mut s,
            &self.derived.lock().unwrap_or_else(|p| p.into_inner()),
        );
        s
    }

    /// Runs one snapshot per second, forever.
    async fn tick(self: Arc<Self>, state: Arc<SharedState>) {
        let n = state.upstreams.len();
        let mut windows: Vec<VecDeque<Sample>> = (0..n).map(|_| VecDeque::new()).collect();
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let now = Instant::now();
            let derived: Vec<Derived> = windows
                .iter_mut()
                .enumerate()
                .map(|(id, w)| {
                    w.push_back(sample(&state, id, now));
                    if w.len() > RATE_WINDOW + 1 {
                        w.pop_front();
                    }
                    match (w.front(), w.back()) {
                        (Some(old), Some(new)) if w.len() > 1 => derive(old, new),
                        _ => Derived::default(),
                    }
                })
                .collect();
            *self.derived.lock().unwrap_or_else(|p| p.into_inner()) = derived.clone();
            let mut snapshot = state.snapshot();
            fill(&mut snapshot, &derived);
            self.remember(&snapshot);
            match serde_json::to_string(&snapshot) {
                Ok(json) => {
                    self.latest.send_replace(Arc::from(json));
                }
                Err(e) => error!("dashboard: snapshot: {e}"),
            }
        }
    }

    fn remember(&self, s: &Snapshot) {
        let point = HistoryPoint {
            time: s.time,
            upstreams: s
                .upstreams
                .iter()
                .map(|u: &UpstreamSnapshot| HistoryUpstream {
                    name: u.name.clone(),
                    ewma: u.latency_ms.ewma,
                    p95: u.latency_ms.p95,
                    base_weight: u.base_weight,
                    effective_weight: u.effective_weight,
                    inflight: u.inflight,
                    rps: u.rps,
                    error_rate: u.error_rate,
                })
                .collect(),
        };
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if h.len() == HISTORY_SECONDS {
            h.pop_front();
        }
        h.push_back(point);
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

/// Computes the snapshots: a Pingora background service.
pub struct TickerService {
    state: Arc<SharedState>,
    hub: Arc<Hub>,
}

impl TickerService {
    pub fn new(state: Arc<SharedState>, hub: Arc<Hub>) -> Self {
        TickerService { state, hub }
    }
}

#[async_trait]
impl BackgroundService for TickerService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            _ = self.hub.clone().tick(self.state.clone()) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// The sidecar as a Pingora service, so that its listening socket is one Pingora
/// hands to the new process on a graceful upgrade, like the proxy's.
pub struct DashboardApp {
    router: Router,
}

impl DashboardApp {
    pub fn new(state: Arc<SharedState>, hub: Arc<Hub>) -> Self {
        DashboardApp {
            router: router(App { state, hub }),
        }
    }
}

#[async_trait]
impl ServerApp for DashboardApp {
    async fn process_new(
        self: &Arc<Self>,
        io: Connection,
        shutdown: &ShutdownWatch,
    ) -> Option<Connection> {
        let peer = io
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().copied()))
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let app = self.router.clone().layer(Extension(ConnectInfo(peer)));
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
        tokio::pin!(conn);
        let mut shutdown = shutdown.clone();
        if !*shutdown.borrow() {
            tokio::select! {
                _ = conn.as_mut() => return None,
                _ = shutdown.changed() => {}
            }
        }
        // Finish the request in progress, then close.
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
        None
    }
}

fn router(app: App) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/assets/app.js",
            get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/style.css",
            get(|| async { page(STYLE_CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/assets/chart.umd.min.js",
            get(|| async { page(CHART_JS, "text/javascript; charset=utf-8") }),
        )
        .route("/api/state", get(api_state))
        .route("/api/history", get(api_history))
        .route("/api/stream", get(api_stream))
        .route("/metrics", get(metrics))
        .route("/api/upstreams/{name}/drain", post(drain))
        .route("/api/upstreams/{name}/enable", post(enable))
        .route("/api/upstreams/{name}/weight", put(set_weight))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            close_when_draining,
        ))
        .with_state(app)
}

/// While the process hands over to a new one, every answer asks the client to
/// close its connection, so keep-alive clients move to the new process cleanly.
async fn close_when_draining(State(app): State<App>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if app.state.is_draining() {
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    resp
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn api_state(State(app): State<App>) -> Json<Snapshot> {
    Json(app.hub.snapshot(&app.state))
}

async fn api_history(State(app): State<App>) -> Response {
    let h = app.hub.history.lock().unwrap_or_else(|p| p.into_inner());
    Json(h.iter().cloned().collect::<Vec<_>>()).into_response()
}

async fn api_stream(
    State(app): State<App>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    // Streams end when the process starts handing over, so that viewers
    // reconnect (after `retry`) to the process that takes over.
    let mut draining = app.state.draining_watch();
    let ended = async move {
        let _ = draining.wait_for(|d| *d).await;
    };
    let stream = WatchStream::new(app.hub.latest.subscribe())
        .filter(|json| std::future::ready(json.len() > 2))
        .map(|json| {
            Ok(SseEvent::default()
                .event("snapshot")
                .retry(Duration::from_secs(1))
                .data(&*json))
        })
        .take_until(ended);
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.state.metrics.render(),
    )
}

// --- admin API ---------------------------------------------------------------

/// Why an admin call is refused.
#[derive(Debug)]
enum AdminError {
    /// No `dashboard.admin_token` configured: admin is disabled.
    Disabled,
    Unauthorized,
    UnknownUpstream(String),
    BadBody(String),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        match self {
            AdminError::Disabled => (
                StatusCode::FORBIDDEN,
                "admin actions are disabled: set dashboard.admin_token in the config\n".to_string(),
            )
                .into_response(),
            AdminError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a valid admin token is required\n",
            )
                .into_response(),
            AdminError::UnknownUpstream(name) => (
                StatusCode::NOT_FOUND,
                format!("no upstream named `{name}`\n"),
            )
                .into_response(),
            AdminError::BadBody(why) => {
                (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response()
            }
        }
    }
}

/// Checks `Authorization: Bearer <token>` in constant time.
fn authorize(state: &SharedState, headers: &HeaderMap) -> Result<(), AdminError> {
    let token = state
        .config
        .dashboard
        .admin_token
        .as_deref()
        .ok_or(AdminError::Disabled)?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(AdminError::Unauthorized)
    }
}

/// Authorizes and finds the upstream.
fn admin_target(app: &App, headers: &HeaderMap, name: &str) -> Result<usize, AdminError> {
    authorize(&app.state, headers)?;
    app.state
        .upstream_id(name)
        .ok_or_else(|| AdminError::UnknownUpstream(name.to_string()))
}

fn upstream_json(app: &App, id: usize) -> Response {
    let snapshot = app.hub.snapshot(&app.state);
    Json(snapshot.upstreams[id].clone()).into_response()
}

async fn set_drained(
    app: App,
    peer: SocketAddr,
    headers: HeaderMap,
    name: String,
    drained: bool,
) -> Response {
    let id = match admin_target(&app, &headers, &name) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let was = app.state.upstreams[id]
        .drained
        .swap(drained, std::sync::atomic::Ordering::Relaxed);
    let action = if drained { "drained" } else { "enabled" };
    let change = if was == drained { " (no change)" } else { "" };
    info!("admin: upstream {name} {action} by {peer}{change}");
    app.state.push_event(
        Some(&name),
        "admin",
        format!("{action} by {}{change}", peer.ip()),
    );
    upstream_json(&app, id)
}

async fn drain(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    set_drained(app, peer, headers, name, true).await
}

async fn enable(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    set_drained(app, peer, headers, name, false).await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: i64,
}

async fn set_weight(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let id = match admin_target(&app, &headers, &name) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let weight = match serde_json::from_slice::<WeightBody>(&body) {
        Ok(b) if (1..=10_000).contains(&b.weight) => b.weight as u32,
        Ok(_) => {
            return AdminError::BadBody("weight must be between 1 and 10000".into()).into_response()
        }
        Err(e) => {
            return AdminError::BadBody(format!("expected {{\"weight\": N}}: {e}")).into_response()
        }
    };
    let old = app.state.upstreams[id]
        .base_weight
        .load(std::sync::atomic::Ordering::Relaxed);
    app.state.set_base_weight(id, weight);
    info!("admin: upstream {name} weight {old} -> {weight} by {peer}");
    app.state.push_event(
        Some(&name),
        "admin",
        format!("weight {old} → {weight} by {}", peer.ip()),
    );
    upstream_json(&app, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let old = vec![(0.01, 0), (0.02, 0), (0.05, 0), (f64::INFINITY, 0)];
        // 50 in (0, 10ms], 40 in (10, 20ms], 10 in (20, 50ms].
        let new = vec![(0.01, 50), (0.02, 90), (0.05, 100), (f64::INFINITY, 100)];
        assert!((quantile(&old, &new, 0.5).unwrap() - 0.01).abs() < 1e-12);
        assert!((quantile(&old, &new, 0.7).unwrap() - 0.015).abs() < 1e-12);
        assert!((quantile(&old, &new, 0.95).unwrap() - 0.035).abs() < 1e-12);
        assert_eq!(quantile(&old, &old, 0.5), None);
    }
}
