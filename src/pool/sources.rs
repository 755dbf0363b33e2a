//! A change of one source's wanted set, carried through: the set composed
//! anew replaces the table (upstreams kept by name and address keep their
//! state), newcomers wait for their first passing health checks (DNS
//! members are taken on trust, on probation), those that
//! left retire their series, and each addition and removal is an event
//! naming the source.

use super::{compose, Change, Desired, Pool};
use crate::config::rules::is_own;
use crate::upstream::Upstream;

/// Why an edit was not made.
#[derive(Debug, PartialEq, Eq)]
pub enum EditError<E> {
    /// The source's own refusal.
    Refused(E),
    /// It would take the pool past `lb.limits.max_upstreams` (an event says
    /// so; nothing changed).
    OverCap { wanted: usize, cap: usize },
}

impl Pool {
    /// Edits what one source wants: `edit` changes its part of the
    /// [`Desired`] sets (and may read the others'), or refuses and changes
    /// nothing. Edits run one at a time, so two cannot both take a name.
    /// `starts_drained` says whether a newcomer of a name joins drained (an
    /// operator's drain shared through etcd).
    pub fn edit<E>(
        &self,
        source: &str,
        starts_drained: impl Fn(&str) -> bool,
        edit: impl FnOnce(&mut Desired) -> Result<(), E>,
    ) -> Result<Change, EditError<E>> {
        let mut desired = self.desired();
        let mut next = desired.clone();
        edit(&mut next).map_err(EditError::Refused)?;
        let mut set = compose(&next);
        let cap = self.rules.max_upstreams;
        set.retain(|c| {
            let own = is_own(c.addr, &self.rules.own);
            if own {
                let detail = format!(
                    "{source}: {} refused: {} is this balancer's own listener (a loop)",
                    c.name, c.addr
                );
                log::warn!("{detail}");
                self.events.push(Some(&c.name), "upstreams", detail);
            }
            !own
        });
        let held = self.load().upstreams().len();
        if set.len() > cap && set.len() > held {
            let detail = format!(
                "{source}: refused a change to {} upstreams, over lb.limits.max_upstreams ({cap})",
                set.len(),
            );
            log::warn!("{detail}");
            self.events.push(None, "upstreams", detail);
            return Err(EditError::OverCap {
                wanted: set.len(),
                cap,
            });
        }
        *desired = next;
        let passes = self.rules.passes;
        let change = self.replace(&set, |c| {
            let u = Upstream::new(c, &self.env);
            // A DNS member is taken on trust (see `on_probation`); any other
            // newcomer waits for its checks.
            if c.group.is_some() {
                u.on_probation(passes);
            } else {
                u.await_checks(passes);
            }
            u
        });
        let table = self.load();
        for u in &change.removed {
            u.retire(&self.env.metrics, table.members.get(&u.name).is_some());
            log::info!("upstream {} ({}) removed by {source}", u.name, u.addr);
            self.events.push(
                Some(&u.name),
                "upstreams",
                format!("{} removed by {source}", u.addr),
            );
        }
        for u in &change.added {
            if starts_drained(&u.name) {
                u.set_drained(true);
            }
            log::info!("upstream {} ({}) added by {source}", u.name, u.addr);
            self.events.push(
                Some(&u.name),
                "upstreams",
                format!("{} added by {source}", u.addr),
            );
        }
        Ok(change)
    }
}
