//! A configurable mock HTTP upstream: every path answers JSON naming the server,
//! after a set latency, failing with a set probability; `/health` can be turned
//! unhealthy and everything can be changed live through `/_mock/config`;
//! `/_mock/echo` answers with the request's headers; `/_mock/stats` counts
//! the requests answered, by method.
//!
//! Tests and hybrid-lb's demo start it in-process with [`MockServer::start`];
//! the `mock-backend` binary runs one from the command line.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// How the server behaves; changeable at run time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Behaviour {
    /// Probability in [0, 1] that a request answers `error_status`.
    pub error_rate: f64,
    /// The status of a failed answer (a 5xx).
    #[serde(default = "internal_error")]
    pub error_status: u16,
    /// Delay before every answer.
    pub latency_ms: u64,
    /// Uniform spread around `latency_ms`: the delay is latency ± jitter.
    pub jitter_ms: u64,
    /// Whether `GET /health` answers 200 (else 503).
    pub healthy: bool,
    /// Whether `GET /health` also waits `latency_ms` ± `jitter_ms`: a server
    /// slow as a whole, as an overloaded one is. Off models a server whose
    /// slowness is in its work (a slow database), not in answering probes.
    #[serde(default = "yes")]
    pub health_latency: bool,
    /// What `GET /health` waits besides (independent of `latency_ms`).
    #[serde(default)]
    pub health_latency_ms: u64,
    /// Requests it serves at once at full speed: beyond them it shares its
    /// time among all in flight, so a new request takes `latency_ms` × (in
    /// flight ÷ capacity) and the throughput stays at capacity ÷ latency (a
    /// saturated server: more load only queues). 0: no limit.
    pub capacity: u64,
}

fn yes() -> bool {
    true
}

fn internal_error() -> u16 {
    500
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            error_rate: 0.0,
            error_status: 500,
            latency_ms: 0,
            jitter_ms: 0,
            healthy: true,
            health_latency: true,
            health_latency_ms: 0,
            capacity: 0,
        }
    }
}

/// A partial change, as posted to `/_mock/config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BehaviourPatch {
    pub error_rate: Option<f64>,
    pub error_status: Option<u16>,
    pub latency_ms: Option<u64>,
    pub jitter_ms: Option<u64>,
    pub healthy: Option<bool>,
    pub health_latency: Option<bool>,
    pub health_latency_ms: Option<u64>,
    pub capacity: Option<u64>,
}

impl Behaviour {
    /// Applies `patch`, or says what is wrong with it and changes nothing.
    pub fn apply(&mut self, patch: &BehaviourPatch) -> Result<(), String> {
        if let Some(r) = patch.error_rate {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("error_rate must be between 0 and 1, got {r}"));
            }
        }
        if let Some(code) = patch.error_status {
            if !(500..=599).contains(&code) {
                return Err(format!("error_status must be a 5xx, got {code}"));
            }
        }
        if let Some(r) = patch.error_rate {
            self.error_rate = r;
        }
        if let Some(code) = patch.error_status {
            self.error_status = code;
        }
        if let Some(v) = patch.latency_ms {
            self.latency_ms = v;
        }
        if let Some(v) = patch.jitter_ms {
            self.jitter_ms = v;
        }
        if let Some(v) = patch.healthy {
            self.healthy = v;
        }
        if let Some(v) = patch.health_latency {
            self.health_latency = v;
        }
        if let Some(v) = patch.health_latency_ms {
            self.health_latency_ms = v;
        }
        if let Some(v) = patch.capacity {
            self.capacity = v;
        }
        Ok(())
    }

    /// The wait before a `/health` answer.
    fn health_delay(&self) -> Duration {
        let own = Duration::from_millis(self.health_latency_ms);
        if self.health_latency {
            own + self.delay()
        } else {
            own
        }
    }

    /// The wait before an answer, with `in_flight` requests already being
    /// served (this one not counted).
    fn delay_with(&self, in_flight: u64) -> Duration {
        let base = self.delay();
        match self.capacity {
            0 => base,
            cap if in_flight < cap => base,
            cap => base.mul_f64((in_flight + 1) as f64 / cap as f64),
        }
    }

    fn delay(&self) -> Duration {
        let base = self.latency_ms as i64;
        let j = self.jitter_ms as i64;
        let ms = if j > 0 {
            base + rand::rng().random_range(-j..=j)
        } else {
            base
        };
        Duration::from_millis(ms.max(0) as u64)
    }
}

struct Shared {
    name: String,
    port: u16,
    behaviour: RwLock<Behaviour>,
    /// Requests being answered (not `/health` or `/_mock/*`).
    in_flight: std::sync::atomic::AtomicU64,
    /// Requests answered (not `/health` or `/_mock/*`), by method.
    served: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

type AppState = Arc<Shared>;

/// A running mock server. Dropping it, or [`MockServer::kill`], closes the
/// listener and every open connection at once, like a crashed process.
pub struct MockServer {
    addr: SocketAddr,
    shared: AppState,
    task: JoinHandle<()>,
}

impl MockServer {
    /// Binds `addr` (port 0 for an ephemeral port) and serves in the background
    /// on the current Tokio runtime.
    pub async fn start(
        addr: SocketAddr,
        name: &str,
        behaviour: Behaviour,
    ) -> std::io::Result<MockServer> {
        let listener = TcpListener::bind(addr).await?;
        Self::from_listener(listener, name, behaviour)
    }

    /// Like [`MockServer::start`], but binds with `SO_REUSEPORT`, so that a second
    /// process can bind the same port while this one still runs (as during a
    /// graceful upgrade of a process that embeds mock servers).
    pub async fn start_shared(
        addr: SocketAddr,
        name: &str,
        behaviour: Behaviour,
    ) -> std::io::Result<MockServer> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        #[cfg(unix)]
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        Self::from_listener(socket.listen(1024)?, name, behaviour)
    }

    /// Serves on an already bound listener.
    pub fn from_listener(
        listener: TcpListener,
        name: &str,
        behaviour: Behaviour,
    ) -> std::io::Result<MockServer> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            port: addr.port(),
            behaviour: RwLock::new(behaviour),
            in_flight: Default::default(),
            served: Default::default(),
        });
        let task = tokio::spawn(serve(listener, router(shared.clone())));
        Ok(MockServer { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn behaviour(&self) -> Behaviour {
        read(&self.shared).clone()
    }

    /// Changes the behaviour, as `POST /_mock/config` would.
    pub fn set(&self, patch: &BehaviourPatch) -> Result<(), String> {
        write(&self.shared).apply(patch)
    }

    /// How many requests with `method` it has answered (not `/health` or
    /// `/_mock/*`), as `GET /_mock/stats` shows.
    pub fn served(&self, method: &str) -> u64 {
        served(&self.shared).get(method).copied().unwrap_or(0)
    }

    /// Closes the listener and all connections now.
    pub fn kill(self) {}

    /// Runs until the server fails (it does not stop on its own).
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn read(s: &Shared) -> std::sync::RwLockReadGuard<'_, Behaviour> {
    s.behaviour.read().unwrap_or_else(|p| p.into_inner())
}

fn served(s: &Shared) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, u64>> {
    s.served.lock().unwrap_or_else(|p| p.into_inner())
}

fn write(s: &Shared) -> std::sync::RwLockWriteGuard<'_, Behaviour> {
    s.behaviour.write().unwrap_or_else(|p| p.into_inner())
}

/// Accept loop. Connections live in a JoinSet owned by this task, so aborting the
/// task closes them all.
async fn serve(listener: TcpListener, app: Router) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let svc = TowerToHyperService::new(app.clone());
                conns.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/_mock/config", get(show_config).post(change_config))
        .route("/_mock/echo", get(echo))
        .route("/_mock/stats", get(stats))
        .fallback(answer)
        .with_state(state)
}

async fn health(State(s): State<AppState>) -> Response {
    let (healthy, delay) = {
        let b = read(&s);
        (b.healthy, b.health_delay())
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "server": s.name,
        "status": if healthy { "ok" } else { "unhealthy" },
    });
    (status, [("x-backend", s.name.clone())], Json(body)).into_response()
}

/// The request's headers as JSON (the last value of each name), to show
/// what a proxy sent.
async fn echo(State(s): State<AppState>, req: Request) -> Response {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (k.as_str().to_string(), serde_json::Value::String(v))
        })
        .collect();
    let body = serde_json::json!({ "server": s.name, "headers": headers });
    ([("x-backend", s.name.clone())], Json(body)).into_response()
}

/// Requests answered so far, by method.
async fn stats(State(s): State<AppState>) -> Response {
    let served = served(&s).clone();
    Json(serde_json::json!({ "served": served })).into_response()
}

async fn show_config(State(s): State<AppState>) -> Json<Behaviour> {
    Json(read(&s).clone())
}

async fn change_config(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let patch: BehaviourPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad config: {e}\n")).into_response(),
    };
    let mut b = write(&s);
    match b.apply(&patch) {
        Ok(()) => Json(b.clone()).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("bad config: {e}\n")).into_response(),
    }
}

/// Counts a request in flight for as long as it lives.
struct InFlight<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn answer(State(s): State<AppState>, req: Request) -> Response {
    let before = s
        .in_flight
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _counted = InFlight(&s.in_flight);
    let (delay, fail, error_status) = {
        let b = read(&s);
        (
            b.delay_with(before),
            rand::rng().random_bool(b.error_rate),
            b.error_status,
        )
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    *served(&s).entry(req.method().to_string()).or_default() += 1;
    let status = if fail {
        StatusCode::from_u16(error_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    } else {
        StatusCode::OK
    };
    let body = serde_json::json!({
        "server": s.name,
        "port": s.port,
        "path": req.uri().path(),
    });
    (status, [("x-backend", s.name.clone())], Json(body)).into_response()
}
