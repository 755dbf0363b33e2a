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
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use pingora::protocols::Stream;
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

/// One held connection as the admission sees it.
#[derive(Debug, Default)]
pub struct Slot {
    /// When it started waiting for a request header (milliseconds since the
    /// admission's epoch, plus one); 0 while a request is in progress.
    waiting_since: AtomicU64,
    /// Woken to close the connection and give its place to a newcomer.
    pub shed: Notify,
}

/// Counts client connections and admits or refuses new ones.
pub struct Admission {
    /// Held connections that could be shed under pressure.
    slots: Mutex<Vec<Weak<Slot>>>,
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
    epoch: Instant,
}

impl Place {
    /// The connection now waits for a request header: it may be shed.
    pub fn waiting(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64 + 1;
        self.slot.waiting_since.store(ms, Ordering::Relaxed);
    }

    /// A request is in progress: it is not shed.
    pub fn busy(&self) {
        self.slot.waiting_since.store(0, Ordering::Relaxed);
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

impl Admission {
    /// Caps for the listener called `listener` in the metrics.
    pub fn new(listener: &str, max: usize, per_client: usize, metrics: &Metrics) -> Self {
        Admission {
            slots: Mutex::new(Vec::new()),
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
        self.lock_slots().push(Arc::downgrade(&slot));
        Ok(Place {
            open: self.open.clone(),
            _client: guard,
            gauge: self.gauge.clone(),
            slot,
            epoch: self.epoch,
        })
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Slot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
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
        let mut slots = self.lock_slots();
        slots.retain(|w| w.strong_count() > 0);
        let oldest = slots
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|s| {
                let since = s.waiting_since.load(Ordering::Relaxed);
                since != 0 && since <= limit
            })
            .min_by_key(|s| s.waiting_since.load(Ordering::Relaxed));
        match oldest {
            Some(slot) => {
                slot.waiting_since.store(0, Ordering::Relaxed);
                slot.shed.notify_one();
                self.shed_total.inc();
                true
            }
            None => false,
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// The client address of an accepted connection, if it has one.
pub fn client_of(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr()?.as_inet().map(|a| a.ip())
}

/// Raises the descriptor limit as far as allowed and returns the connection
/// cap it can carry: each client connection may pair with an upstream one, and
/// [`RESERVE`] stay free. `wanted` is the configured cap.
pub fn fit_descriptor_limit(wanted: usize) -> usize {
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
        log::warn!(
            "lb.limits.max_connections {wanted} needs {need} open files, the limit is {limit}: \
             capping client connections at {fits} (raise LimitNOFILE / ulimit -n)"
        );
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
        assert!(futures_util::FutureExt::now_or_never(idle.slot.shed.notified()).is_some());
        assert!(futures_util::FutureExt::now_or_never(busy.slot.shed.notified()).is_none());
        drop((idle, newcomer));
        assert!(m.render().contains("reason=\"shed\"} 1"));
    }

    #[test]
    fn the_cap_fits_the_descriptor_limit() {
        // Whatever the machine allows, the cap leaves room for upstreams and
        // the reserve.
        let cap = fit_descriptor_limit(1_000_000_000);
        let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        assert!(
            cap as u64 * 2 + RESERVE <= soft.max(RESERVE + 2),
            "{cap} vs {soft}"
        );
        assert_eq!(fit_descriptor_limit(10), 10);
    }
}
