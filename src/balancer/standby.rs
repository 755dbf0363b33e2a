//! SRV priorities: of a discovered group, only the lowest priority that has an
//! eligible target takes traffic (RFC 2782); the others stand by and take over
//! when none of it is eligible. Reassessed with panic mode, on every
//! eligibility change and every second.

use std::collections::HashMap;

/// One member as the assessment sees it.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub group: Option<&'a str>,
    pub priority: u16,
    /// Healthy, not drained, breaker not open.
    pub eligible: bool,
    pub healthy: bool,
}

/// Which members stand by: those of a group whose priority is above the
/// group's preferred one (the lowest with an eligible member, or failing that
/// the lowest with a healthy one). Members of no group never stand by.
pub fn standby(members: &[Member]) -> Vec<bool> {
    let mut preferred: HashMap<&str, (Option<u16>, Option<u16>)> = HashMap::new();
    for m in members {
        if let Some(g) = m.group {
            let (eligible, healthy) = preferred.entry(g).or_default();
            if m.eligible {
                *eligible = Some(eligible.map_or(m.priority, |p| p.min(m.priority)));
            }
            if m.healthy {
                *healthy = Some(healthy.map_or(m.priority, |p| p.min(m.priority)));
            }
        }
    }
    members
        .iter()
        .map(|m| {
            let Some(g) = m.group else { return false };
            match preferred.get(g).and_then(|(e, h)| e.or(*h)) {
                Some(p) => m.priority > p,
                None => false,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(group: Option<&str>, priority: u16, eligible: bool, healthy: bool) -> Member<'_> {
        Member {
            group,
            priority,
            eligible,
            healthy,
        }
    }

    #[test]
    fn only_the_lowest_priority_with_an_eligible_target_is_used() {
        let g = Some("api");
        let members = [
            m(g, 10, true, true),
            m(g, 10, false, false),
            m(g, 20, true, true),
            m(None, 0, true, true),
        ];
        assert_eq!(standby(&members), [false, false, true, false]);
    }

    #[test]
    fn when_no_preferred_target_is_eligible_the_next_priority_takes_over() {
        let g = Some("api");
        let members = [
            m(g, 10, false, true),
            m(g, 20, true, true),
            m(g, 30, true, true),
        ];
        // The ineligible preferred target is not held back: its breaker
        // still lets its probe through, so it can return.
        assert_eq!(standby(&members), [false, false, true]);
        // Nothing eligible: the lowest healthy priority, so panic mode has
        // something to balance over.
        let members = [
            m(g, 10, false, false),
            m(g, 20, false, true),
            m(g, 30, false, true),
        ];
        // (Priority 10 is unhealthy: refused whatever its standby says.)
        assert_eq!(standby(&members), [false, false, true]);
        // Nothing healthy: nobody is held back.
        let members = [m(g, 10, false, false), m(g, 20, false, false)];
        assert_eq!(standby(&members), [false, false]);
    }

    #[test]
    fn groups_are_assessed_apart() {
        let members = [
            m(Some("a"), 1, true, true),
            m(Some("a"), 2, true, true),
            m(Some("b"), 2, true, true),
        ];
        assert_eq!(standby(&members), [false, true, false]);
    }
}
