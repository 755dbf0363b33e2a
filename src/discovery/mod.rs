//! Upstreams that follow DNS. Each `dns:` or `srv:` entry is a group; its
//! members (named `{entry}@{address}`) are re-resolved at least every
//! `lb.discovery.refresh`, sooner when the answer's TTL is shorter, and merged
//! into the upstream table. A failed or empty answer never empties a group:
//! the last good set stays, and an event says the answer was refused.

pub mod dns;
pub mod etcd;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{Config, DiscoveredGroup, UpstreamConfig};
use crate::pool::{Desired, Pool};
use crate::state::SharedState;
use dns::Resolver;

/// One address an answer names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub weight: u32,
    pub priority: u16,
}

/// The stable name of a group's member at `addr`.
pub fn member_name(group: &str, addr: SocketAddr) -> String {
    format!("{group}@{addr}")
}

/// A group's members for a good answer: one per address (an address named
/// twice keeps its preferred priority and larger weight).
pub fn members(group: &DiscoveredGroup, targets: &[Target]) -> Vec<UpstreamConfig> {
    let mut by_addr: Vec<Target> = Vec::new();
    for t in targets {
        match by_addr.iter_mut().find(|k| k.addr == t.addr) {
            Some(k) => {
                k.priority = k.priority.min(t.priority);
                k.weight = k.weight.max(t.weight);
            }
            None => by_addr.push(*t),
        }
    }
    by_addr
        .into_iter()
        .map(|t| UpstreamConfig {
            name: member_name(&group.name, t.addr),
            addr: t.addr,
            weight: t.weight.min(10_000),
            group: Some(group.name.clone()),
            priority: t.priority,
            protocol: group.protocol.clone(),
        })
        .collect()
}

/// Takes a good answer's members `next` for `group` into the pool's wanted
/// sets: they become the group's members (a member no longer named leaves,
/// a new one joins). An operator's weight for a member stands until the
/// answer's weight for it changes, and a member the operator removed is
/// back while DNS names it. Returns whether anything changed.
pub fn take_answer(d: &mut Desired, group: &str, next: Vec<UpstreamConfig>) -> bool {
    let before = d.clone();
    for n in &next {
        let last = d.members(group).iter().find(|m| m.name == n.name);
        if last.is_some_and(|m| m.weight != n.weight) {
            d.admin.weights.remove(&n.name);
        }
        d.admin.removed.remove(&n.name);
    }
    d.set_members(group, next);
    *d != before
}

/// When to ask again: at least every `refresh`, sooner when DNS says the
/// answer expires, never more often than `floor`.
pub fn next_refresh(
    now: Instant,
    refresh: Duration,
    valid_until: Option<Instant>,
    floor: Duration,
) -> Instant {
    let by_ttl = valid_until.unwrap_or(now + refresh);
    (now + refresh).min(by_ttl).max(now + floor.min(refresh))
}

/// The shortest wait between two questions about one group.
const FLOOR: Duration = Duration::from_secs(1);

/// How long the first resolution at start may take before serving begins.
const AT_START: Duration = Duration::from_secs(5);

/// Resolves every group once before the table is built, so the first requests
/// find their upstreams; a group that cannot be resolved yet starts empty
/// (with a warning) and the service keeps asking.
pub fn resolve_at_start(config: &mut Config) {
    if config.lb.pools.iter().all(|p| p.discovered.is_empty()) {
        return;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            log::warn!("discovery at start: {e}");
            return;
        }
    };
    let groups: Vec<(usize, DiscoveredGroup)> = config
        .lb
        .pools
        .iter()
        .enumerate()
        .flat_map(|(i, p)| p.discovered.iter().map(move |g| (i, g.clone())))
        .collect();
    let discovery = config.lb.discovery.clone();
    let found = runtime.block_on(async move {
        let resolver = match Resolver::new(&discovery) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("discovery: {e}");
                return Vec::new();
            }
        };
        let mut found = Vec::new();
        for (pool, g) in &groups {
            match tokio::time::timeout(AT_START, resolver.resolve(&g.source, g.weight)).await {
                Ok(Ok(answer)) => {
                    found.extend(members(g, &answer.targets).into_iter().map(|m| (*pool, m)))
                }
                Ok(Err(why)) => log::warn!(
                    "upstream {}: {} {} not resolved at start ({why}); retrying",
                    g.name,
                    g.source.kind(),
                    g.source
                ),
                Err(_) => log::warn!(
                    "upstream {}: {} {} not resolved within {AT_START:?} at start; retrying",
                    g.name,
                    g.source.kind(),
                    g.source
                ),
            }
        }
        found
    });
    for (pool, member) in found {
        config.lb.pools[pool].upstreams.push(member);
    }
}

/// The background service that keeps every group's members current.
pub struct DiscoveryService {
    state: Arc<SharedState>,
}

impl DiscoveryService {
    pub fn new(state: Arc<SharedState>) -> Self {
        DiscoveryService { state }
    }
}

/// What the service remembers of one group between answers.
#[derive(Default)]
struct Known {
    /// The answer is being refused (for one event per outage, not one per try).
    refusing: bool,
    due: Option<Instant>,
}

impl DiscoveryService {
    /// Asks about `group` and applies a good answer; returns when to ask again.
    async fn refresh(
        &self,
        resolver: &Resolver,
        pool: &Pool,
        group: &DiscoveredGroup,
        known: &mut Known,
    ) -> Instant {
        let state = &self.state;
        let kind = group.source.kind();
        let refresh = state.config.lb.discovery.refresh;
        let answer = resolver.resolve(&group.source, group.weight).await;
        let now = Instant::now();
        let (result, valid_until) = match answer {
            Ok(answer) => {
                let next = members(group, &answer.targets);
                let source = format!("{kind} {}", group.source);
                let count = next.len();
                let changed = state
                    .edit_pool(pool, &source, |d| {
                        if take_answer(d, &group.name, next) {
                            Ok(())
                        } else {
                            Err(())
                        }
                    })
                    .is_ok();
                if known.refusing {
                    known.refusing = false;
                    state.events.push(
                        Some(&group.name),
                        "discovery",
                        format!("{source}: answers again ({count} targets)"),
                    );
                }
                let result = if changed { "changed" } else { "unchanged" };
                (result, Some(answer.valid_until))
            }
            Err(why) => {
                let held = pool.desired().members(&group.name).len();
                if !known.refusing {
                    known.refusing = true;
                    log::warn!(
                        "upstream {}: {kind} {} answer refused ({why}); keeping its {held} known upstreams",
                        group.name,
                        group.source
                    );
                    state.events.push(
                        Some(&group.name),
                        "discovery",
                        format!(
                            "{kind} {}: answer refused ({why}); keeping its {held} known upstreams",
                            group.source
                        ),
                    );
                }
                ("refused", None)
            }
        };
        state
            .metrics
            .discovery_updates_total
            .with_label_values(&[kind, result])
            .inc();
        next_refresh(now, refresh, valid_until, FLOOR)
    }
}

#[async_trait]
impl BackgroundService for DiscoveryService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let groups: Vec<(Arc<Pool>, &DiscoveredGroup)> = self
            .state
            .pools
            .iter()
            .flat_map(|p| p.config().discovered.iter().map(move |g| (p.clone(), g)))
            .collect();
        if groups.is_empty() {
            // Nothing to follow; stay until shutdown rather than log an exit.
            let _ = shutdown.changed().await;
            return;
        }
        let resolver = match Resolver::new(&self.state.config.lb.discovery) {
            Ok(r) => r,
            Err(e) => {
                log::error!("discovery is off: {e}");
                self.state
                    .events
                    .push(None, "discovery", format!("off: {e}"));
                return;
            }
        };
        // The members found at start count as the last good answer.
        let mut known: Vec<Known> = groups.iter().map(|_| Known::default()).collect();
        loop {
            let now = Instant::now();
            let mut wake = now + self.state.config.lb.discovery.refresh;
            for ((pool, g), k) in groups.iter().zip(known.iter_mut()) {
                if k.due.is_none_or(|due| due <= now) {
                    k.due = Some(self.refresh(&resolver, pool, g, k).await);
                }
                wake = wake.min(k.due.unwrap_or(wake));
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DiscoverySource;

    fn group() -> DiscoveredGroup {
        DiscoveredGroup {
            name: "api".into(),
            source: DiscoverySource::Dns {
                host: "api.internal".into(),
                port: 80,
            },
            weight: 2,
            protocol: Default::default(),
        }
    }

    fn target(last: u8, weight: u32, priority: u16) -> Target {
        Target {
            addr: SocketAddr::from(([10, 0, 0, last], 80)),
            weight,
            priority,
        }
    }

    #[test]
    fn members_are_named_by_entry_and_address_once_each() {
        let m = members(
            &group(),
            &[target(1, 2, 10), target(2, 2, 10), target(1, 5, 5)],
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name, "api@10.0.0.1:80");
        assert_eq!((m[0].weight, m[0].priority), (5, 5));
        assert_eq!(m[1].group.as_deref(), Some("api"));
    }

    #[test]
    fn an_answer_replaces_the_groups_members_and_keeps_an_operators_weight_until_dns_changes_it() {
        let fixed = UpstreamConfig::new("s1", "127.0.0.1:1".parse().unwrap(), 1);
        let mut d = Desired {
            file: vec![fixed.clone()],
            ..Desired::default()
        };
        let first = members(&group(), &[target(1, 2, 0), target(2, 2, 0)]);
        assert!(take_answer(&mut d, "api", first.clone()));
        assert_eq!(crate::pool::compose(&d).len(), 3);
        // The same answer changes nothing.
        assert!(!take_answer(&mut d, "api", first));
        // An operator's weight on a kept member stands while DNS's is unchanged.
        d.admin.weights.insert("api@10.0.0.1:80".into(), 7);
        let next = members(&group(), &[target(1, 2, 0), target(3, 2, 0)]);
        assert!(take_answer(&mut d, "api", next));
        let set = crate::pool::compose(&d);
        let names: Vec<&str> = set.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["s1", "api@10.0.0.1:80", "api@10.0.0.3:80"]);
        assert_eq!(set[1].weight, 7);
        assert_eq!(set[0], fixed);
        // A weight DNS changes is taken.
        let heavier = members(&group(), &[target(1, 9, 0), target(3, 2, 0)]);
        assert!(take_answer(&mut d, "api", heavier));
        assert_eq!(crate::pool::compose(&d)[1].weight, 9);
        // A member the operator removed is back while DNS names it.
        d.admin.remove("api@10.0.0.3:80");
        assert_eq!(crate::pool::compose(&d).len(), 2);
        let same = members(&group(), &[target(1, 9, 0), target(3, 2, 0)]);
        assert!(take_answer(&mut d, "api", same));
        assert_eq!(crate::pool::compose(&d).len(), 3);
    }

    #[test]
    fn another_groups_members_are_left_alone() {
        let mut other = members(&group(), &[target(1, 2, 0)]);
        other[0].group = Some("web".into());
        other[0].name = "web@10.0.0.1:80".into();
        let mut d = Desired::default();
        d.set_members("web", other.clone());
        let next = members(&group(), &[target(2, 2, 0)]);
        assert!(take_answer(&mut d, "api", next));
        let set = crate::pool::compose(&d);
        assert_eq!(set.len(), 2);
        assert_eq!(set[0], other[0]);
    }

    #[test]
    fn refreshes_follow_the_ttl_within_bounds() {
        let now = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(next_refresh(now, s(5), None, s(1)), now + s(5));
        assert_eq!(next_refresh(now, s(5), Some(now + s(2)), s(1)), now + s(2));
        assert_eq!(next_refresh(now, s(5), Some(now + s(60)), s(1)), now + s(5));
        // A TTL of zero does not make it spin.
        assert_eq!(next_refresh(now, s(5), Some(now), s(1)), now + s(1));
        // A refresh below the floor is honoured.
        let quick = Duration::from_millis(200);
        assert_eq!(next_refresh(now, quick, Some(now), s(1)), now + quick);
    }
}
