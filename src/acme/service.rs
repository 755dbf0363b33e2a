//! The ACME loop, once a second: serve the certificate stored (ordered here
//! earlier, or by another instance of the fleet), and when the certificate
//! is missing, lacks a name or is due for renewal, order one (under the
//! fleet's lock, after looking again at what is stored). A failed order leaves the certificate in force serving,
//! raises an event and waits longer before the next attempt. Beside it, in
//! a fleet, the other instances' open challenges are followed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounterVec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::challenges::Challenges;
use super::store::Store;
use super::{schedule, AcmeConfig, Status};
use crate::events::{unix_time, Events};
use crate::tls::{CertStore, CertificatePaths};

const TICK: Duration = Duration::from_secs(1);
/// How often the fleet's open challenges are read (an order waits 2.5 s for
/// them to spread before the server is told).
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// What the proxy and the dashboard reach of ACME.
pub struct Acme {
    pub challenges: Arc<Challenges>,
    pub status: Mutex<Status>,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// A certificate and its key, stored as one value so that no reader ever
/// sees one without the other.
#[derive(Serialize, Deserialize)]
struct Bundle {
    cert: String,
    key: String,
}

pub struct AcmeService {
    conf: AcmeConfig,
    store: Arc<Store>,
    acme: Arc<Acme>,
    certs: Arc<CertStore>,
    events: Arc<Events>,
    orders: IntCounterVec,
}

/// What this instance has in force, and its failures in a row.
#[derive(Default)]
struct Running {
    installed: Option<Vec<u8>>,
    /// not_before, not_after of the certificate in force.
    dates: Option<(i64, i64)>,
    covers_all: bool,
    /// The certificate in force was ordered for this set of names from this
    /// server (not one stored for another, serving until this one is).
    exact: bool,
    failures: u32,
    retry_at: f64,
}

impl AcmeService {
    pub fn new(
        conf: AcmeConfig,
        store: Arc<Store>,
        acme: Arc<Acme>,
        certs: Arc<CertStore>,
        events: Arc<Events>,
        orders: IntCounterVec,
    ) -> Self {
        if let Ok(mut s) = acme.status.lock() {
            s.domains = conf.domains.clone();
            s.directory = conf.directory.clone();
        }
        AcmeService {
            conf,
            store,
            acme,
            certs,
            events,
            orders,
        }
    }

    /// The certificate's key in the store: one per set of names and ACME
    /// server (a move from staging to production orders anew).
    fn key(&self) -> String {
        let mut names = self.conf.domains.clone();
        names.sort();
        let digest =
            Sha256::digest(format!("{} {}", self.conf.directory, names.join(",")).as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("certs/{hex}.json")
    }

    /// Puts the stored certificate in force if it is not already. Until
    /// one for exactly these names is stored, one stored for another set
    /// (the names changed since) serves the names it carries.
    async fn serve_stored(&self, run: &mut Running) -> Result<(), String> {
        let (stored, exact) = match self.store.get(&self.key()).await? {
            Some(s) => (s, true),
            None if run.installed.is_none() => match self.earlier().await? {
                Some(s) => (s, false),
                None => return Ok(()),
            },
            None => return Ok(()),
        };
        if run.installed.as_ref() == Some(&stored) {
            return Ok(());
        }
        let bundle: Bundle =
            serde_json::from_slice(&stored).map_err(|e| format!("{}: {e}", self.key()))?;
        let fresh = run.installed.is_none();
        self.install(&bundle, run)?;
        run.installed = Some(stored);
        run.exact = exact;
        if let Ok(mut s) = self.acme.status.lock() {
            if s.last_result.is_none() || !fresh {
                s.last_result = Some(if fresh { "stored" } else { "served" }.into());
            }
        }
        Ok(())
    }

    /// The stored certificate (of another set of names) that carries most
    /// of ours, if any.
    async fn earlier(&self) -> Result<Option<Vec<u8>>, String> {
        let mut best: Option<(usize, Vec<u8>)> = None;
        for (_, stored) in self.store.list("certs/").await? {
            let Ok(bundle) = serde_json::from_slice::<Bundle>(&stored) else {
                continue;
            };
            let paths = CertificatePaths {
                cert: "acme".into(),
                key: "acme".into(),
            };
            let Ok(loaded) = crate::tls::from_pem(&paths, bundle.cert.into(), bundle.key.into())
            else {
                continue;
            };
            let carried = self
                .conf
                .domains
                .iter()
                .filter(|d| loaded.names.iter().any(|n| crate::tls::name_matches(n, d)))
                .count();
            if carried > 0 && best.as_ref().is_none_or(|(n, _)| carried > *n) {
                best = Some((carried, stored));
            }
        }
        Ok(best.map(|(_, s)| s))
    }

    fn install(&self, bundle: &Bundle, run: &mut Running) -> Result<(), String> {
        let paths = CertificatePaths {
            cert: format!("acme:{}", self.key()).into(),
            key: format!("acme:{}", self.key()).into(),
        };
        let loaded = crate::tls::from_pem(
            &paths,
            bundle.cert.clone().into_bytes(),
            bundle.key.clone().into_bytes(),
        )
        .map_err(|e| e.to_string())?;
        let (not_before, not_after) = (loaded.not_before, loaded.not_after);
        let issuer = loaded.issuer.clone();
        run.covers_all = self
            .conf
            .domains
            .iter()
            .all(|d| loaded.names.iter().any(|n| crate::tls::name_matches(n, d)));
        run.dates = Some((not_before, not_after));
        self.certs.set_managed(loaded);
        if let Ok(mut s) = self.acme.status.lock() {
            s.issuer = issuer;
            s.not_after = Some(not_after);
            s.renew_at = Some(schedule::renew_at(not_before, not_after));
        }
        Ok(())
    }

    async fn tick(&self, run: &mut Running) {
        if let Err(e) = self.serve_stored(run).await {
            log::warn!("acme: reading the stored certificate: {e}");
        }
        let now = unix_time();
        let due = schedule::due(now as i64, run.dates, run.covers_all && run.exact);
        if !due || now < run.retry_at {
            return;
        }
        let lock = match self.store.lock("certificate").await {
            Ok(Some(l)) => l,
            // Another instance is ordering: its certificate is read here
            // once stored.
            Ok(None) => return,
            Err(e) => return self.failed(run, &e),
        };
        // Another instance may have ordered while this one waited.
        let _ = self.serve_stored(run).await;
        if schedule::due(unix_time() as i64, run.dates, run.covers_all && run.exact) {
            self.order(run).await;
        }
        lock.release().await;
    }

    async fn order(&self, run: &mut Running) {
        let names = self.conf.domains.join(", ");
        let issued = match super::order::order(&self.conf, &self.store, &self.acme.challenges).await
        {
            Ok(i) => i,
            Err(e) => return self.failed(run, &e),
        };
        let bundle = Bundle {
            cert: issued.cert_pem,
            key: issued.key_pem,
        };
        let stored = match serde_json::to_vec(&bundle) {
            Ok(v) => v,
            Err(e) => return self.failed(run, &e.to_string()),
        };
        if let Err(e) = self.install(&bundle, run) {
            return self.failed(run, &format!("the issued certificate: {e}"));
        }
        if let Err(e) = self.store.put(&self.key(), &stored).await {
            // Served here all the same; stored at the next renewal.
            log::warn!("acme: storing the certificate: {e}");
        }
        run.installed = Some(stored);
        run.exact = true;
        run.failures = 0;
        run.retry_at = 0.0;
        self.orders.with_label_values(&["ok"]).inc();
        let expires = run.dates.map_or(0, |d| d.1);
        self.events.push(
            None,
            "acme",
            format!(
                "certificate for {names} issued, expires {}",
                crate::tls::rotation::expiry_text(expires)
            ),
        );
        if let Ok(mut s) = self.acme.status.lock() {
            s.last_result = Some("ok".into());
            s.last_error = None;
            s.last_at = Some(unix_time());
            s.retry_at = None;
        }
    }

    fn failed(&self, run: &mut Running, why: &str) {
        run.failures += 1;
        let wait = schedule::backoff(run.failures);
        run.retry_at = unix_time() + wait.as_secs_f64();
        self.orders.with_label_values(&["failed"]).inc();
        let detail = format!(
            "ordering a certificate for {} failed ({why}); trying again in {}",
            self.conf.domains.join(", "),
            humantime::format_duration(wait)
        );
        log::warn!("acme: {detail}");
        self.events.push(None, "acme", detail);
        if let Ok(mut s) = self.acme.status.lock() {
            s.last_result = Some("failed".into());
            s.last_error = Some(why.to_string());
            s.last_at = Some(unix_time());
            s.retry_at = Some(run.retry_at);
        }
    }
}

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let orders = async {
            let mut run = Running::default();
            loop {
                self.tick(&mut run).await;
                tokio::time::sleep(TICK).await;
            }
        };
        // Apart from the orders, so that an instance waiting on etcd or
        // ordering itself still takes up the fleet's challenges in time.
        let follow = async {
            loop {
                if let Err(e) = self.acme.challenges.follow().await {
                    log::debug!("acme: following the fleet's challenges: {e}");
                }
                tokio::time::sleep(FOLLOW_EVERY).await;
            }
        };
        tokio::select! {
            _ = orders => {}
            _ = follow => {}
            _ = shutdown.changed() => {}
        }
    }
}
