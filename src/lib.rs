//! hybrid-lb: an HTTP load balancer on Pingora that spreads traffic by weight and
//! measured response time, with a live dashboard sidecar in the same process.
//!
//! [`add_services`] wires the proxy, the dashboard and the demo upstreams into a
//! Pingora [`Server`]; `main.rs` only parses flags and the config.

pub mod access_log;
pub mod acme;
pub mod answer_wait;
pub mod answers;
pub mod attempt;
pub mod balancer;
pub mod breaker;
pub mod client_requests;
pub mod concurrency;
pub mod concurrency_tick;
pub mod config;
pub mod connections;
pub mod dashboard;
pub mod demo;
pub mod demo_controls;
pub mod discovery;
pub mod events;
pub mod ewma;
pub mod forwarding;
pub mod frontend;
pub mod header_cap;
pub mod header_clock;
pub mod health;
pub mod housekeeping;
pub mod htpasswd_watch;
pub mod lifecycle;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod outlier;
pub mod peer;
pub mod pool;
pub mod proxy;
pub mod rate_limit;
pub mod ready;
pub mod retry_budget;
pub mod route;
pub mod send_proxy;
pub mod state;
pub mod sticky;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod via;
pub mod weights;

use std::sync::Arc;

use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::proxy::http_proxy;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::config::Config;
use crate::state::SharedState;

/// Adds every service of hybrid-lb to `server` and returns the shared state.
/// Client socket buffers: no read buffer for plain HTTP, one TLS record's
/// worth (16 KiB) for TLS; Pingora's 1,460-byte write buffer for both.
const PLAIN_BUFFERS: L4BufferSettings = L4BufferSettings {
    read: Some(0),
    write: None,
};
const TLS_BUFFERS: L4BufferSettings = L4BufferSettings {
    read: Some(16 * 1024),
    write: None,
};

/// The most answer bytes buffered for one HTTP/2 stream.
const H2_STREAM_BUFFER: usize = 64 * 1024;

pub fn add_services(server: &mut Server, config: Config) -> pingora::Result<Arc<SharedState>> {
    let mut config = config;
    discovery::resolve_at_start(&mut config);
    let fleet_start = discovery::etcd::read_at_start(&config);
    let state = Arc::new(SharedState::with_fleet(config, fleet_start));
    if let Some(fleet) = &state.fleet {
        fleet.apply_start(&state);
    }
    let mut housekeeping = housekeeping::Housekeeping::new(state.events.clone());

    let limits = &state.config.lb.limits;
    let admission = connections::Admission::new(
        "proxy",
        connections::fit_descriptor_limit(limits.max_connections, limits.max_connections_set),
        limits.max_connections_per_client,
        &state.metrics,
    );
    let mut http = http_proxy(&server.configuration, proxy::Proxy::new(state.clone()));
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2c = state.config.lb.h2c;
    // An idle HTTP/2 connection is closed as an idle HTTP/1 one would be.
    options.h2_idle_timeout = Some(limits.keepalive_timeout);
    http.server_options = Some(options);
    // Pingora's bounded defaults (100 streams, a 64 KiB header list), and at
    // most 64 KiB of answer buffered per stream for a client not reading:
    // with `limits.send_timeout`, what a stalled stream holds is bounded in
    // size and in time.
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_send_buffer_size(H2_STREAM_BUFFER);
    http.h2_options = Some(h2);
    if state
        .routes
        .all_served()
        .iter()
        .any(|s| s.basic_auth.is_some())
    {
        housekeeping.add(
            "htpasswd files",
            htpasswd_watch::HtpasswdWatch::new(state.clone()),
        );
    }
    // The HTTPS listeners are plain sockets to Pingora (so they are handed
    // over on upgrade like the others); the frontend does the handshake.
    let tls = match &state.config.lb.tls {
        Some(conf) => {
            let store = Arc::new(tls::CertStore::load_all(&conf.certificates).map_err(|e| {
                pingora::Error::explain(pingora::ErrorType::InvalidCert, e.to_string())
            })?);
            housekeeping.add(
                "certificate rotation",
                tls::rotation::RotationService::new(store.clone(), state.events.clone()),
            );
            state.set_certificates(store.clone());
            if let Some(acme) = &conf.acme {
                start_acme(acme, &state, &store, &mut housekeeping);
            }
            let server = tls::server_config(store, conf).map_err(|e| {
                pingora::Error::explain(
                    pingora::ErrorType::InvalidCert,
                    format!("lb.tls.client_auth.ca: {e}"),
                )
            })?;
            Some(tls::listener::TlsListener::new(
                server,
                conf.client_auth.is_some(),
                conf.listen.clone(),
                state.metrics.tls_handshakes_total.clone(),
                state.metrics.header_timeouts_total.clone(),
            ))
        }
        None => None,
    };
    let mut proxy = Service::new(
        "hybrid-lb proxy".to_string(),
        frontend::Frontend::new(http, admission, tls, &state),
    );
    // Pingora puts a zero-filled 64 KiB read buffer in front of every client
    // socket: 64 MB of touched memory at 1,000 connections. Plain HTTP reads
    // straight into the session's own header and body buffers instead; TLS
    // keeps one record's worth, since rustls reads a record in small pieces.
    for addr in &state.config.lb.listen {
        proxy.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(PLAIN_BUFFERS));
    }
    for addr in state.config.lb.tls.iter().flat_map(|t| &t.listen) {
        proxy.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(TLS_BUFFERS));
    }
    server.add_service(proxy);

    // Each pool runs its own checks, weights tick, ejection and publisher.
    for pool in &state.pools {
        let of = |what: &str| format!("{what} of pool {}", pool.name());
        let (checks, probes) = health::services(pool.clone())?;
        housekeeping.add(&of("health checks"), checks);
        housekeeping.add(&of("probe timing"), probes);
        housekeeping.add(&of("weights"), weights::WeightsService::new(pool.clone()));
        housekeeping.add(&of("ejection"), outlier::OutlierService::new(pool.clone()));
        if pool.queue.is_some() {
            housekeeping.add(
                &of("concurrency limits"),
                concurrency_tick::ConcurrencyService::new(pool.clone()),
            );
        }
        housekeeping.add(
            &of("publisher"),
            pool::publisher::Publisher::new(pool.clone()),
        );
    }
    // The access log's writer does blocking file writes: a thread of its own,
    // so a stalled disk never holds up health checks or the weights tick.
    if let Some(log) = &state.access_log {
        server.add_service(background_service(
            "access log",
            access_log::AccessLogService::new(log.clone()),
        ));
    }

    housekeeping.add("discovery", discovery::DiscoveryService::new(state.clone()));
    housekeeping.add("etcd", discovery::etcd::EtcdService::new(state.clone()));
    // The dashboard is a Pingora service so its socket is handed over on upgrade.
    let hub = Arc::new(dashboard::Hub::new());
    let mut sidecar = Service::new(
        "dashboard".to_string(),
        dashboard::DashboardApp::new(state.clone(), hub.clone()),
    );
    sidecar.threads = Some(1);
    sidecar.add_tcp(&state.config.dashboard.listen.to_string());
    server.add_service(sidecar);
    housekeeping.add(
        "dashboard ticker",
        dashboard::TickerService::new(state.clone(), hub),
    );
    housekeeping.add("memory", memory::MemoryService);
    housekeeping.add("readiness", ready::ReadyService::new(state.clone()));
    housekeeping.add(
        "lifecycle",
        lifecycle::LifecycleService::new(state.clone(), server.watch_execution_phase()),
    );
    server.add_service(background_service("housekeeping", housekeeping));
    // The demo's upstreams serve traffic: a thread of their own.
    if let Some(demo) = &state.config.demo {
        server.add_service(background_service(
            "demo upstreams",
            demo::DemoService::new(demo.clone(), state.config.lb.listen[0], state.clone()),
        ));
    }
    Ok(state)
}

/// ACME's store, challenges and loop, with `lb.tls.acme`.
fn start_acme(
    conf: &acme::AcmeConfig,
    state: &Arc<SharedState>,
    certs: &Arc<tls::CertStore>,
    housekeeping: &mut housekeeping::Housekeeping,
) {
    let store = Arc::new(match (&conf.storage, &state.config.lb.etcd) {
        (acme::Storage::Dir(dir), _) => acme::store::Store::dir(dir),
        (acme::Storage::Etcd, Some(etcd)) => acme::store::Store::etcd(etcd),
        (acme::Storage::Etcd, None) => unreachable!("checked: etcd storage needs lb.etcd"),
    });
    let running = Arc::new(acme::service::Acme {
        challenges: Arc::new(acme::challenges::Challenges::new(
            certs.clone(),
            store.clone(),
        )),
        status: Default::default(),
    });
    state.set_acme(running.clone());
    housekeeping.add(
        "acme",
        acme::service::AcmeService::new(
            conf.clone(),
            store,
            running,
            certs.clone(),
            state.events.clone(),
            state.metrics.acme_orders_total.clone(),
        ),
    );
}
