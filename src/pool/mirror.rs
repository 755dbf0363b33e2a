//! Copies of a pool's client requests, to measure its sidelined upstreams on
//! the real request path: a service slowed by its database often still
//! answers `/health` at once, so health checks alone would bring it back.
//!
//! The request path offers its request; a copy is kept at most twice a
//! second, and only while some upstream is sidelined (one atomic load
//! otherwise). Only requests that may be sent again are copied: GET, HEAD
//! or OPTIONS, with no body and no upgrade. The probe service sends the copy
//! to each sidelined upstream and discards the answer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::Method;
use pingora::http::RequestHeader;

/// At most one copy taken per this long (so at most two a second).
const EVERY: Duration = Duration::from_millis(500);

/// A copy older than this is not sent: the traffic it stands for may have
/// changed.
const FRESH: Duration = Duration::from_secs(10);

/// Hop-by-hop and framing headers the copy goes without.
const DROPPED: [&str; 7] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "proxy-connection",
];

#[derive(Debug)]
pub struct Mirror {
    epoch: Instant,
    /// Whether any upstream of the pool is sidelined.
    wanted: AtomicBool,
    /// When the last copy was taken: milliseconds since `epoch`, plus one.
    taken_ms: AtomicU64,
    copy: Mutex<Option<(Instant, RequestHeader)>>,
}

impl Default for Mirror {
    fn default() -> Self {
        Mirror {
            epoch: Instant::now(),
            wanted: AtomicBool::new(false),
            taken_ms: AtomicU64::new(0),
            copy: Mutex::new(None),
        }
    }
}

/// Whether `req` may be copied: sent again, by someone else, with no harm.
pub fn mirrorable(req: &RequestHeader) -> bool {
    let safe = matches!(req.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let h = &req.headers;
    let body = h.contains_key(http::header::TRANSFER_ENCODING)
        || h.get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    safe && !body && !h.contains_key(http::header::UPGRADE)
}

impl Mirror {
    /// Whether copies are wanted (some upstream is sidelined).
    pub fn set_wanted(&self, wanted: bool) {
        self.wanted.store(wanted, Ordering::Relaxed);
        if !wanted {
            *self.lock() = None;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, RequestHeader)>> {
        self.copy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// On the request path: keeps a copy of `req` if one is wanted and due.
    pub fn offer(&self, req: &RequestHeader, now: Instant) {
        if !self.wanted.load(Ordering::Relaxed) {
            return;
        }
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        let last = self.taken_ms.load(Ordering::Relaxed);
        if last != 0 && ms < last + EVERY.as_millis() as u64 {
            return;
        }
        let claimed =
            self.taken_ms
                .compare_exchange(last, ms, Ordering::Relaxed, Ordering::Relaxed);
        if claimed.is_err() || !mirrorable(req) {
            return;
        }
        let mut copy = req.clone();
        for name in DROPPED {
            copy.remove_header(name);
        }
        *self.lock() = Some((now, copy));
    }

    /// The latest copy, if fresh at `now`; each copy is handed out once.
    pub fn take(&self, now: Instant) -> Option<RequestHeader> {
        self.lock()
            .take()
            .filter(|(at, _)| now.saturating_duration_since(*at) <= FRESH)
            .map(|(_, req)| req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/items?page=2", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn only_requests_that_may_be_sent_again_are_copied() {
        assert!(mirrorable(&req("GET", &[("host", "x")])));
        assert!(mirrorable(&req("HEAD", &[("content-length", "0")])));
        assert!(!mirrorable(&req("POST", &[])));
        assert!(!mirrorable(&req("PUT", &[])));
        assert!(!mirrorable(&req("DELETE", &[])));
        assert!(!mirrorable(&req("GET", &[("content-length", "3")])));
        assert!(!mirrorable(&req(
            "GET",
            &[("transfer-encoding", "chunked")]
        )));
        assert!(!mirrorable(&req("GET", &[("upgrade", "websocket")])));
    }

    #[test]
    fn a_copy_is_kept_only_when_wanted_at_most_twice_a_second_and_handed_out_once() {
        let m = Mirror::default();
        let t0 = Instant::now();
        let get = req("GET", &[("connection", "keep-alive"), ("accept", "*/*")]);
        m.offer(&get, t0);
        assert!(m.take(t0).is_none(), "not wanted");
        m.set_wanted(true);
        m.offer(&get, t0);
        let copy = m.take(t0).expect("a copy");
        assert_eq!(copy.uri, "/items?page=2");
        assert!(copy.headers.get("connection").is_none());
        assert!(copy.headers.get("accept").is_some());
        assert!(m.take(t0).is_none(), "handed out once");
        m.offer(&get, t0 + Duration::from_millis(100));
        assert!(m.take(t0).is_none(), "too soon after the last");
        let later = t0 + EVERY;
        m.offer(&get, later);
        assert!(m.take(later).is_some());
        m.offer(&get, later + EVERY);
        assert!(m.take(later + EVERY + FRESH + EVERY).is_none(), "stale");
    }
}
