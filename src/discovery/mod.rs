//! Upstreams that follow DNS. Each `dns:` or `srv:` entry is a group; its
//! members (named `{entry}@{address}`) are re-resolved at least every
//! `lb.discovery.refresh`, sooner when the answer's TTL is shorter, and merged
//! into the upstream table. A failed or empty answer never empties a group:
//! the last good set stays, and an event says the answer was refused.

pub mod dns;
pub mod etcd;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{Config, DiscoveredGroup, UpstreamConfig};
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

/// Merges `group`'s members `next` into the table's `configs`: members no
/// longer named are removed, new ones appended, kept ones keep their place.
/// A kept member's weight follows the answer only when the answer's weight
/// changed (`last` holds the previous answer's), so an operator's weight
/// stands until DNS says otherwise. Returns whether anything changed.
pub fn merge(
    configs: &mut Vec<UpstreamConfig>,
    group: &str,
    next: &[UpstreamConfig],
    last: &HashMap<String, u32>,
) -> bool {
    let before = configs.clone();
    configs.retain(|c| c.group.as_deref() != Some(group) || next.iter().any(|n| n.name == c.name));
    for n in next {
        match configs.iter_mut().find(|c| c.name == n.name) {
            Some(c) => {
                if last.get(&n.name).is_some_and(|&w| w != n.weight) {
                    c.weight = n.weight;
                }
                c.priority = n.priority;
            }
            None => configs.push(n.clone()),
        }
    }
    *configs != before
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
    if config.lb.discovered.is_empty() {
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
    let groups = config.lb.discovered.clone();
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
        for g in &groups {
            match tokio::time::timeout(AT_START, resolver.resolve(&g.source, g.weight)).await {
                Ok(Ok(answer)) => found.extend(members(g, &answer.targets)),
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
    config.lb.upstreams.extend(found);
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
    /// The last good answer's weight by member name.
    weights: HashMap<String, u32>,
    /// The answer is being refused (for one event per outage, not one per try).
    refusing: bool,
    due: Option<Instant>,
}

impl DiscoveryService {
    /// Asks about `group` and applies a good answer; returns when to ask again.
    async fn refresh(
        &self,
        resolver: &Resolver,
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
                let mut changed = false;
                let _ = state.edit_upstreams(&source, |configs| {
                    changed = merge(configs, &group.name, &next, &known.weights);
                    if changed {
                        Ok(())
                    } else {
                        Err(())
                    }
                });
                known.weights = next.iter().map(|c| (c.name.clone(), c.weight)).collect();
                if known.refusing {
                    known.refusing = false;
                    state.events.push(
                        Some(&group.name),
                        "discovery",
                        format!("{source}: answers again ({} targets)", next.len()),
                    );
                }
                let result = if changed { "changed" } else { "unchanged" };
                (result, Some(answer.valid_until))
            }
            Err(why) => {
                let held = known.weights.len();
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
        let groups = &self.state.config.lb.discovered;
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
        let mut known: Vec<Known> = groups
            .iter()
            .map(|g| Known {
                weights: self
                    .state
                    .upstream_configs()
                    .into_iter()
                    .filter(|c| c.group.as_deref() == Some(g.name.as_str()))
                    .map(|c| (c.name, c.weight))
                    .collect(),
                ..Known::default()
            })
            .collect();
        loop {
            let now = Instant::now();
            let mut wake = now + self.state.config.lb.discovery.refresh;
            for (g, k) in groups.iter().zip(known.iter_mut()) {
                if k.due.is_none_or(|due| due <= now) {
                    k.due = Some(self.refresh(&resolver, g, k).await);
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
    fn merging_removes_the_gone_adds_the_new_and_keeps_the_rest_in_place() {
        let fixed = UpstreamConfig::new("s1", "127.0.0.1:1".parse().unwrap(), 1);
        let mut configs = vec![fixed.clone()];
        let first = members(&group(), &[target(1, 2, 0), target(2, 2, 0)]);
        assert!(merge(&mut configs, "api", &first, &HashMap::new()));
        assert_eq!(configs.len(), 3);
        let last: HashMap<String, u32> = first.iter().map(|c| (c.name.clone(), c.weight)).collect();
        // The same answer changes nothing.
        assert!(!merge(&mut configs, "api", &first, &last));
        // An operator's weight on a kept member stands while DNS's is unchanged.
        configs[1].weight = 7;
        let next = members(&group(), &[target(1, 2, 0), target(3, 2, 0)]);
        assert!(merge(&mut configs, "api", &next, &last));
        let names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["s1", "api@10.0.0.1:80", "api@10.0.0.3:80"]);
        assert_eq!(configs[1].weight, 7);
        assert_eq!(configs[0], fixed);
        // A weight DNS changes is taken.
        let last: HashMap<String, u32> = next.iter().map(|c| (c.name.clone(), c.weight)).collect();
        let heavier = members(&group(), &[target(1, 9, 0), target(3, 2, 0)]);
        assert!(merge(&mut configs, "api", &heavier, &last));
        assert_eq!(configs[1].weight, 9);
    }

    #[test]
    fn another_groups_members_are_left_alone() {
        let mut other = members(&group(), &[target(1, 2, 0)]);
        other[0].group = Some("web".into());
        other[0].name = "web@10.0.0.1:80".into();
        let mut configs = other.clone();
        let next = members(&group(), &[target(2, 2, 0)]);
        assert!(merge(&mut configs, "api", &next, &HashMap::new()));
        assert_eq!(configs.len(), 2);
        assert_eq!(configs[0], other[0]);
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
