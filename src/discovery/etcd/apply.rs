//! How a view of the fleet is put in force on this instance: what etcd wants
//! of each pool (its entries and override weights) becomes that pool's etcd
//! source, the overrides' drains are set, and the session's state is kept
//! for the dashboard and the metrics.

use std::collections::BTreeSet;

use super::view::{self, View};
use super::{drains_of, now_rfc3339, Fleet};
use crate::pool::Pool;
use crate::state::SharedState;

impl Fleet {
    /// Puts `view` in force: each pool's upstream set, weights and drains.
    pub fn apply(&self, state: &SharedState, view: View) {
        *self.drains.lock().unwrap_or_else(|p| p.into_inner()) = drains_of(&view);
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        for pool in &state.pools {
            self.apply_pool(state, pool, &view, &known);
        }
        *known = view;
    }

    /// Puts `pool`'s part of `view` in force (`known`: the view before).
    fn apply_pool(&self, state: &SharedState, pool: &Pool, view: &View, known: &View) {
        let name = pool.name();
        let mut shadowed = Vec::new();
        let _ = state.edit_pool(pool, "etcd", |d| {
            let next = view::wanted(view, name);
            // File entries etcd's now stand in for (not those it already did).
            shadowed = next
                .upstreams
                .keys()
                .filter(|n| !d.etcd.upstreams.contains_key(*n))
                .filter(|n| d.file.iter().any(|f| &f.name == *n))
                .cloned()
                .collect();
            d.etcd = next;
            Ok::<(), ()>(())
        });
        for name in shadowed {
            state.events.push(
                Some(&name),
                "etcd",
                "etcd's entry of this name replaces the config file's".into(),
            );
        }
        let table = pool.load();
        let (now, before) = (view.pool(name), known.pool(name));
        let overridden: BTreeSet<&String> = now
            .overrides
            .keys()
            .chain(before.overrides.keys())
            .collect();
        for u in table
            .upstreams()
            .iter()
            .filter(|u| overridden.contains(&u.name))
        {
            let want = view::drained(view, name, &u.name);
            if u.set_drained(want) != want {
                let what = if want { "drained" } else { "enabled" };
                log::info!("upstream {} {what} by etcd", u.name);
                state
                    .events
                    .push(Some(&u.name), "etcd", format!("{what} by etcd"));
            }
        }
    }

    /// Drains written before the table held the upstream (at start).
    pub fn apply_start(&self, state: &SharedState) {
        let view = self.known.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.apply(state, view);
    }

    pub(super) fn set_connected(&self, state: &SharedState, error: Option<String>) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let connected = error.is_none();
        if s.connected != connected || s.since.is_none() {
            s.since = Some(now_rfc3339());
            let detail = match &error {
                None => format!(
                    "connected to {}; state read afresh",
                    self.conf.endpoints.join(", ")
                ),
                Some(e) => format!("unreachable ({e}); serving the last known state"),
            };
            if connected {
                log::info!("etcd: {detail}");
            } else {
                log::warn!("etcd: {detail}");
            }
            state.events.push(None, "etcd", detail);
        }
        s.connected = connected;
        s.error = error;
        state.metrics.etcd_connected.set(i64::from(connected));
    }
}
