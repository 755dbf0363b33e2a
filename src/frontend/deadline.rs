//! A connection's deadline for its next request header, with one timer kept
//! across its requests.
//!
//! Every request moves the deadline (to its end plus the keep-alive and
//! header allowances), and a timer per request would cost a registration
//! each time. So the timer set for an earlier deadline is kept; when it fires
//! before the current deadline, it is set again for that. A connection busy
//! with requests re-arms about once per keep-alive period, not per request.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

type Timer = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Pingora's fast timer: registering one costs no system call (a tokio timer
/// wakes the I/O driver through an eventfd write), and the deadline needs no
/// finer grain than its 10 ms.
fn timer(at: Instant) -> Timer {
    let left = at.saturating_duration_since(Instant::now());
    Box::pin(pingora::prelude::fast_timeout::fast_sleep(left))
}

/// The timer, and the instant it was set for.
#[derive(Default)]
pub struct Deadline {
    armed: Option<(Instant, Timer)>,
}

impl Deadline {
    /// Ready once `deadline` has passed. Deadlines only move later on a
    /// connection, so a timer set earlier fires early, never late.
    pub fn poll(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let (at, t) = self
                .armed
                .get_or_insert_with(|| (deadline, timer(deadline)));
            ready!(t.as_mut().poll(cx));
            let passed = *at >= deadline;
            self.armed = None;
            if passed {
                return Poll::Ready(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    // Pingora's fast timer runs on a clock of its own: real time, short
    // deadlines.

    #[tokio::test]
    async fn a_timer_set_for_an_earlier_deadline_is_set_again_for_the_later_one() {
        let mut d = Deadline::default();
        let start = Instant::now();
        let early = start + Duration::from_millis(30);
        // Armed for `early`, not yet due.
        assert!(poll_fn(|cx| Poll::Ready(d.poll(early, cx).is_pending())).await);
        let later = start + Duration::from_millis(200);
        poll_fn(|cx| d.poll(later, cx)).await;
        assert!(
            Instant::now() >= later,
            "fired only once the later deadline passed"
        );
    }

    #[tokio::test]
    async fn a_deadline_that_has_passed_is_ready() {
        let mut d = Deadline::default();
        let past = Instant::now();
        poll_fn(|cx| d.poll(past, cx)).await;
    }
}
