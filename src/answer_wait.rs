//! The wait for an upgrade request's answer. Pingora keeps one read timeout
//! for the life of an upstream connection, and an upgrade request's must let
//! the tunnel idle up to `limits.keepalive_timeout`; so the wait for its
//! answer's header is bounded here instead, by `timeouts.read`. The proxy
//! arms it as the request goes upstream and lifts it when the header comes;
//! the frontend, which runs the request, cuts the upstream connection's
//! reading side when it runs out, and the proxy then answers 504 and counts
//! the upstream's silence as a timeout, as for any other request.

use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

/// One connection's wait for the answer to its current request.
#[derive(Debug, Default)]
pub struct AnswerWait {
    /// Until when, and the upstream connection's socket, while armed.
    armed: Mutex<Option<(Instant, RawFd)>>,
    changed: Notify,
    /// The wait ran out and the connection was cut.
    ran_out: AtomicBool,
}

impl AnswerWait {
    fn lock(&self) -> MutexGuard<'_, Option<(Instant, RawFd)>> {
        self.armed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The request went out on the upstream socket `fd`: its answer must
    /// begin by `until`.
    pub fn arm(&self, until: Instant, fd: RawFd) {
        self.ran_out.store(false, Ordering::Relaxed);
        *self.lock() = Some((until, fd));
        self.changed.notify_one();
    }

    /// The answer began, or the try ended: no more deadline. Lifted under
    /// the lock, so the socket is never cut once the try has let it go.
    pub fn lift(&self) {
        if self.lock().take().is_some() {
            self.changed.notify_one();
        }
    }

    /// Whether the wait ran out (and so the try failed by timing out);
    /// asked once.
    pub fn take_ran_out(&self) -> bool {
        self.ran_out.swap(false, Ordering::Relaxed)
    }

    /// Waits until an armed wait runs out, then cuts the upstream socket's
    /// reading side: the proxy's read of the answer ends at once. Returns
    /// after a cut.
    pub async fn cut_when_due(&self) {
        loop {
            let armed = self.lock().map(|(t, _)| t);
            match armed {
                None => self.changed.notified().await,
                Some(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until.into()) => {
                            let mut guard = self.lock();
                            if let Some((t, fd)) = *guard {
                                if t == until {
                                    guard.take();
                                    self.ran_out.store(true, Ordering::Relaxed);
                                    // The try still holds the socket (it is
                                    // armed): shutting down does not close it.
                                    // SAFETY: shutdown(2) on a descriptor the
                                    // proxy holds open for this request.
                                    unsafe { libc::shutdown(fd, libc::SHUT_RD) };
                                    return;
                                }
                            }
                        }
                        _ = self.changed.notified() => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::io::AsRawFd;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn an_armed_wait_cuts_the_socket_and_a_lifted_one_never_does() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _server = listener.accept().unwrap();
        let w = std::sync::Arc::new(AnswerWait::default());
        // Lifted before its time: nothing, however long.
        w.arm(Instant::now() + Duration::from_secs(1), client.as_raw_fd());
        let waiter = tokio::spawn({
            let w = w.clone();
            async move { w.cut_when_due().await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        w.lift();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiter.is_finished());
        assert!(!w.take_ran_out());
        // Armed and left: the reading side is cut when it runs out.
        w.arm(Instant::now() + Duration::from_secs(1), client.as_raw_fd());
        tokio::time::sleep(Duration::from_secs(2)).await;
        waiter.await.unwrap();
        assert!(w.take_ran_out());
        let mut buf = [0u8; 8];
        assert_eq!(client.read(&mut buf).unwrap(), 0, "reads end at once");
    }
}
