//! A change of one source's wanted set, carried through: the set composed
//! anew replaces the table (upstreams kept by name and address keep their
//! state), newcomers wait for their first passing health checks, those that
//! left retire their series, and each addition and removal is an event
//! naming the source.

use super::{compose, Change, Desired, Pool};
use crate::upstream::Upstream;

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
    ) -> Result<Change, E> {
        let mut desired = self.desired();
        let mut next = desired.clone();
        edit(&mut next)?;
        *desired = next;
        let passes = self.passes;
        let change = self.replace(&compose(&desired), |c| {
            let u = Upstream::new(c, &self.env);
            u.await_checks(passes);
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
