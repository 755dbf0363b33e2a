//! The one state object the proxy, the background tasks and the dashboard share.
//! Counters are atomics and tables are swapped whole, so the request path takes
//! no lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::balancer::Balancer;
use crate::config::Config;

/// Per-upstream counters, written by the proxy's logging phase.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// Responses received from this upstream (any status).
    pub requests_total: AtomicU64,
    /// Responses with a 5xx status, and requests that failed after connecting.
    pub errors_total: AtomicU64,
    /// Connect failures after which the request was retried elsewhere.
    pub retries_total: AtomicU64,
}

/// One configured upstream. Its id is its index in [`SharedState::upstreams`].
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    /// The operator's weight: from the config, changed at run time by the admin API.
    pub base_weight: AtomicU32,
    pub stats: UpstreamStats,
}

/// Everything the parts of one process share.
#[derive(Debug)]
pub struct SharedState {
    pub config: Config,
    /// Fixed for the life of the process, in config order.
    pub upstreams: Vec<Upstream>,
    pub balancer: Balancer,
}

impl SharedState {
    pub fn new(config: Config) -> Self {
        let upstreams: Vec<Upstream> = config
            .lb
            .upstreams
            .iter()
            .map(|u| Upstream {
                name: u.name.clone(),
                addr: u.addr,
                base_weight: AtomicU32::new(u.weight),
                stats: UpstreamStats::default(),
            })
            .collect();
        let weights: Vec<u32> = config.lb.upstreams.iter().map(|u| u.weight).collect();
        let balancer = Balancer::new(config.lb.algorithm, &weights);
        SharedState {
            config,
            upstreams,
            balancer,
        }
    }

    /// The JSON snapshot served at `/api/state`.
    pub fn snapshot(&self) -> Snapshot {
        let table = self.balancer.table();
        Snapshot {
            time: unix_time(),
            algorithm: self.balancer.algorithm().as_str(),
            sticky: self.config.lb.sticky.mode.as_str(),
            upstreams: self
                .upstreams
                .iter()
                .enumerate()
                .map(|(id, u)| UpstreamSnapshot {
                    name: u.name.clone(),
                    addr: u.addr.to_string(),
                    base_weight: u.base_weight.load(Ordering::Relaxed),
                    effective_weight: table.weights.get(id).copied().unwrap_or(0),
                    requests_total: u.stats.requests_total.load(Ordering::Relaxed),
                    errors_total: u.stats.errors_total.load(Ordering::Relaxed),
                    retries_total: u.stats.retries_total.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }
}

/// Seconds since the Unix epoch, with milliseconds.
pub fn unix_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub time: f64,
    pub algorithm: &'static str,
    pub sticky: &'static str,
    pub upstreams: Vec<UpstreamSnapshot>,
}

#[derive(Debug, Serialize)]
pub struct UpstreamSnapshot {
    pub name: String,
    pub addr: String,
    pub base_weight: u32,
    pub effective_weight: u32,
    pub requests_total: u64,
    pub errors_total: u64,
    pub retries_total: u64,
}
