//! Requests in flight by client address: at most
//! `lb.limits.max_connections_per_client` at once, each HTTP/2 stream counted
//! as one request, so a client cannot hold more upstream connections through
//! a few multiplexed connections than it could through as many HTTP/1.1 ones.
//! Counted with pingora-limits' `Inflight` estimator: memory stays flat
//! however many addresses there are.

use std::fmt;
use std::net::IpAddr;

use pingora_limits::inflight::{Guard, Inflight};
use prometheus::IntCounter;

/// Counts the requests each client has in flight.
pub struct ClientRequests {
    by_client: Inflight,
    cap: usize,
    refused: IntCounter,
}

/// One request's place; dropping it (with the request's context) gives it back.
pub struct Held(#[allow(dead_code)] Guard);

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Held")
    }
}

impl ClientRequests {
    pub fn new(cap: usize, refused: IntCounter) -> Self {
        ClientRequests {
            by_client: Inflight::new(),
            cap,
            refused,
        }
    }

    /// A place for one more request from `client`, or None (counted) when it
    /// has `cap` in flight already.
    pub fn admit(&self, client: IpAddr) -> Option<Held> {
        let (guard, held) = self.by_client.incr(client, 1);
        if held as usize > self.cap {
            self.refused.inc();
            return None;
        }
        Some(Held(guard))
    }
}

impl fmt::Debug for ClientRequests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientRequests {{ cap: {} }}", self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_at_most_its_cap_and_places_come_back() {
        let refused = IntCounter::new("t", "t").unwrap();
        let c = ClientRequests::new(2, refused.clone());
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let first = c.admit(a).unwrap();
        let _second = c.admit(a).unwrap();
        assert!(c.admit(a).is_none());
        assert!(c.admit(b).is_some(), "another client is not held back");
        drop(first);
        assert!(c.admit(a).is_some());
        assert_eq!(refused.get(), 1);
    }
}
