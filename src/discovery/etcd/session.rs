//! One session with etcd after another: connect, lease and register this
//! instance, read the prefix whole, then watch it from that revision with
//! keep-alives; an outage ends the session and the next reads afresh. Also
//! the read before serving starts.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, PutOptions, TlsOptions,
    WatchOptions,
};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::view::{self, Keys, View};
use super::Fleet;
use crate::config::{Config, EtcdConfig};
use crate::state::SharedState;

/// The instance key's lease: it outlives a missed keep-alive or two.
const LEASE_TTL: i64 = 10;
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(3);
/// How long one request to etcd may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Between sessions while etcd is unreachable.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How long the read at start may hold up serving.
const AT_START: Duration = Duration::from_secs(3);

pub async fn connect(conf: &EtcdConfig) -> Result<Client, etcd_client::Error> {
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
/// keeps trying. Returns the view the fleet starts from.
pub fn read_at_start(config: &Config) -> Option<View> {
    let conf = config.lb.etcd.clone()?;
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
            return Some(View::default());
        }
        Err(_) => {
            log::warn!("etcd did not answer within {AT_START:?} at start; serving the config file's upstreams until it does");
            return Some(View::default());
        }
    };
    for (key, why) in refused {
        log::warn!("etcd: {key} refused: {why}");
    }
    Some(view)
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
        let key = fleet.keys.key(
            view::Section::Instances,
            crate::config::DEFAULT_POOL,
            &fleet.conf.id,
        );
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
