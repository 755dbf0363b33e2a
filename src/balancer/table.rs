//! The upstream table: the set of upstreams ([`Members`], rebuilt when the set
//! changes) and the weights in force with the selection structures derived
//! from them ([`Table`], rebuilt when weights change). Both are immutable once
//! built and shared through the balancer's `ArcSwap`, so readers never lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Algorithm;
use crate::sticky::{IpHash, UpstreamKey};
use crate::upstream::Upstream;

use super::{p2c, wrr};

/// Selection weights of `dynamic` carry two decimals of the latency factor.
pub const DYNAMIC_SCALE: u32 = 100;

/// One set of upstreams and its lookups. Indexes are positions in `upstreams`
/// and mean nothing outside this set.
#[derive(Debug)]
pub struct Members {
    /// In config order (then order of addition).
    pub upstreams: Vec<Arc<Upstream>>,
    by_name: HashMap<String, usize>,
    by_sticky_key: HashMap<UpstreamKey, usize>,
    /// Client-IP mode's ring over this set (by address and base weight).
    pub ring: Option<IpHash>,
}

impl Members {
    pub fn new(upstreams: Vec<Arc<Upstream>>, ip_ring: bool) -> Self {
        let by_name = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.clone(), i))
            .collect();
        let by_sticky_key = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.sticky_key, i))
            .collect();
        let ring = ip_ring.then(|| {
            let nodes: Vec<(SocketAddr, u32)> = upstreams
                .iter()
                .map(|u| (u.addr, u.base_weight()))
                .collect();
            IpHash::new(&nodes)
        });
        Members {
            upstreams,
            by_name,
            by_sticky_key,
            ring,
        }
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.index_of(name).map(|i| &self.upstreams[i])
    }

    /// The upstream a sticky cookie names.
    pub fn by_sticky_key(&self, key: &UpstreamKey) -> Option<usize> {
        self.by_sticky_key.get(key).copied()
    }
}

/// The weights in force over one set, and the selection structures derived
/// from them.
#[derive(Debug)]
pub struct Table {
    pub members: Arc<Members>,
    /// Integer selection weight by index; the weight in force is `weights[i] / scale`.
    pub weights: Vec<u32>,
    /// Fixed-point scale of `weights` (1, or [`DYNAMIC_SCALE`] for `dynamic`).
    pub scale: u32,
    /// One smooth-WRR cycle over `weights`, as indexes.
    pub(super) cycle: Vec<u32>,
    /// Prefix sums of `weights`, for P2C's weighted draws.
    pub(super) cumulative: Vec<u64>,
    /// Indexes weighed 0 only because they are sidelined for latency: asked
    /// when no other upstream is acceptable.
    pub sidelined: Vec<usize>,
}

impl Table {
    /// The table of `members` with each upstream's current weight, at `scale`.
    pub fn new(members: Arc<Members>, algorithm: Algorithm, scale: u32) -> Self {
        let weights = members
            .upstreams
            .iter()
            .map(|u| selection_weight(algorithm, u, scale))
            .collect();
        Self::with_weights(members, weights, algorithm, scale)
    }

    pub fn with_weights(
        members: Arc<Members>,
        weights: Vec<u32>,
        algorithm: Algorithm,
        scale: u32,
    ) -> Self {
        let (cycle, cumulative) = match algorithm {
            Algorithm::P2c => (Vec::new(), p2c::cumulative(&weights)),
            _ => (wrr::schedule(&weights), Vec::new()),
        };
        let sidelined = members
            .upstreams
            .iter()
            .enumerate()
            .filter(|(i, u)| weights[*i] == 0 && u.base_weight() > 0 && u.is_sidelined())
            .map(|(i, _)| i)
            .collect();
        Table {
            members,
            weights,
            scale,
            cycle,
            cumulative,
            sidelined,
        }
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.members.upstreams
    }

    /// The weight in force for index `i`.
    pub fn effective(&self, i: usize) -> f64 {
        self.weights.get(i).copied().unwrap_or(0) as f64 / self.scale as f64
    }
}

/// The fixed-point scale of selection weights: two decimals of `dynamic`'s
/// latency factor; a tenth for the others while slow start ramps weights;
/// whole weights otherwise.
pub fn scale(algorithm: Algorithm, ramps: bool) -> u32 {
    match algorithm {
        Algorithm::Dynamic => DYNAMIC_SCALE,
        _ if ramps => super::slow_start::RAMP_SCALE,
        _ => 1,
    }
}

/// An upstream's integer selection weight under `algorithm`, at `scale`:
/// its base weight (1 for round robin), times `dynamic`'s latency factor,
/// times its slow-start ramp; never 0 for a weight above 0 unless the
/// latency-aware algorithms sideline it.
pub fn selection_weight(algorithm: Algorithm, u: &Upstream, scale: u32) -> u32 {
    let base = match algorithm {
        Algorithm::RoundRobin => u32::from(u.base_weight() > 0),
        _ => u.base_weight(),
    };
    if base == 0 || (algorithm.is_latency_aware() && u.is_sidelined()) {
        return 0;
    }
    let factor = match algorithm {
        Algorithm::Dynamic => u.factor(),
        _ => 1.0,
    };
    if scale == 1 {
        return base;
    }
    ((base as f64 * factor * u.ramp() * scale as f64).round() as u32).max(1)
}
