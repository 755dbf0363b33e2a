//! The dashboard's ticker: once a second it samples every upstream's and
//! every route's counters, derives rates and percentiles over the last few
//! seconds, builds one snapshot and one history point, serializes each once
//! and publishes them to every stream viewer. Upstreams are keyed by name
//! (unique across pools), so upstreams that come and go keep their history.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use log::error;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use tokio::sync::watch;

use super::snapshot::{self, Derived, Snapshot};
use crate::state::SharedState;
use crate::upstream::Upstream;

/// Seconds of history kept at one point per second.
pub const HISTORY_SECONDS: usize = 300;
/// Window over which rates and percentiles are computed.
const RATE_WINDOW: usize = 5;

/// One point of the charts' history: the page draws these, from
/// `/api/history` first and then from the stream, so there is one schema.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryPoint {
    pub time: f64,
    pub upstreams: Vec<HistoryUpstream>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryUpstream {
    pub name: String,
    pub ewma: Option<f64>,
    pub p95: Option<f64>,
    pub base_weight: u32,
    pub effective_weight: f64,
    pub inflight: i64,
    /// Requests in flight on average over the window: rate × mean latency
    /// (Little's law), a steady line where the sample is 0 or 1.
    pub inflight_avg: f64,
    pub rps: f64,
    pub error_rate: f64,
    pub server_error_rate: f64,
}

impl HistoryPoint {
    fn of(s: &Snapshot) -> Self {
        HistoryPoint {
            time: s.time,
            upstreams: s
                .pools
                .iter()
                .flat_map(|p| p.upstreams.iter())
                .map(|u| HistoryUpstream {
                    name: u.name.clone(),
                    ewma: u.latency_ms.ewma,
                    p95: u.latency_ms.p95,
                    base_weight: u.base_weight,
                    effective_weight: u.effective_weight,
                    inflight: u.inflight,
                    inflight_avg: (u.rps * u.latency_ms.ewma.unwrap_or(0.0) / 1e3 * 100.0).round()
                        / 100.0,
                    rps: u.rps,
                    error_rate: u.error_rate,
                    server_error_rate: u.server_error_rate,
                })
                .collect(),
        }
    }
}

/// One tick's output, serialized once for every viewer.
#[derive(Debug, Clone)]
pub struct Published {
    pub snapshot: Arc<str>,
    pub point: Arc<str>,
}

/// What the ticker publishes and the handlers read.
pub struct Hub {
    latest: watch::Sender<Option<Published>>,
    derived: Mutex<HashMap<String, Derived>>,
    /// Each route's, by index.
    routes: Mutex<Vec<Derived>>,
    /// Every answer to a client's.
    clients: Mutex<Derived>,
    history: Mutex<VecDeque<HistoryPoint>>,
}

/// The samples a tick keeps: a window per upstream and per route.
#[derive(Default)]
struct Windows {
    upstreams: HashMap<String, VecDeque<Sample>>,
    routes: Vec<VecDeque<Sample>>,
    /// Every answer to a client.
    clients: VecDeque<Sample>,
}

/// Adds `s` to `w` and derives its rates over the window.
fn push(w: &mut VecDeque<Sample>, s: Sample) -> Derived {
    w.push_back(s);
    if w.len() > RATE_WINDOW + 1 {
        w.pop_front();
    }
    match (w.front(), w.back()) {
        // Nothing new over the window (an idle route, say): nothing to derive.
        (Some(old), Some(new)) if w.len() > 1 && new.requests != old.requests => derive(old, new),
        _ => Derived::default(),
    }
}

/// Counters of one upstream at one tick.
struct Sample {
    at: Instant,
    /// Attempts: responses plus attempts without an answer.
    requests: u64,
    errors: u64,
    /// Answers with a 5xx status.
    server_errors: u64,
    buckets: Arc<[(f64, u64)]>,
}

/// A route's counters now; a route that answered nothing since `last`
/// shares its buckets (a thousand idle routes cost a tick next to nothing).
fn route_sample(r: &crate::route::served::Served, last: Option<&Sample>, at: Instant) -> Sample {
    if let Some(last) = last.filter(|l| l.requests == r.answered()) {
        return Sample {
            at,
            requests: last.requests,
            errors: last.errors,
            server_errors: last.server_errors,
            buckets: last.buckets.clone(),
        };
    }
    let (requests, errors) = r.totals();
    Sample {
        at,
        requests,
        errors,
        server_errors: errors,
        buckets: r.buckets().into(),
    }
}

fn sample(u: &Upstream, at: Instant) -> Sample {
    use std::sync::atomic::Ordering::Relaxed;
    Sample {
        at,
        requests: u.stats.requests_total.load(Relaxed) + u.stats.unanswered_total.load(Relaxed),
        errors: u.stats.errors_total.load(Relaxed),
        server_errors: u.stats.server_errors_total.load(Relaxed),
        buckets: u.duration_buckets().into(),
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
    let server_errors = new.server_errors.saturating_sub(old.server_errors);
    let share = |n: u64| {
        if requests > 0 {
            n as f64 / requests as f64
        } else {
            0.0
        }
    };
    let ms = |v: Option<f64>| v.map(|s| (s * 1e5).round() / 100.0);
    Derived {
        rps: if dt > 0.0 { requests as f64 / dt } else { 0.0 },
        error_rate: share(errors),
        server_error_rate: share(server_errors),
        p50: ms(quantile(&old.buckets, &new.buckets, 0.50)),
        p95: ms(quantile(&old.buckets, &new.buckets, 0.95)),
        p99: ms(quantile(&old.buckets, &new.buckets, 0.99)),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    pub fn new() -> Self {
        Hub {
            latest: watch::channel(None).0,
            derived: Mutex::new(HashMap::new()),
            routes: Mutex::new(Vec::new()),
            clients: Mutex::new(Derived::default()),
            history: Mutex::new(VecDeque::with_capacity(HISTORY_SECONDS)),
        }
    }

    /// A fresh snapshot with the last tick's rates and percentiles.
    pub fn snapshot(&self, state: &SharedState) -> Snapshot {
        let rates = snapshot::Rates {
            upstreams: &lock(&self.derived),
            routes: &lock(&self.routes),
            clients: &lock(&self.clients),
        };
        snapshot::build(state, &rates)
    }

    pub fn history(&self) -> Vec<HistoryPoint> {
        lock(&self.history).iter().cloned().collect()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Published>> {
        self.latest.subscribe()
    }

    /// Runs one tick per second, forever.
    async fn run(self: Arc<Self>, state: Arc<SharedState>) {
        let mut windows = Windows::default();
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.tick(&state, &mut windows, Instant::now());
        }
    }

    fn tick(&self, state: &SharedState, windows: &mut Windows, now: Instant) {
        let tables: Vec<_> = state.pools.iter().map(|p| p.table()).collect();
        let ups = &mut windows.upstreams;
        ups.retain(|name, _| tables.iter().any(|t| t.members.get(name).is_some()));
        let derived: HashMap<String, Derived> = tables
            .iter()
            .flat_map(|t| t.upstreams().iter())
            .map(|u| {
                let w = ups.entry(u.name.clone()).or_default();
                (u.name.clone(), push(w, sample(u, now)))
            })
            .collect();
        let count = state.routes.table.routes().len();
        windows.routes.resize_with(count, VecDeque::new);
        let routes: Vec<Derived> = windows
            .routes
            .iter_mut()
            .enumerate()
            .map(|(i, w)| {
                let s = route_sample(state.routes.served(i), w.back(), now);
                push(w, s)
            })
            .collect();
        let (answers, server_errors) = state.answers();
        let clients = push(
            &mut windows.clients,
            Sample {
                at: now,
                requests: answers,
                errors: server_errors,
                server_errors,
                buckets: Arc::from(Vec::new()),
            },
        );
        let rates = snapshot::Rates {
            upstreams: &derived,
            routes: &routes,
            clients: &clients,
        };
        let snapshot = snapshot::build(state, &rates);
        *lock(&self.derived) = derived;
        *lock(&self.routes) = routes;
        *lock(&self.clients) = clients;
        let point = HistoryPoint::of(&snapshot);
        let published =
            serde_json::to_string(&snapshot).and_then(|s| Ok((s, serde_json::to_string(&point)?)));
        {
            let mut h = lock(&self.history);
            if h.len() == HISTORY_SECONDS {
                h.pop_front();
            }
            h.push_back(point);
        }
        match published {
            Ok((snapshot, point)) => {
                self.latest.send_replace(Some(Published {
                    snapshot: Arc::from(snapshot),
                    point: Arc::from(point),
                }));
            }
            Err(e) => error!("dashboard: snapshot: {e}"),
        }
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs the ticker: a Pingora background service.
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
            _ = self.hub.clone().run(self.state.clone()) => {}
            _ = shutdown.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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

    #[test]
    fn history_follows_upstreams_by_name_across_a_swap() {
        let text = "lb:\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:1\" }\n    - { name: b, addr: \"127.0.0.1:2\" }\n";
        let s = SharedState::new(Config::parse(text).unwrap().0);
        let hub = Hub::new();
        let mut windows = Windows::default();
        let t = Instant::now();
        hub.tick(&s, &mut windows, t);
        s.upstream("b").unwrap().count_response(200, false);
        for _ in 0..10 {
            s.upstream("b").unwrap().count_response(200, false);
        }
        // a leaves; b moves to the front of the table; c arrives.
        let _ = s.edit_sources("test", |d| {
            d.admin.remove("a");
            d.admin.add(crate::config::UpstreamConfig::new(
                "c",
                "127.0.0.1:3".parse().unwrap(),
                1,
            ));
            Ok::<(), ()>(())
        });
        hub.tick(&s, &mut windows, t + Duration::from_secs(1));
        let snap = hub.snapshot(&s);
        let names: Vec<&str> = snap.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(snap.upstreams[0].rps, 11.0, "b's rate survives the swap");
        assert!(!windows.upstreams.contains_key("a"));
        let history = hub.history();
        assert_eq!(history.len(), 2);
        assert_eq!(history[1].upstreams[0].name, "b");
        assert_eq!(history[1].upstreams[0].rps, 11.0);
        assert!(hub.latest.borrow().is_some());
    }
}
