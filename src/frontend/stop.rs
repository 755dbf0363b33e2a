//! A connection's "close now" (shed for a newcomer, or the process stopping),
//! checked on every wait for a request header at the cost of two loads.
//!
//! The wait on it is registered once, by its first poll, and kept for the
//! connection's life; after that a look at the flags tells whether it has
//! fired, since both are set before anyone is woken.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pub struct Stop<'a, F, C> {
    wait: Pin<&'a mut F>,
    /// Whether the signal has been given (the flags behind the wait).
    given: C,
    registered: bool,
}

impl<'a, F: Future<Output = ()>, C: Fn() -> bool> Stop<'a, F, C> {
    pub fn new(wait: Pin<&'a mut F>, given: C) -> Self {
        Stop {
            wait,
            given,
            registered: false,
        }
    }

    /// Ready once the connection should close.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if (self.given)() {
            return Poll::Ready(());
        }
        if self.registered {
            // Woken only when a flag is set: nothing else to look at.
            return Poll::Pending;
        }
        self.registered = true;
        self.wait.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::sync::Notify;

    #[tokio::test]
    async fn a_stop_given_after_registering_wakes_the_waiter() {
        let (flag, notify) = (Arc::new(AtomicBool::new(false)), Arc::new(Notify::new()));
        let waiter = tokio::spawn({
            let (flag, notify) = (flag.clone(), notify.clone());
            async move {
                let wait = std::pin::pin!(notify.notified());
                let mut stop = Stop::new(wait, || flag.load(Ordering::Acquire));
                poll_fn(|cx| stop.poll(cx)).await;
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        flag.store(true, Ordering::Release);
        notify.notify_waiters();
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
