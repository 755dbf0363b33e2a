//! The fleet on etcd: upstreams under `{prefix}upstreams/`, the operator's
//! overrides under `{prefix}overrides/`, and this instance under
//! `{prefix}instances/{id}` on a lease. A session reads the prefix whole,
//! then watches it from that revision; an outage keeps the last known state
//! serving, and the next session starts with a fresh read. Here: what this
//! instance knows of the fleet and how a view is put in force; the sessions
//! are `session.rs`.

mod session;
pub mod view;
pub mod writer;

pub use session::{read_at_start, EtcdService};

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::SystemTime;

use etcd_client::Client;
use serde::Serialize;

use crate::config::{Config, EtcdConfig, UpstreamConfig};
use crate::state::SharedState;
use view::{merge, Applied, Instance, Keys, View};

/// The fleet's starting point: the view read at start, what it put in
/// force, and the config file's own upstreams.
pub type Start = (View, Applied, Vec<UpstreamConfig>);

/// What this instance knows of the fleet, for the admin API and the
/// dashboard.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub connected: bool,
    /// When the present state (connected or not) began, RFC 3339.
    pub since: Option<String>,
    /// Why the last session ended.
    pub error: Option<String>,
    pub instances: Vec<Instance>,
}

/// The fleet as this instance sees it.
pub struct Fleet {
    pub conf: EtcdConfig,
    pub keys: Keys,
    /// The config file's upstreams, which etcd's may shadow.
    file: Vec<UpstreamConfig>,
    /// The last view applied and what it put in force.
    known: Mutex<(View, Applied)>,
    /// The upstreams etcd's overrides drain, for upstreams made anew while
    /// the view stands (a DNS member back, an entry's address changed).
    drains: Mutex<BTreeSet<String>>,
    status: Mutex<Status>,
    /// The session's client, for the admin API's writes.
    client: Mutex<Option<Client>>,
    /// This instance's entry.
    me: Instance,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("conf", &self.conf)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Fleet {
    pub fn new(config: &Config, start: Start) -> Option<Fleet> {
        let conf = config.lb.etcd.clone()?;
        let (view, applied, file) = start;
        let lb = &config.lb;
        let me = Instance {
            id: conf.id.clone(),
            listen: lb
                .listen
                .iter()
                .map(|a| format!("http://{a}"))
                .chain(
                    lb.tls
                        .iter()
                        .flat_map(|t| &t.listen)
                        .map(|a| format!("https://{a}")),
                )
                .collect(),
            dashboard: format!("http://{}/", config.dashboard.listen),
            started: now_rfc3339(),
        };
        Some(Fleet {
            keys: Keys::new(&conf.prefix),
            conf,
            file,
            drains: Mutex::new(drains_of(&view)),
            known: Mutex::new((view, applied)),
            status: Mutex::default(),
            client: Mutex::new(None),
            me,
        })
    }

    /// The session's state, with the instances of the view in force.
    pub fn status(&self) -> Status {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        status.instances = known.0.instances.values().cloned().collect();
        status
    }

    /// The session's client, if connected.
    pub fn client(&self) -> Option<Client> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether etcd's overrides drain `name`.
    pub fn drains(&self, name: &str) -> bool {
        self.drains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
    }

    /// Whether etcd supplied the upstream `name`.
    pub fn owns(&self, name: &str) -> bool {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.1.upstreams.contains(name)
    }

    /// Puts `view` in force: the upstream set, weights and drains.
    pub fn apply(&self, state: &SharedState, view: View) {
        *self.drains.lock().unwrap_or_else(|p| p.into_inner()) = drains_of(&view);
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let mut shadowed = Vec::new();
        let mut applied = known.1.clone();
        let _ = state.edit_upstreams("etcd", |configs| {
            (shadowed, applied) = merge(configs, &self.file, &view, &known.1);
            Ok::<(), ()>(())
        });
        for name in shadowed {
            state.events.push(
                Some(&name),
                "etcd",
                "etcd's entry of this name replaces the config file's".into(),
            );
        }
        let table = state.pool.load();
        let overridden: BTreeSet<&String> = view
            .overrides
            .keys()
            .chain(known.0.overrides.keys())
            .collect();
        for u in table
            .upstreams()
            .iter()
            .filter(|u| overridden.contains(&u.name))
        {
            let want = view::drained(&view, &u.name);
            if u.set_drained(want) != want {
                let what = if want { "drained" } else { "enabled" };
                log::info!("upstream {} {what} by etcd", u.name);
                state
                    .events
                    .push(Some(&u.name), "etcd", format!("{what} by etcd"));
            }
        }
        *known = (view, applied);
    }

    /// Drains written before the table held the upstream (at start).
    pub fn apply_start(&self, state: &SharedState) {
        let view = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone();
        self.apply(state, view);
    }

    fn set_connected(&self, state: &SharedState, error: Option<String>) {
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

fn drains_of(view: &View) -> BTreeSet<String> {
    view.overrides
        .keys()
        .filter(|name| view::drained(view, name))
        .cloned()
        .collect()
}
