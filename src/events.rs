//! The events timeline: health flips, breaker transitions, admin actions,
//! membership changes and reloads, kept in a bounded ring for the dashboard.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Something that happened, for the events timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub time: f64,
    /// The upstream concerned, if any.
    pub upstream: Option<String>,
    /// `health`, `breaker`, `admin`, `upstreams`, `reload`, …
    pub kind: &'static str,
    pub detail: String,
}

/// How many events are kept.
pub const EVENTS_KEPT: usize = 500;

/// A bounded ring of events, newest last. Events are rare (state changes, not
/// requests), so a mutex is the simple and right tool.
#[derive(Debug)]
pub struct Events {
    ring: Mutex<VecDeque<Event>>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            ring: Mutex::new(VecDeque::with_capacity(EVENTS_KEPT)),
        }
    }
}

impl Events {
    pub fn push(&self, upstream: Option<&str>, kind: &'static str, detail: String) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == EVENTS_KEPT {
            ring.pop_front();
        }
        ring.push_back(Event {
            time: unix_time(),
            upstream: upstream.map(str::to_string),
            kind,
            detail,
        });
    }

    /// Events, newest first.
    pub fn newest_first(&self) -> Vec<Event> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().rev().cloned().collect()
    }
}

/// Seconds since the Unix epoch, with milliseconds.
pub fn unix_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_bounded_and_reads_newest_first() {
        let events = Events::default();
        for i in 0..EVENTS_KEPT + 10 {
            events.push(None, "admin", format!("{i}"));
        }
        let all = events.newest_first();
        assert_eq!(all.len(), EVENTS_KEPT);
        assert_eq!(all[0].detail, format!("{}", EVENTS_KEPT + 9));
        assert_eq!(all[EVENTS_KEPT - 1].detail, "10");
    }
}
