//! Who may hold a connection: at most `lb.limits.max_connections` client
//! connections at once, and at most `max_connections_per_client` from one
//! address (counted with pingora-limits' `Inflight` estimator, so memory stays
//! flat however many addresses connect). Over either cap a new connection is
//! closed at once, before anything is read from it.
//!
//! At start the process raises its descriptor limit and keeps descriptors in
//! reserve: every client connection may need an upstream one, and health
//! checks and the dashboard need theirs even when the cap is reached.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pingora::protocols::Stream;
use slab::Slab;
use tokio::sync::Notify;

use pingora_limits::inflight::{Guard, Inflight};
use prometheus::{IntCounter, IntGauge};

use crate::metrics::Metrics;

/// Descriptors kept free for health checks, the dashboard, logs and the like.
pub const RESERVE: u64 = 256;

/// When the cap is full, a connection that has waited at least this long for
/// a request header (idle keep-alive, or a header not yet whole) may be shed
/// to make room, as nginx closes idle keep-alive connections when it runs out.
pub const SHED_AFTER: Duration = Duration::from_secs(1);

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open.
    Full,
    /// This address holds `max_connections_per_client`.
    PerClient,
}

/// A slot's `waiting_since` once it has been told to give its place up.
const SHED: u64 = u64::MAX;

/// One held connection as the admission sees it.
#[derive(Debug, Default)]
pub struct Slot {
    /// When it started waiting for a request header (milliseconds since the
    /// admission's epoch, plus one); 0 while a request is in progress;
    /// [`SHED`] once told to close. The state is the truth: a wake-up that
    /// finds it not shed is ignored.
    waiting_since: AtomicU64,
    /// Woken when it is shed.
    wake: Notify,
}

impl Slot {
    /// Whether the connection has been told to close.
    pub fn is_shed(&self) -> bool {
        self.waiting_since.load(Ordering::Acquire) == SHED
    }

    /// Resolves once the connection is told to close and give its place to
    /// a newcomer.
    pub async fn shed(&self) {
        loop {
            if self.waiting_since.load(Ordering::Acquire) == SHED {
                return;
            }
            self.wake.notified().await;
        }
    }
}

/// The held connections, each removed as its place is given back.
type Slots = Arc<Mutex<Slab<Arc<Slot>>>>;

fn lock(slots: &Slots) -> MutexGuard<'_, Slab<Arc<Slot>>> {
    slots.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts client connections and admits or refuses new ones.
pub struct Admission {
    /// Held connections, which could be shed under pressure.
    slots: Slots,
    epoch: Instant,
    shed_total: IntCounter,
    max: usize,
    per_client: usize,
    open: Arc<AtomicUsize>,
    by_client: Inflight,
    gauge: IntGauge,
    refused_full: IntCounter,
    refused_per_client: IntCounter,
}

/// Holds one admitted connection's place; dropping it gives the place back.
pub struct Place {
    open: Arc<AtomicUsize>,
    _client: Guard,
    gauge: IntGauge,
    pub slot: Arc<Slot>,
    /// Its key in `slots`.
    key: usize,
    slots: Slots,
    epoch: Instant,
}

impl Place {
    /// The connection now waits for a request header: it may be shed. False
    /// if it was shed already (during its last request): it should close.
    pub fn waiting(&self) -> bool {
        let ms = self.epoch.elapsed().as_millis() as u64 + 1;
        self.slot
            .waiting_since
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != SHED).then_some(ms)
            })
            .is_ok()
    }

    /// A request is in progress: it is not shed (unless it already was, in
    /// which case the request is served and the connection then closes).
    pub fn busy(&self) {
        let _ = self
            .slot
            .waiting_since
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != SHED).then_some(0)
            });
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        lock(&self.slots).try_remove(self.key);
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

impl Admission {
    /// Caps for the listener called `listener` in the metrics.
    pub fn new(listener: &str, max: usize, per_client: usize, metrics: &Metrics) -> Self {
        Admission {
            slots: Arc::new(Mutex::new(Slab::new())),
            epoch: Instant::now(),
            shed_total: metrics
                .connections_refused
                .with_label_values(&[listener, "shed"]),
            max,
            per_client,
            open: Arc::new(AtomicUsize::new(0)),
            by_client: Inflight::new(),
            gauge: metrics.connections.with_label_values(&[listener]),
            refused_full: metrics
                .connections_refused
                .with_label_values(&[listener, "full"]),
            refused_per_client: metrics
                .connections_refused
                .with_label_values(&[listener, "per_client"]),
        }
    }

    /// A place for a new connection from `client`, or why not.
    pub fn admit(&self, client: IpAddr) -> Result<Place, Refusal> {
        let (guard, held) = self.by_client.incr(client, 1);
        if held as usize > self.per_client {
            self.refused_per_client.inc();
            return Err(Refusal::PerClient);
        }
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max && !self.shed_one() {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.refused_full.inc();
            return Err(Refusal::Full);
        }
        self.gauge.inc();
        let slot = Arc::new(Slot::default());
        let key = lock(&self.slots).insert(slot.clone());
        Ok(Place {
            open: self.open.clone(),
            _client: guard,
            gauge: self.gauge.clone(),
            slot,
            key,
            slots: self.slots.clone(),
            epoch: self.epoch,
        })
    }

    /// Connections held now, as the shedding list sees them.
    pub fn held(&self) -> usize {
        lock(&self.slots).len()
    }

    /// Tells the connection that has waited longest for a request header
    /// (at least [`SHED_AFTER`]) to close; false if none qualifies. The
    /// newcomer takes its place at once, so the count may run one over the cap
    /// until the shed connection is gone.
    fn shed_one(&self) -> bool {
        let Some(cutoff) = self.epoch.elapsed().checked_sub(SHED_AFTER) else {
            return false;
        };
        let limit = cutoff.as_millis() as u64 + 1;
        let slots = lock(&self.slots);
        let mut waiting: Vec<(u64, &Arc<Slot>)> = slots
            .iter()
            .map(|(_, s)| (s.waiting_since.load(Ordering::Acquire), s))
            .filter(|(since, _)| *since != 0 && *since != SHED && *since <= limit)
            .collect();
        waiting.sort_unstable_by_key(|(since, _)| *since);
        // The longest waiting first; one that turned busy meanwhile keeps
        // its place (the exchange fails) and the next is asked.
        for (since, slot) in waiting {
            let told = slot.waiting_since.compare_exchange(
                since,
                SHED,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            if told.is_ok() {
                slot.wake.notify_one();
                self.shed_total.inc();
                return true;
            }
        }
        false
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// The client address of an accepted connection, if it has one.
pub fn client_of(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    // `::ffff:a.b.c.d` is the IPv4 client a.b.c.d, however it connected.
    digest.peer_addr()?.as_inet().map(|a| a.ip().to_canonical())
}

/// Raises the descriptor limit as far as allowed and returns the connection
/// cap it can carry: each client connection may pair with an upstream one, and
/// [`RESERVE`] stay free. `wanted` is the configured cap.
pub fn fit_descriptor_limit(wanted: usize, set: bool) -> usize {
    let need = wanted as u64 * 2 + RESERVE;
    let limit = match rlimit::increase_nofile_limit(need) {
        Ok(l) => l,
        Err(e) => {
            log::warn!("could not raise the open-file limit: {e}");
            return wanted;
        }
    };
    let fits = (limit.saturating_sub(RESERVE) / 2) as usize;
    if fits < wanted {
        // Only news when the operator asked for more than fits; the
        // default is simply sized to the machine.
        let why = format!(
            "lb.limits.max_connections {wanted} needs {need} open files, the limit is {limit}: \
             capping client connections at {fits}"
        );
        if set {
            log::warn!("{why} (raise LimitNOFILE / ulimit -n)");
        } else {
            log::info!("{why} (the default, sized to this machine)");
        }
        fits.max(1)
    } else {
        wanted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn caps_apply_overall_and_per_client_and_places_come_back() {
        let m = Metrics::new();
        let a = Admission::new("proxy", 3, 2, &m);
        let p1 = a.admit(ip(1)).unwrap();
        let _p2 = a.admit(ip(1)).unwrap();
        assert_eq!(a.admit(ip(1)).err(), Some(Refusal::PerClient));
        let _p3 = a.admit(ip(2)).unwrap();
        assert_eq!(a.admit(ip(3)).err(), Some(Refusal::Full));
        assert_eq!(a.open(), 3);
        drop(p1);
        assert_eq!(a.open(), 2);
        let _p4 = a.admit(ip(3)).unwrap();
        let text = m.render();
        assert!(
            text.contains("hlb_connections{listener=\"proxy\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(
                "hlb_connections_refused_total{listener=\"proxy\",reason=\"per_client\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn when_full_the_longest_waiting_connection_is_shed_for_a_newcomer() {
        let m = Metrics::new();
        let a = Admission::new("proxy", 2, 2, &m);
        let busy = a.admit(ip(1)).unwrap();
        let idle = a.admit(ip(2)).unwrap();
        busy.busy();
        idle.waiting();
        // Waiting, but not for long enough yet: refused.
        assert_eq!(a.admit(ip(3)).err(), Some(Refusal::Full));
        // Pretend it has waited past SHED_AFTER.
        idle.slot.waiting_since.store(1, Ordering::Relaxed);
        std::thread::sleep(SHED_AFTER + Duration::from_millis(20));
        let newcomer = a.admit(ip(3)).unwrap();
        // The idle connection was told to go; the busy one was not.
        assert!(futures_util::FutureExt::now_or_never(idle.slot.shed()).is_some());
        assert!(futures_util::FutureExt::now_or_never(busy.slot.shed()).is_none());
        // Shed, it closes at its next idle point even if a request came.
        idle.busy();
        assert!(!idle.waiting());
        drop((idle, newcomer));
        assert!(m
            .render()
            .contains("hlb_connections_refused_total{listener=\"proxy\",reason=\"shed\"} 1"));
    }

    #[test]
    fn a_connection_that_turned_busy_is_not_shed_later_by_a_stale_wake() {
        let m = Metrics::new();
        let a = Admission::new("proxy", 1, 2, &m);
        let p = a.admit(ip(1)).unwrap();
        assert!(p.waiting());
        p.busy();
        // A wake with no shed behind it (as a stale permit would be).
        p.slot.wake.notify_one();
        assert!(futures_util::FutureExt::now_or_never(p.slot.shed()).is_none());
        assert!(p.waiting(), "still in good standing");
    }

    #[test]
    fn places_given_back_leave_nothing_behind() {
        let m = Metrics::new();
        let a = Admission::new("proxy", 10, 10, &m);
        for _ in 0..10_000 {
            let p = a.admit(ip(1)).unwrap();
            p.waiting();
        }
        assert_eq!(a.held(), 0, "every closed connection left the list");
        let kept: Vec<Place> = (0..3).map(|_| a.admit(ip(2)).unwrap()).collect();
        assert_eq!(a.held(), 3);
        drop(kept);
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn the_cap_fits_the_descriptor_limit() {
        // Whatever the machine allows, the cap leaves room for upstreams and
        // the reserve.
        let cap = fit_descriptor_limit(1_000_000_000, true);
        let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        assert!(
            cap as u64 * 2 + RESERVE <= soft.max(RESERVE + 2),
            "{cap} vs {soft}"
        );
        assert_eq!(fit_descriptor_limit(10, false), 10);
    }
}
