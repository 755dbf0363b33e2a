//! Active health checks on pingora-load-balancing: its `HttpHealthCheck` probes
//! every upstream and its `LoadBalancer` background loop runs the schedule. We
//! configure both from `lb.health_check` and take each flip into the shared state.
//! The set checked is the upstream table's, re-read every second, so upstreams
//! added at run time are checked too. A passed check's response time is the
//! upstream's probe latency (see `balancer::probe`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HealthCheck, HealthObserve, HttpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::*;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::UpstreamProtocol;
use crate::pool::Pool;
use crate::upstream::Upstream;

/// Takes Pingora's health flips into the shared state (metric, event).
struct Observer {
    pool: Arc<Pool>,
}

#[async_trait]
impl HealthObserve for Observer {
    async fn observe(&self, target: &Backend, healthy: bool) {
        let hc = &self.pool.config().health_check;
        let detail = if healthy {
            format!(
                "GET {} passed {} times in a row",
                hc.path, hc.healthy_threshold
            )
        } else {
            format!(
                "GET {} failed {} times in a row",
                hc.path, hc.unhealthy_threshold
            )
        };
        if let Some(addr) = target.addr.as_inet() {
            let table = self.pool.load();
            for u in table.upstreams().iter().filter(|u| u.addr == *addr) {
                u.set_health(healthy, &detail);
            }
        }
    }
}

/// Pingora's HTTP check, one per protocol upstreams are spoken to (plain,
/// HTTP/2, TLS with its SNI and CA), each result also shown to the upstreams
/// at that address that joined at run time and await their first passing
/// checks (Pingora itself takes a new backend as healthy until a check fails).
/// A protocol first seen at run time (an etcd entry with `h2` or `tls`) gets
/// its check then.
struct Checks {
    /// The plain HTTP/1.1 check first.
    by_protocol: std::sync::Mutex<Vec<(UpstreamProtocol, Arc<HttpHealthCheck>)>>,
    observer: Observer,
    pool: Arc<Pool>,
}

impl Checks {
    fn for_target(&self, addr: Option<std::net::SocketAddr>) -> Arc<HttpHealthCheck> {
        let table = self.pool.load();
        let protocol = addr.and_then(|a| {
            table
                .upstreams()
                .iter()
                .find(|u| u.addr == a)
                .map(|u| u.protocol.clone())
        });
        let mut checks = self.by_protocol.lock().unwrap_or_else(|p| p.into_inner());
        let Some(protocol) = protocol else {
            return checks[0].1.clone();
        };
        if let Some((_, check)) = checks.iter().find(|(q, _)| *q == protocol) {
            return check.clone();
        }
        match http_check(&self.pool, &protocol) {
            Ok(check) => {
                let check = Arc::new(check);
                checks.push((protocol, check.clone()));
                check
            }
            Err(e) => {
                log::warn!("health check for a new upstream protocol: {e}; checking over HTTP/1.1");
                checks[0].1.clone()
            }
        }
    }
}

/// The checks, shared by Pingora's schedule and the probes of sidelined
/// upstreams.
struct SharedChecks(Arc<Checks>);

#[async_trait]
impl HealthCheck for SharedChecks {
    async fn check(&self, target: &Backend) -> Result<()> {
        self.0.check(target).await
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        self.0.health_status_change(target, healthy).await
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.0.health_threshold(success)
    }
}

impl Checks {
    /// A passed check's or probe's time, taken `took` seconds up to `now`, is
    /// the upstream's probe latency.
    fn record_probe(&self, u: &Upstream, took: f64, now: Instant) {
        let scale = self.pool.probe_scale();
        u.observe_probe(took, now, scale, self.pool.config().health_check.interval);
    }

    /// Sends `req`, a copy of a client request, to the sidelined upstream
    /// `u` and records how long its answer took (a failure or a 5xx as a
    /// penalty). The answer is read and dropped: it reaches no client.
    async fn mirror(&self, u: &Upstream, req: RequestHeader) {
        let Ok(target) = Backend::new(&u.addr.to_string()) else {
            return;
        };
        let template = self.for_target(Some(u.addr));
        let mut copy = HttpHealthCheck::new("", template.peer_template.is_tls());
        copy.peer_template = template.peer_template.clone();
        copy.req = req;
        copy.validator = Some(Box::new(|resp| {
            let code = resp.status.as_u16();
            if code < 500 {
                Ok(())
            } else {
                Error::e_explain(CustomCode("mirrored answer", code), "a server error")
            }
        }));
        let started = Instant::now();
        let result = copy.check(&target).await;
        let now = Instant::now();
        u.observe_mirrored(
            now.saturating_duration_since(started).as_secs_f64(),
            result.is_err(),
            now,
        );
    }

    /// One probe of a sidelined upstream, outside the health schedule (its
    /// result flips nothing), recorded if it passed.
    async fn probe(&self, u: &Upstream) {
        let Ok(target) = Backend::new(&u.addr.to_string()) else {
            return;
        };
        let started = Instant::now();
        if self.for_target(Some(u.addr)).check(&target).await.is_ok() {
            let now = Instant::now();
            self.record_probe(u, now.saturating_duration_since(started).as_secs_f64(), now);
        }
    }
}

#[async_trait]
impl HealthCheck for Checks {
    async fn check(&self, target: &Backend) -> Result<()> {
        let addr = target.addr.as_inet().copied();
        let started = Instant::now();
        let result = self.for_target(addr).check(target).await;
        let now = Instant::now();
        if let Some(addr) = addr {
            let passes = self.pool.config().health_check.healthy_threshold;
            let took = now.saturating_duration_since(started).as_secs_f64();
            let table = self.pool.load();
            for u in table.upstreams().iter().filter(|u| u.addr == addr) {
                u.first_check(result.is_ok(), passes);
                if result.is_ok() {
                    self.record_probe(u, took, now);
                }
            }
        }
        result
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        self.observer.observe(target, healthy).await
    }

    fn health_threshold(&self, success: bool) -> usize {
        let checks = self.by_protocol.lock().unwrap_or_else(|p| p.into_inner());
        checks[0].1.health_threshold(success)
    }
}

/// The check for upstreams spoken to with `protocol`.
fn http_check(pool: &Pool, protocol: &UpstreamProtocol) -> Result<HttpHealthCheck> {
    let hc_conf = &pool.config().health_check;
    let host = protocol
        .tls
        .as_ref()
        .map(|t| t.sni.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let mut check = HttpHealthCheck::new(&host, protocol.tls.is_some());
    let mut req = RequestHeader::build("GET", hc_conf.path.as_bytes(), None)?;
    req.insert_header("Host", host.as_str())?;
    req.insert_header("User-Agent", "hybrid-lb-health-check")?;
    check.req = req;
    // The same peer as requests get, so a check speaks the upstream's own
    // protocol (h2, TLS with its SNI and CA); the address is the target's.
    check.peer_template = crate::peer::peer(([127, 0, 0, 1], 0).into(), protocol);
    check.peer_template.options.connection_timeout = Some(hc_conf.timeout);
    check.peer_template.options.read_timeout = Some(hc_conf.timeout);
    check.peer_template.options.total_connection_timeout = Some(hc_conf.timeout);
    if let Some(version) = pool.config().send_proxy {
        // An upstream behind PROXY protocol refuses a connection without
        // one: a check says it is the balancer's own (LOCAL).
        crate::send_proxy::SendProxy::apply(
            &mut check.peer_template,
            version,
            None,
            hc_conf.timeout,
        );
    }
    check.consecutive_success = hc_conf.healthy_threshold;
    check.consecutive_failure = hc_conf.unhealthy_threshold;
    // Pingora passes only 200; like HAProxy, any 2xx or 3xx passes.
    check.validator = Some(Box::new(|resp| {
        let code = resp.status.as_u16();
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Error::e_explain(
                CustomCode("health check status", code),
                "during http health check",
            )
        }
    }));
    Ok(check)
}

/// The addresses in the upstream table, as Pingora's discovery.
struct TableDiscovery {
    pool: Arc<Pool>,
}

#[async_trait]
impl ServiceDiscovery for TableDiscovery {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let table = self.pool.load();
        let backends = table
            .upstreams()
            .iter()
            .map(|u| Backend::new(&u.addr.to_string()))
            .collect::<Result<_>>()?;
        Ok((backends, HashMap::new()))
    }
}

/// How often the checked set is re-read from the table.
const SET_REFRESH: Duration = Duration::from_secs(1);

/// The health-check service and the probes of sidelined upstreams of
/// `pool`: add both to the server as background services.
pub fn services(pool: Arc<Pool>) -> Result<(LoadBalancer<RoundRobin>, ProbeService)> {
    let hc_conf = &pool.config().health_check;
    let lb_conf = pool.config();
    let mut protocols = vec![UpstreamProtocol::default()];
    let configured = lb_conf
        .upstreams
        .iter()
        .map(|u| &u.protocol)
        .chain(lb_conf.discovered.iter().map(|g| &g.protocol));
    for p in configured {
        if !protocols.contains(p) {
            protocols.push(p.clone());
        }
    }
    let by_protocol = protocols
        .into_iter()
        .map(|p| http_check(&pool, &p).map(|c| (p, Arc::new(c))))
        .collect::<Result<Vec<_>>>()?;
    let mut backends = Backends::new(Box::new(TableDiscovery { pool: pool.clone() }));
    let checks = Arc::new(Checks {
        by_protocol: std::sync::Mutex::new(by_protocol),
        observer: Observer { pool: pool.clone() },
        pool: pool.clone(),
    });
    backends.set_health_check(Box::new(SharedChecks(checks.clone())));
    let mut lb = LoadBalancer::<RoundRobin>::from_backends(backends);
    lb.health_check_frequency = Some(hc_conf.interval);
    lb.update_frequency = Some(SET_REFRESH);
    lb.parallel_health_check = true;
    Ok((lb, ProbeService { checks }))
}

/// How often a sidelined upstream is probed, besides its health checks: its
/// recovery is seen within a few of these.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Measures sidelined upstreams every [`PROBE_EVERY`] (one request each, so
/// at most one a second per upstream), so their estimates follow them closely
/// while no client request does: with a copy of a recent client request
/// (see `pool::mirror`), else with a health check.
pub struct ProbeService {
    checks: Arc<Checks>,
}

#[async_trait]
impl BackgroundService for ProbeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let pool = &self.checks.pool;
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let table = pool.table();
            let sidelined: Vec<_> = table
                .upstreams()
                .iter()
                .filter(|u| u.is_sidelined())
                .collect();
            pool.mirror.set_wanted(!sidelined.is_empty());
            // A copy of a recent client request measures them on the real
            // path; without one (no traffic), their health check does.
            let copy = pool.mirror.take(Instant::now());
            futures_util::future::join_all(sidelined.into_iter().map(|u| async {
                match &copy {
                    Some(req) => self.checks.mirror(u, req.clone()).await,
                    None => self.checks.probe(u).await,
                }
            }))
            .await;
        }
    }
}
