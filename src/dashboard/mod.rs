//! The dashboard sidecar: an Axum app served on a Pingora-managed listener
//! (so its socket is handed over on upgrade, like the proxy's), reading the
//! same upstream table and Prometheus registry as the proxy.
//!
//! `hub` ticks once a second and publishes one snapshot and one history point;
//! `snapshot` builds what `/api/state` shows; `admin` changes the table.

mod admin;
mod demo;
mod derived;
pub mod hub;
pub mod routes;
pub mod snapshot;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use futures_util::Stream;
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use pingora::apps::ServerApp;
use pingora::protocols::Stream as Connection;
use pingora::server::ShutdownWatch;
use tokio_stream::wrappers::WatchStream;

use crate::state::SharedState;
pub use hub::{Hub, TickerService};
use snapshot::Snapshot;

const INDEX_HTML: &str = include_str!("../../dashboard/index.html");
const APP_JS: &str = include_str!("../../dashboard/app.js");
const STYLE_CSS: &str = include_str!("../../dashboard/style.css");
/// Chart.js, from npm (`dashboard/package.json`), embedded at build time.
const CHART_JS: &str = include_str!(concat!(env!("OUT_DIR"), "/chart.umd.min.js"));

#[derive(Clone)]
struct App {
    state: Arc<SharedState>,
    hub: Arc<Hub>,
}

/// Connections the dashboard holds at once (live streams included), and of
/// those, how many one address may hold.
const MAX_CONNECTIONS: usize = 512;
const MAX_CONNECTIONS_PER_CLIENT: usize = 64;
/// Largest request header the dashboard reads.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The sidecar as a Pingora service.
pub struct DashboardApp {
    router: Router,
    admission: crate::connections::Admission,
    /// How long a request header may take, idle keep-alive time included:
    /// `lb.limits.header_timeout`, as on the proxy.
    header_timeout: Duration,
}

impl DashboardApp {
    pub fn new(state: Arc<SharedState>, hub: Arc<Hub>) -> Self {
        let admission = crate::connections::Admission::new(
            "dashboard",
            MAX_CONNECTIONS,
            MAX_CONNECTIONS_PER_CLIENT,
            &state.metrics,
        );
        DashboardApp {
            header_timeout: state.config.lb.limits.header_timeout,
            router: router(App { state, hub }),
            admission,
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
        let place = match self.admission.admit(peer.ip().to_canonical()) {
            Ok(place) => Arc::new(place),
            Err(why) => {
                log::debug!("dashboard connection from {peer} refused: {why:?}");
                return None;
            }
        };
        // Waiting for a request (or streaming events, once the stream's head
        // is sent) the connection may be shed for a newcomer when the
        // dashboard is full; a browser's EventSource reconnects by itself.
        place.waiting();
        let marks = place.clone();
        let app = self
            .router
            .clone()
            .layer(Extension(ConnectInfo(peer)))
            .layer(axum::middleware::from_fn(
                move |req: Request, next: Next| {
                    let marks = marks.clone();
                    async move {
                        marks.busy();
                        let response = next.run(req).await;
                        marks.waiting();
                        response
                    }
                },
            ));
        // hyper's header timer runs from the start of each request, idle
        // keep-alive time included: it bounds both.
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .max_buf_size(MAX_HEADER_BYTES.max(8192))
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
        tokio::pin!(conn);
        let mut shutdown = shutdown.clone();
        if !*shutdown.borrow() {
            tokio::select! {
                _ = conn.as_mut() => return None,
                _ = place.slot.shed() => return None,
                _ = shutdown.changed() => {}
            }
        }
        // A request already on its way (a client that connected just before
        // the listener closed) is still served (with `Connection: close`).
        tokio::select! {
            _ = conn.as_mut() => return None,
            _ = tokio::time::sleep(crate::lifecycle::CLOSE_LINGER) => {}
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
        .route("/api/fleet", get(api_fleet))
        .route("/api/stream", get(api_stream))
        .route("/metrics", get(metrics))
        .route("/api/upstreams", post(admin::add))
        .route("/api/upstreams/{name}", delete(admin::remove))
        .route("/api/upstreams/{name}/drain", post(admin::drain))
        .route("/api/upstreams/{name}/enable", post(admin::enable))
        .route("/api/upstreams/{name}/weight", put(admin::set_weight))
        .route("/api/pools/{pool}/upstreams", post(admin::add))
        .route("/api/pools/{pool}/upstreams/{name}", delete(admin::remove))
        .route(
            "/api/pools/{pool}/upstreams/{name}/drain",
            post(admin::drain),
        )
        .route(
            "/api/pools/{pool}/upstreams/{name}/enable",
            post(admin::enable),
        )
        .route(
            "/api/pools/{pool}/upstreams/{name}/weight",
            put(admin::set_weight),
        )
        .route("/api/routes", get(routes::api_routes))
        .route("/api/explain", get(routes::api_explain))
        .route("/api/demo/{name}/{action}", post(demo::control))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            close_when_draining,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            known_host_only,
        ))
        .with_state(app)
}

/// Refuses requests whose `Host` names a host the dashboard does not know
/// (421): a page on another site that rebinds its DNS name to this address
/// would otherwise read `/api/state` and `/metrics` as same-origin.
async fn known_host_only(State(app): State<App>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if host_allowed(host, &app.state.config.dashboard.hosts) {
        next.run(req).await
    } else {
        (
            axum::http::StatusCode::MISDIRECTED_REQUEST,
            "unknown host: add it to dashboard.hosts\n",
        )
            .into_response()
    }
}

/// IP literals and `localhost` always; names only when configured.
fn host_allowed(host: &str, names: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    let name = name.to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok() || name == "localhost" || names.contains(&name)
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

/// `GET /api/fleet`; 404 without `lb.etcd`.
async fn api_fleet(State(app): State<App>) -> Response {
    match snapshot::fleet(&app.state) {
        Some(f) => Json(f).into_response(),
        None => (
            axum::http::StatusCode::NOT_FOUND,
            "no fleet: lb.etcd is not configured\n",
        )
            .into_response(),
    }
}

async fn api_history(State(app): State<App>) -> Response {
    Json(app.hub.history()).into_response()
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
    // Each tick is two events: the snapshot (tables, events) and the history
    // point the charts add, in the same schema as `/api/history`.
    let stream = WatchStream::new(app.hub.subscribe())
        .filter_map(std::future::ready)
        .flat_map(|p| {
            let event = |name: &'static str, data: &str| {
                Ok(SseEvent::default()
                    .event(name)
                    .retry(Duration::from_secs(1))
                    .data(data))
            };
            futures_util::stream::iter([event("snapshot", &p.snapshot), event("point", &p.point)])
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

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn only_known_hosts_are_answered() {
        let names = vec!["lb.internal".to_string()];
        for ok in [
            "127.0.0.1:5000",
            "10.1.2.3",
            "[::1]:5000",
            "localhost:5000",
            "LB.internal:5000",
        ] {
            assert!(host_allowed(ok, &names), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:5000",
            "",
            "localhost.evil.example",
            "[evil]",
        ] {
            assert!(!host_allowed(bad, &names), "{bad}");
        }
    }
}
