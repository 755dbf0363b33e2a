//! The fleet on etcd: upstreams under `{prefix}upstreams/`, the operator's
//! overrides under `{prefix}overrides/` (a named pool's under
//! `{prefix}pools/{pool}/…`), and this instance under
//! `{prefix}instances/{id}` on a lease. A session reads the prefix whole,
//! then watches it from that revision; an outage keeps the last known state
//! serving, and the next session starts with a fresh read. Here: what this
//! instance knows of the fleet and how a view is put in force; the sessions
//! are `session.rs`.

mod apply;
mod session;
pub mod view;
pub mod writer;

pub use session::{connect, read_at_start, EtcdService};

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::SystemTime;

use etcd_client::Client;
use serde::Serialize;

use crate::config::{Config, EtcdConfig};
use view::{Instance, Keys, View};

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
    /// The last view applied.
    known: Mutex<View>,
    /// The upstreams etcd's overrides drain, by pool and name, for upstreams
    /// made anew while the view stands (a DNS member back, an entry's
    /// address changed).
    drains: Mutex<BTreeSet<(String, String)>>,
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
    /// The fleet from the view read at start.
    pub fn new(config: &Config, view: View) -> Option<Fleet> {
        let conf = config.lb.etcd.clone()?;
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
            drains: Mutex::new(drains_of(&view)),
            known: Mutex::new(view),
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
        status.instances = known.instances.values().cloned().collect();
        status
    }

    /// The session's client, if connected.
    pub fn client(&self) -> Option<Client> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether etcd's overrides drain `name` in `pool`.
    pub fn drains(&self, pool: &str, name: &str) -> bool {
        self.drains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(pool.to_string(), name.to_string()))
    }

    /// Whether etcd supplied the upstream `name` of `pool`.
    pub fn owns(&self, pool: &str, name: &str) -> bool {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known
            .pools
            .get(pool)
            .is_some_and(|p| p.upstreams.contains_key(name))
    }
}

fn drains_of(view: &View) -> BTreeSet<(String, String)> {
    view.pools
        .iter()
        .flat_map(|(pool, p)| p.overrides.keys().map(move |name| (pool, name)))
        .filter(|(pool, name)| view::drained(view, pool, name))
        .map(|(pool, name)| (pool.clone(), name.clone()))
        .collect()
}
