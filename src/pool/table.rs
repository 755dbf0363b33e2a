//! A pool's upstream table: the set of upstreams ([`Members`], rebuilt when
//! the set changes) and, published over it, every upstream's [`Gate`], panic
//! mode and the weights of what may be picked, with the selection structures
//! derived from them ([`Table`], rebuilt whenever a gate or a weight changes).
//! Both are immutable once built and shared through the pool's `ArcSwap`, so
//! readers never lock, and a pick reads one published answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::balancer::standby::{standby, Member};
use crate::balancer::{p2c, wrr};
use crate::config::Algorithm;
use crate::sticky::{IpHash, UpstreamKey};
use crate::upstream::{Gate, Upstream};

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

/// What is published over one set: each upstream's gate, panic mode, and
/// the weights of what may be picked, with the selection structures derived
/// from them.
#[derive(Debug)]
pub struct Table {
    pub members: Arc<Members>,
    /// Each upstream's gate when the table was published, by index.
    pub gates: Vec<Gate>,
    /// Panic mode: breakers and ejections would leave fewer than half of the
    /// healthy upstreams eligible, so every healthy one may be picked.
    pub panic: bool,
    /// When a gate changes by itself next (a breaker comes due, an ejection
    /// ends): the table is republished then.
    pub next_change: Option<Instant>,
    /// Integer selection weight by index, 0 for what may not be picked; the
    /// weight in force is `weights[i] / scale`.
    pub weights: Vec<u32>,
    /// Fixed-point scale of `weights` (1, or [`DYNAMIC_SCALE`] for `dynamic`).
    pub scale: u32,
    /// One smooth-WRR cycle over `weights`, as indexes.
    pub cycle: Vec<u32>,
    /// Prefix sums of `weights`, for P2C's weighted draws.
    pub cumulative: Vec<u64>,
    /// Indexes that may be picked but are weighed 0 only because they are
    /// sidelined for latency: asked when no other upstream is acceptable.
    pub sidelined: Vec<usize>,
}

impl Table {
    /// Publishes `members` at `now`: settles SRV standby from the other
    /// gates, reads every upstream's gate, decides panic mode, and weighs
    /// what may be picked.
    pub fn publish(members: Arc<Members>, algorithm: Algorithm, scale: u32, now: Instant) -> Self {
        settle_standby(&members.upstreams, now);
        let gates: Vec<Gate> = members.upstreams.iter().map(|u| u.gate(now)).collect();
        let healthy = gates.iter().filter(|g| g.is_healthy()).count();
        let eligible = gates.iter().filter(|g| g.is_eligible()).count();
        let panic = super::panic::in_panic(healthy, eligible);
        let weights: Vec<u32> = members
            .upstreams
            .iter()
            .zip(&gates)
            .map(|(u, g)| {
                if pickable(*g, panic) {
                    selection_weight(algorithm, u, scale)
                } else {
                    0
                }
            })
            .collect();
        let next_change = members
            .upstreams
            .iter()
            .filter_map(|u| u.next_gate_change(now))
            .min();
        let (cycle, cumulative) = match algorithm {
            Algorithm::P2c => (Vec::new(), p2c::cumulative(&weights)),
            _ => (wrr::schedule(&weights), Vec::new()),
        };
        let sidelined = members
            .upstreams
            .iter()
            .enumerate()
            .filter(|(i, u)| {
                weights[*i] == 0
                    && pickable(gates[*i], panic)
                    && u.base_weight() > 0
                    && u.is_sidelined()
            })
            .map(|(i, _)| i)
            .collect();
        Table {
            members,
            gates,
            panic,
            next_change,
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

    /// Whether index `i` may be picked now.
    pub fn pickable(&self, i: usize) -> bool {
        self.gates.get(i).is_some_and(|g| pickable(*g, self.panic))
    }

    /// Whether it publishes the same as `other` (so need not replace it).
    pub fn same_as(&self, other: &Table) -> bool {
        Arc::ptr_eq(&self.members, &other.members)
            && self.weights == other.weights
            && self.gates == other.gates
            && self.panic == other.panic
            && self.next_change == other.next_change
    }

    /// Healthy upstreams, and of those, eligible ones.
    pub fn counts(&self) -> (usize, usize) {
        let healthy = self.gates.iter().filter(|g| g.is_healthy()).count();
        let eligible = self.gates.iter().filter(|g| g.is_eligible()).count();
        (healthy, eligible)
    }
}

/// Whether an upstream at `gate` may be picked: eligible, or in panic mode
/// healthy and in rotation.
pub fn pickable(gate: Gate, panic: bool) -> bool {
    if panic {
        gate.is_healthy()
    } else {
        gate.is_eligible()
    }
}

/// Holds back SRV targets of a priority above their group's preferred one.
fn settle_standby(upstreams: &[Arc<Upstream>], now: Instant) {
    if upstreams.iter().all(|u| u.group.is_none()) {
        return;
    }
    let gates: Vec<Gate> = upstreams
        .iter()
        .map(|u| u.gate_before_standby(now))
        .collect();
    let members: Vec<Member> = upstreams
        .iter()
        .zip(&gates)
        .map(|(u, g)| Member {
            group: u.group.as_deref(),
            priority: u.priority(),
            eligible: g.is_eligible(),
            healthy: g.is_healthy(),
        })
        .collect();
    for (u, standby) in upstreams.iter().zip(standby(&members)) {
        u.set_standby(standby);
    }
}

/// The fixed-point scale of selection weights: two decimals of `dynamic`'s
/// latency factor; a tenth for the others while slow start ramps weights;
/// whole weights otherwise.
pub fn scale(algorithm: Algorithm, ramps: bool) -> u32 {
    match algorithm {
        Algorithm::Dynamic => DYNAMIC_SCALE,
        _ if ramps => crate::balancer::slow_start::RAMP_SCALE,
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
