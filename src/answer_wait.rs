//! The wait for an upgrade request's answer. Pingora keeps one read timeout
//! for the life of an upstream connection, and an upgrade request's must let
//! the tunnel idle up to `limits.keepalive_timeout`; so the wait for its
//! answer's header is bounded here instead, by `timeouts.read`. The proxy
//! arms it as the request goes upstream and lifts it when the header comes;
//! the frontend, which runs the request, cuts the upstream connection's
//! reading side when it runs out, and the proxy then answers 504 and counts
//! the upstream's silence as a timeout, as for any other request. Arming and
//! lifting happen while the frontend polls the request, so it reads the wait
//! after each poll and needs no wake-up of its own.

use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// One connection's wait for the answer to its current request.
#[derive(Debug, Default)]
pub struct AnswerWait {
    /// Until when, and the upstream connection's socket, while armed.
    armed: Mutex<Option<(Instant, RawFd)>>,
    /// Whether `armed` holds a wait: read after every poll of a request,
    /// and almost never set (upgrades only), so the lock is not taken then.
    is_armed: AtomicBool,
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
        self.is_armed.store(true, Ordering::Release);
    }

    /// The answer began, or the try ended: no more deadline. Lifted under
    /// the lock, so the socket is never cut once the try has let it go.
    pub fn lift(&self) {
        if self.is_armed.load(Ordering::Acquire) {
            self.lock().take();
            self.is_armed.store(false, Ordering::Release);
        }
    }

    /// Whether the wait ran out (and so the try failed by timing out);
    /// asked once.
    pub fn take_ran_out(&self) -> bool {
        self.ran_out.swap(false, Ordering::Relaxed)
    }

    /// Until when the answer is awaited, while armed.
    pub fn due(&self) -> Option<Instant> {
        if !self.is_armed.load(Ordering::Acquire) {
            return None;
        }
        self.lock().map(|(t, _)| t)
    }

    /// The wait armed until `until` ran out: cuts the upstream socket's
    /// reading side, so the proxy's read of the answer ends at once. False
    /// (and nothing done) if that wait was lifted or armed anew meanwhile.
    pub fn cut(&self, until: Instant) -> bool {
        let mut guard = self.lock();
        match *guard {
            Some((t, fd)) if t == until => {
                guard.take();
                self.is_armed.store(false, Ordering::Release);
                self.ran_out.store(true, Ordering::Relaxed);
                // The try still holds the socket (it is armed): shutting
                // down does not close it.
                // SAFETY: shutdown(2) on a descriptor the proxy holds open
                // for this request.
                unsafe { libc::shutdown(fd, libc::SHUT_RD) };
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::io::AsRawFd;
    use std::time::Duration;

    #[test]
    fn an_armed_wait_cuts_the_socket_and_a_lifted_one_never_does() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _server = listener.accept().unwrap();
        let w = AnswerWait::default();
        let t0 = Instant::now();
        // Lifted: nothing to cut.
        w.arm(t0, client.as_raw_fd());
        assert_eq!(w.due(), Some(t0));
        w.lift();
        assert_eq!(w.due(), None);
        assert!(!w.cut(t0));
        assert!(!w.take_ran_out());
        // Armed anew: the old deadline cuts nothing, the current one does.
        let t1 = t0 + Duration::from_secs(1);
        w.arm(t1, client.as_raw_fd());
        assert!(!w.cut(t0));
        assert!(w.cut(t1));
        assert!(w.take_ran_out());
        assert_eq!(w.due(), None);
        let mut buf = [0u8; 8];
        assert_eq!(client.read(&mut buf).unwrap(), 0, "reads end at once");
    }
}
