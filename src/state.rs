//! What the proxy, the background services and the dashboard share: the
//! config, the routes, the pools, the metrics, the events and the process's
//! draining flag. It holds the parts and decides nothing: the request path
//! reads only atomics and swapped snapshots; changes to a pool's set of
//! upstreams all go through [`SharedState::edit_sources`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use prometheus::IntCounter;

use crate::config::Config;
use crate::events::Events;
use crate::metrics::Metrics;
use crate::pool::{Change, Desired, EditError, Policy, Pool, SetRules};
use crate::sticky::StickyResult;
use crate::upstream::Upstream;

/// Everything the parts of one process share.
#[derive(Debug)]
pub struct SharedState {
    pub config: Config,
    /// Every pool, in `lb.pools`' order: its upstreams, their published
    /// eligible set, selection and policies.
    pub pools: Vec<Arc<Pool>>,
    /// Which route a request takes, and each route's limits and series.
    pub routes: crate::route::served::Routes,
    pub metrics: Metrics,
    pub events: Arc<Events>,
    /// Sticky outcomes by [`StickyResult`] (hit, new, moved, invalid).
    sticky_counts: [AtomicU64; 4],
    /// Answers to clients, and of those the 5xx: what clients saw, for the
    /// dashboard's header.
    answers: [AtomicU64; 2],
    /// `hlb_sticky_total{result}` by [`StickyResult`], resolved once.
    sticky_series: [IntCounter; 4],
    /// Set when the process starts handing over or stopping: answers then ask
    /// clients to close their connections. Atomic for the request path, a watch
    /// for tasks that wait on it.
    draining: AtomicBool,
    draining_watch: tokio::sync::watch::Sender<bool>,
    /// This process's `Via` entry, which also tells a loop.
    pub via: crate::via::Via,
    /// Per-client request rates (`lb.rate_limit`).
    pub rate_limiter: Option<crate::rate_limit::RateLimiter>,
    /// Requests in flight per client (`lb.limits.max_connections_per_client`).
    pub client_requests: crate::client_requests::ClientRequests,
    /// Where request records go (`lb.access_log`).
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
    /// The demo upstreams' controls, while the demo runs.
    pub demo: crate::demo_controls::DemoControls,
    /// The fleet on `lb.etcd`, if configured.
    pub fleet: Option<Arc<crate::discovery::etcd::Fleet>>,
    /// The HTTPS listeners' certificates, for the dashboard.
    certificates: std::sync::OnceLock<Arc<crate::tls::CertStore>>,
    /// ACME's challenges and status, with `lb.tls.acme`.
    acme: std::sync::OnceLock<Arc<crate::acme::service::Acme>>,
}

impl SharedState {
    pub fn new(config: Config) -> Self {
        Self::with_fleet(config, None)
    }

    /// With the fleet's starting point read from etcd (see
    /// `discovery::etcd::read_at_start`).
    pub fn with_fleet(config: Config, start: Option<crate::discovery::etcd::view::View>) -> Self {
        let fleet = start
            .clone()
            .and_then(|s| crate::discovery::etcd::Fleet::new(&config, s))
            .map(Arc::new);
        let metrics = Metrics::new();
        let events = Arc::new(Events::default());
        let rules = SetRules {
            passes: 0,
            max_upstreams: config.lb.limits.max_upstreams,
            own: config.own_addrs(),
        };
        let pools: Vec<Arc<Pool>> = config
            .lb
            .pools
            .iter()
            .map(|conf| {
                let etcd = start
                    .as_ref()
                    .map(|view| crate::discovery::etcd::view::wanted(view, &conf.name));
                let rules = SetRules {
                    passes: conf.health_check.healthy_threshold,
                    ..rules.clone()
                };
                Pool::build(Policy::new(conf.clone()), &metrics, &events, etcd, rules)
            })
            .collect();
        let routes = crate::route::served::Routes::new(config.lb.routes.clone(), &metrics);
        let sticky_series =
            StickyResult::ALL.map(|r| metrics.sticky_total.with_label_values(&[r.as_str()]));
        let rate_limiter = config
            .lb
            .rate_limit
            .as_ref()
            .map(crate::rate_limit::RateLimiter::new);
        let access_log = config.lb.access_log.as_deref().map(|path| {
            Arc::new(crate::access_log::AccessLog::new(
                path,
                metrics.access_log_dropped_total.clone(),
            ))
        });
        SharedState {
            fleet,
            demo: Default::default(),
            rate_limiter,
            via: Default::default(),
            client_requests: crate::client_requests::ClientRequests::new(
                config.lb.limits.max_connections_per_client,
                metrics.client_requests_refused_total.clone(),
            ),
            access_log,
            config,
            pools,
            routes,
            sticky_series,
            metrics,
            events,
            sticky_counts: Default::default(),
            answers: Default::default(),
            draining: AtomicBool::new(false),
            draining_watch: tokio::sync::watch::channel(false).0,
            certificates: std::sync::OnceLock::new(),
            acme: std::sync::OnceLock::new(),
        }
    }

    /// Records the certificate store the HTTPS listeners serve from.
    pub fn set_certificates(&self, store: Arc<crate::tls::CertStore>) {
        let _ = self.certificates.set(store);
    }

    /// The HTTPS listeners' certificates, if there are any.
    pub fn certificates(&self) -> Option<&Arc<crate::tls::CertStore>> {
        self.certificates.get()
    }

    /// Records ACME's running parts.
    pub fn set_acme(&self, acme: Arc<crate::acme::service::Acme>) {
        let _ = self.acme.set(acme);
    }

    /// ACME's challenges and status, with `lb.tls.acme`.
    pub fn acme(&self) -> Option<&Arc<crate::acme::service::Acme>> {
        self.acme.get()
    }

    /// The pool `default` (`pools[0]`, always there): the unprefixed admin
    /// API paths and etcd keys act on it.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pools[0]
    }

    /// The upstream called `name` in the `default` pool's table in force.
    pub fn upstream(&self, name: &str) -> Option<Arc<Upstream>> {
        self.pool().load().members.get(name).cloned()
    }

    /// The pool called `name`.
    pub fn pool_named(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.name() == name)
    }

    /// Edits what one source wants of the `default` pool (see
    /// [`Pool::edit`]); an upstream that etcd's overrides drain joins drained.
    pub fn edit_sources<E>(
        &self,
        source: &str,
        edit: impl FnOnce(&mut Desired) -> Result<(), E>,
    ) -> Result<Change, EditError<E>> {
        self.edit_pool(self.pool(), source, edit)
    }

    /// [`SharedState::edit_sources`] on `pool`.
    pub fn edit_pool<E>(
        &self,
        pool: &Pool,
        source: &str,
        edit: impl FnOnce(&mut Desired) -> Result<(), E>,
    ) -> Result<Change, EditError<E>> {
        let fleet = self.fleet.as_ref();
        let drains = |name: &str| fleet.is_some_and(|f| f.drains(pool.name(), name));
        pool.edit(source, drains, edit)
    }

    /// Counts one answer to a client (0: none was sent).
    pub fn count_answer(&self, status: u16) {
        if status > 0 {
            self.answers[0].fetch_add(1, Ordering::Relaxed);
            if status >= 500 {
                self.answers[1].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Answers to clients so far, and of those the 5xx.
    pub fn answers(&self) -> (u64, u64) {
        let n = |i: usize| self.answers[i].load(Ordering::Relaxed);
        (n(0), n(1))
    }

    /// Counts one sticky outcome.
    pub fn count_sticky(&self, result: StickyResult) {
        self.sticky_counts[result as usize].fetch_add(1, Ordering::Relaxed);
        self.sticky_series[result as usize].inc();
    }

    /// Sticky outcomes so far, by [`StickyResult`].
    pub fn sticky_count(&self, result: StickyResult) -> u64 {
        self.sticky_counts[result as usize].load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Marks the process as handing over or stopping.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.draining_watch.send_replace(true);
    }

    pub fn draining_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.draining_watch.subscribe()
    }
}
