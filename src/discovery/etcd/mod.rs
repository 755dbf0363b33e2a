//! The fleet on etcd: upstreams under `{prefix}upstreams/`, the operator's
//! overrides under `{prefix}overrides/`, and this instance under
//! `{prefix}instances/{id}` on a lease. A session reads the prefix whole,
//! then watches it from that revision; an outage keeps the last known state
//! serving, and the next session starts with a fresh read.

pub mod view;
pub mod writer;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, PutOptions, TlsOptions,
    WatchOptions,
};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;

use crate::config::{Config, EtcdConfig, UpstreamConfig};
use crate::state::SharedState;
use view::{merge, Applied, Instance, Keys, View};

/// The instance key's lease: it outlives a missed keep-alive or two.
const LEASE_TTL: i64 = 10;
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(3);
/// How long one request to etcd may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Between sessions while etcd is unreachable.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How long the read at start may hold up serving.
const AT_START: Duration = Duration::from_secs(3);

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

async fn connect(conf: &EtcdConfig) -> Result<Client, etcd_client::Error> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT);
    if let Some((user, password)) = &conf.auth {
        // The watch and keep-alive streams do not renew etcd's token; the
        // admin API's writes would find it expired after etcd's TTL.
        options = options
            .with_user(user.clone(), password.clone())
            .with_auto_token_refresh(true);
    }
    if let Some(tls) = &conf.tls {
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca));
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(cert, key));
        }
        options = options.with_tls(t);
    }
    Client::connect(&conf.endpoints, Some(options)).await
}

/// Reads the prefix whole: the view and the revision it was read at, with the
/// keys whose values were refused.
async fn read(
    client: &mut Client,
    keys: &Keys,
) -> Result<(View, i64, Vec<(String, String)>), etcd_client::Error> {
    let resp = client
        .get(keys.prefix(), Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut view = View::default();
    let mut refused = Vec::new();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        if let Err(why) = view.put(keys, &key, kv.value()) {
            refused.push((key, why));
        }
    }
    Ok((view, revision, refused))
}

/// Reads etcd once before the table is built, so the first requests find
/// etcd's upstreams; unreachable, the file's upstreams serve and the service
/// keeps trying. Returns the fleet's starting point.
pub fn read_at_start(config: &mut Config) -> Option<Start> {
    let conf = config.lb.etcd.clone()?;
    let file = config.lb.upstreams.clone();
    let keys = Keys::new(&conf.prefix);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let read = runtime.block_on(async {
        tokio::time::timeout(AT_START, async {
            let mut client = connect(&conf).await?;
            read(&mut client, &keys).await
        })
        .await
    });
    let (view, _, refused) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => {
            log::warn!("etcd at start: {e}; serving the config file's upstreams until it answers");
            return Some((View::default(), Applied::default(), file));
        }
        Err(_) => {
            log::warn!("etcd did not answer within {AT_START:?} at start; serving the config file's upstreams until it does");
            return Some((View::default(), Applied::default(), file));
        }
    };
    for (key, why) in refused {
        log::warn!("etcd: {key} refused: {why}");
    }
    let (_, applied) = merge(&mut config.lb.upstreams, &file, &view, &Applied::default());
    Some((view, applied, file))
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
        let table = state.balancer.load();
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

/// Why a session ended.
enum End {
    Shutdown,
    Lost(String),
}

/// The background service: one session after another.
pub struct EtcdService {
    state: Arc<SharedState>,
}

impl EtcdService {
    pub fn new(state: Arc<SharedState>) -> Self {
        EtcdService { state }
    }

    async fn session(&self, fleet: &Fleet, shutdown: &mut ShutdownWatch) -> End {
        let lost = |e: etcd_client::Error| End::Lost(e.to_string());
        let mut client = match connect(&fleet.conf).await {
            Ok(c) => c,
            Err(e) => return lost(e),
        };
        let lease = match client.lease_grant(LEASE_TTL, None).await {
            Ok(l) => l.id(),
            Err(e) => return lost(e),
        };
        let me = serde_json::to_vec(&fleet.me).unwrap_or_default();
        let key = fleet.keys.key(view::Section::Instances, &fleet.conf.id);
        let register = PutOptions::new().with_lease(lease);
        if let Err(e) = client
            .put(key.as_str(), me.clone(), Some(register.clone()))
            .await
        {
            return lost(e);
        }
        let (mut keeper, mut alive) = match client.lease_keep_alive(lease).await {
            Ok(k) => k,
            Err(e) => return lost(e),
        };
        let (mut view, revision, refused) = match read(&mut client, &fleet.keys).await {
            Ok(r) => r,
            Err(e) => return lost(e),
        };
        self.refused(refused);
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut watch = match client.watch(fleet.keys.prefix(), Some(options)).await {
            Ok(w) => w,
            Err(e) => return lost(e),
        };
        fleet.apply(&self.state, view.clone());
        *fleet.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
        fleet.set_connected(&self.state, None);
        let mut tick = tokio::time::interval(KEEP_ALIVE_EVERY);
        loop {
            tokio::select! {
                message = watch.message() => {
                    let resp = match message {
                        Ok(Some(r)) => r,
                        Ok(None) => return End::Lost("the watch ended".into()),
                        Err(e) => return lost(e),
                    };
                    if resp.canceled() {
                        return End::Lost(format!("the watch was cancelled: {}", resp.cancel_reason()));
                    }
                    let mut refused = Vec::new();
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key()).into_owned();
                        match ev.event_type() {
                            EventType::Put => {
                                if let Err(why) = view.put(&fleet.keys, &key, kv.value()) {
                                    refused.push((key, why));
                                }
                            }
                            EventType::Delete => view.delete(&fleet.keys, &key),
                        }
                    }
                    self.refused(refused);
                    // Our key deleted under a live lease (by hand, or by a
                    // process that shared our id): put it back.
                    if !view.instances.contains_key(&fleet.conf.id) {
                        if let Err(e) = client.put(key.as_str(), me.clone(), Some(register.clone())).await {
                            return lost(e);
                        }
                    }
                    fleet.apply(&self.state, view.clone());
                }
                _ = tick.tick() => {
                    let renewed = tokio::time::timeout(REQUEST_TIMEOUT, async {
                        keeper.keep_alive().await?;
                        alive.message().await
                    }).await;
                    match renewed {
                        Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                        Ok(Ok(_)) => return End::Lost("this instance's lease expired".into()),
                        Ok(Err(e)) => return lost(e),
                        Err(_) => return End::Lost("a lease keep-alive went unanswered".into()),
                    }
                }
                _ = shutdown.changed() => {
                    // Leave the fleet at once rather than when the lease runs out.
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, client.lease_revoke(lease)).await;
                    return End::Shutdown;
                }
            }
        }
    }

    fn refused(&self, refused: Vec<(String, String)>) {
        for (key, why) in refused {
            log::warn!("etcd: {key} refused: {why}");
            self.state
                .events
                .push(None, "etcd", format!("{key} refused: {why}"));
        }
    }
}

#[async_trait]
impl BackgroundService for EtcdService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(fleet) = self.state.fleet.clone() else {
            let _ = shutdown.changed().await;
            return;
        };
        loop {
            match self.session(&fleet, &mut shutdown).await {
                End::Shutdown => return,
                End::Lost(why) => {
                    *fleet.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    fleet.set_connected(&self.state, Some(why));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
