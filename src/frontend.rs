//! The proxy's connection loop: Pingora's HTTP/1 loop for a plain listener,
//! with two guards in front.
//!
//! - Admission: over `lb.limits.max_connections` (or the per-client cap) a new
//!   connection is closed before anything is read from it.
//! - The header clock: a request header must arrive whole within
//!   `lb.limits.header_timeout` (nginx's `client_header_timeout`, HAProxy's
//!   `timeout http-request`), counted from the connection's start for its first
//!   request and from the end of the previous one (plus the keep-alive idle
//!   allowance) for the next. Pingora's own timers are per read, so a client
//!   trickling a byte at a time could otherwise hold a connection forever. The
//!   proxy reports "header read" through the connection's user context.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use prometheus::IntCounter;
use tokio::sync::oneshot;

use crate::connections::{self, Admission};
use crate::header_cap::{Arming, HeaderCap};
use crate::proxy::Proxy;
use crate::state::SharedState;

/// Rides in the connection's user context into the proxy, which fires it as
/// soon as the request header has been read; carries on whatever context the
/// previous request on the connection left.
pub struct HeaderClock {
    arrived: oneshot::Sender<()>,
    cap: Arming,
    carried: Option<Box<dyn Any + Send + Sync>>,
}

impl HeaderClock {
    /// The request header is in: stops the clock and the header cap, and
    /// hands back what the previous request left.
    pub fn header_in(self) -> Option<Box<dyn Any + Send + Sync>> {
        self.cap.header_in();
        let _ = self.arrived.send(());
        self.carried
    }
}

pub struct Frontend {
    proxy: Arc<HttpProxy<Proxy>>,
    admission: Admission,
    /// How long a request header may take to arrive whole.
    header_timeout: Duration,
    /// How long a keep-alive connection may idle before its next request.
    keepalive_timeout: Duration,
    header_timeouts: IntCounter,
    /// `lb.limits.max_header_bytes`, enforced while the header is read.
    max_header_bytes: usize,
    headers_too_large: IntCounter,
}

impl Frontend {
    pub fn new(proxy: HttpProxy<Proxy>, admission: Admission, state: &SharedState) -> Self {
        let limits = &state.config.lb.limits;
        Frontend {
            proxy: Arc::new(proxy),
            admission,
            header_timeout: limits.header_timeout,
            keepalive_timeout: limits.keepalive_timeout,
            header_timeouts: state.metrics.header_timeouts_total.clone(),
            max_header_bytes: limits.max_header_bytes as usize,
            headers_too_large: state.metrics.headers_too_large_total.clone(),
        }
    }
}

/// Runs `request` (one request's whole processing), but drops it (closing the
/// connection) if `arrived` has not fired within `deadline`, or if the
/// connection is told to make room (`shed`) before it has.
async fn with_header_deadline<T>(
    request: impl Future<Output = T>,
    arrived: oneshot::Receiver<()>,
    deadline: Duration,
    shed: &tokio::sync::Notify,
    on_arrival: impl FnOnce(),
) -> Option<T> {
    tokio::pin!(request);
    tokio::select! {
        biased;
        out = &mut request => return Some(out),
        // Fired, or dropped because the request ended: no more deadline.
        _ = arrived => on_arrival(),
        _ = tokio::time::sleep(deadline) => return None,
        _ = shed.notified() => return None,
    }
    Some(request.await)
}

#[async_trait]
impl ServerApp for Frontend {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let place = match connections::client_of(&stream).map(|ip| self.admission.admit(ip)) {
            Some(Ok(place)) => Some(place),
            Some(Err(why)) => {
                log::debug!("connection refused: {why:?}");
                return None;
            }
            None => None,
        };
        let no_shed = tokio::sync::Notify::new();
        let shed = place.as_ref().map_or(&no_shed, |p| &p.slot.shed);
        let (stream, cap) = HeaderCap::wrap(
            stream,
            self.max_header_bytes,
            self.headers_too_large.clone(),
        );
        let mut session = ServerSession::new_http1(stream);
        // Pipelined requests (RFC 9112 §9.3.2) are answered one after the
        // other, in order; the setting carries over to the connection's next
        // requests.
        session.set_pipelining_enabled(true);
        let secs = self.header_timeout.as_secs().max(1);
        session.set_keepalive((!*shutdown.borrow()).then_some(secs));
        let mut deadline = self.header_timeout;
        loop {
            let (tx, rx) = oneshot::channel();
            let carried = session.take_connection_user_context();
            cap.next_request();
            session.set_connection_user_context(Some(Box::new(HeaderClock {
                arrived: tx,
                cap: cap.clone(),
                carried,
            })));
            if let Some(p) = &place {
                p.waiting();
            }
            let Some(result) = with_header_deadline(
                self.proxy.process_new_http(session, shutdown),
                rx,
                deadline,
                shed,
                || {
                    if let Some(p) = &place {
                        p.busy();
                    }
                },
            )
            .await
            else {
                self.header_timeouts.inc();
                log::debug!("request header not whole within {deadline:?}: connection closed");
                return None;
            };
            let (stream, persistent) = result?.consume();
            session = ServerSession::new_http1(stream);
            if let Some(settings) = persistent {
                settings.apply_to_session(&mut session);
            }
            deadline = self.keepalive_timeout + self.header_timeout;
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_header_that_never_completes_is_cut_at_the_deadline() {
        let (_tx, rx) = oneshot::channel::<()>();
        let never = std::future::pending::<()>();
        let shed = tokio::sync::Notify::new();
        let out = with_header_deadline(never, rx, Duration::from_secs(10), &shed, || {}).await;
        assert!(out.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn once_the_header_is_in_the_request_may_take_its_time() {
        let (tx, rx) = oneshot::channel::<()>();
        let slow = async move {
            tx.send(()).unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            7
        };
        let shed = tokio::sync::Notify::new();
        let out = with_header_deadline(slow, rx, Duration::from_secs(10), &shed, || {}).await;
        assert_eq!(out, Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_waiting_for_its_header_can_be_shed() {
        let (_tx, rx) = oneshot::channel::<()>();
        let shed = tokio::sync::Notify::new();
        shed.notify_one();
        let never = std::future::pending::<()>();
        let out = with_header_deadline(never, rx, Duration::from_secs(10), &shed, || {}).await;
        assert!(out.is_none());
    }
}
