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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::protocols::ALPN;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntCounterVec};
use tokio::sync::oneshot;

use crate::answer_wait::AnswerWait;
use crate::connections::{self, Admission};
use crate::header_cap::HeaderCap;
use crate::header_clock::HeaderClock;
use crate::proxy::Proxy;
use crate::state::SharedState;
use crate::tls::listener::TlsListener;

pub struct Frontend {
    proxy: Arc<HttpProxy<Proxy>>,
    admission: Admission,
    /// How long a request header may take to arrive whole.
    header_timeout: Duration,
    /// How long a keep-alive connection may idle before its next request.
    keepalive_timeout: Duration,
    /// How long a shed HTTP/2 connection's streams may take to finish.
    drain: Duration,
    header_timeouts: IntCounter,
    /// `lb.limits.max_header_bytes`, enforced while the header is read.
    max_header_bytes: usize,
    headers_too_large: IntCounter,
    /// The HTTPS listeners, if any.
    tls: Option<TlsListener>,
    /// HTTP/2 with prior knowledge on the plain listeners.
    h2c: bool,
    /// Connections by listener kind and protocol.
    protocols: IntCounterVec,
}

impl Frontend {
    pub fn new(
        proxy: HttpProxy<Proxy>,
        admission: Admission,
        tls: Option<TlsListener>,
        state: &SharedState,
    ) -> Self {
        let limits = &state.config.lb.limits;
        Frontend {
            tls,
            h2c: state.config.lb.h2c,
            protocols: state.metrics.downstream_connections_total.clone(),
            proxy: Arc::new(proxy),
            admission,
            header_timeout: limits.header_timeout,
            keepalive_timeout: limits.keepalive_timeout,
            drain: state.config.lb.timeouts.read,
            header_timeouts: state.metrics.header_timeouts_total.clone(),
            max_header_bytes: limits.max_header_bytes as usize,
            headers_too_large: state.metrics.headers_too_large_total.clone(),
        }
    }
}

/// How one request's processing ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended<T> {
    Done(T),
    /// Its header did not arrive whole in time, or the connection was shed.
    HeaderLate,
}

/// Runs `request` (one request's whole processing), but drops it (closing the
/// connection) if `arrived` has not fired within `deadline`, or if the
/// connection is told to make room (`shed`) before it has. Once the header is
/// in, an upgrade request's wait for its answer (`answer`) is kept to its
/// bound meanwhile.
async fn with_header_deadline<T>(
    request: impl Future<Output = T>,
    arrived: oneshot::Receiver<()>,
    deadline: Duration,
    shed: impl Future<Output = ()>,
    answer: &AnswerWait,
    on_arrival: impl FnOnce(),
) -> Ended<T> {
    tokio::pin!(request);
    tokio::select! {
        biased;
        out = &mut request => return Ended::Done(out),
        // Fired, or dropped because the request ended: no more deadline.
        _ = arrived => on_arrival(),
        // Pingora's fast timer: registering it costs no system call (a
        // tokio timer wakes the I/O driver through an eventfd write on every
        // request), and the deadline needs no finer grain than its 10 ms.
        _ = pingora::prelude::fast_timeout::fast_sleep(deadline) => return Ended::HeaderLate,
        _ = shed => return Ended::HeaderLate,
    }
    tokio::select! {
        biased;
        out = &mut request => return Ended::Done(out),
        // Cut: the proxy's read ends, and it answers 504.
        _ = answer.cut_when_due() => {}
    }
    Ended::Done(request.await)
}

/// What an HTTP/2 client with prior knowledge sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Frontend {
    /// Whether the connection speaks HTTP/2: by ALPN on TLS, or by the h2c
    /// preface on a plain listener with `lb.h2c` (the preface is peeked, not
    /// read, so an HTTP/1.1 client is served as usual). `None` if the client
    /// went away or sent nothing within the header timeout.
    async fn speaks_h2(&self, stream: &mut Stream) -> Option<bool> {
        if stream.get_ssl_digest().is_some() {
            return Some(matches!(stream.selected_alpn_proto(), Some(ALPN::H2)));
        }
        if !self.h2c {
            return Some(false);
        }
        let mut buf = [0u8; H2_PREFACE.len()];
        match tokio::time::timeout(self.header_timeout, stream.try_peek(&mut buf)).await {
            Ok(Ok(true)) => Some(buf == *H2_PREFACE),
            Ok(Ok(false)) => Some(false),
            Ok(Err(_)) => None,
            Err(_) => {
                self.header_timeouts.inc();
                None
            }
        }
    }
}

#[async_trait]
impl ServerApp for Frontend {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let out = self.serve(stream, shutdown).await;
        crate::memory::after_connection();
        out
    }

    async fn cleanup(&self) {
        // The listeners are closed: let connections just accepted deliver the
        // request already on its way, then cut those still waiting.
        tokio::time::sleep(crate::lifecycle::CLOSE_LINGER).await;
        self.proxy.http_cleanup().await;
    }
}

impl Frontend {
    /// One HTTP/2 connection. Shed (or the process stopping), it gets a
    /// GOAWAY: no new streams, and those in flight finish, within
    /// `timeouts.read`, before it closes.
    async fn serve_h2(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
        shed: impl Future<Output = ()>,
    ) -> Option<Stream> {
        let (tx, own) = tokio::sync::watch::channel(*shutdown.borrow());
        let serve = ServerApp::process_new(&self.proxy, stream, &own);
        tokio::pin!(serve);
        let mut process = shutdown.clone();
        tokio::select! {
            out = &mut serve => return out,
            _ = shed => {}
            _ = process.changed() => {}
        }
        let _ = tx.send(true);
        tokio::time::timeout(self.drain, serve).await.ok().flatten()
    }

    /// One client connection, from admission to its last request.
    async fn serve(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let place = match connections::client_of(&stream).map(|ip| self.admission.admit(ip)) {
            Some(Ok(place)) => Some(place),
            Some(Err(why)) => {
                log::debug!("connection refused: {why:?}");
                return None;
            }
            None => None,
        };
        let shed = || async {
            match &place {
                Some(p) => p.slot.shed().await,
                None => std::future::pending().await,
            }
        };
        // Until a request is under way the connection may be shed for a
        // newcomer when the cap is full: a silent client, one stalling its
        // TLS handshake or h2c preface, cannot hold a place for long.
        if let Some(p) = &place {
            p.waiting();
        }
        let (stream, listener) = match &self.tls {
            Some(tls) if tls.serves(&stream) => {
                // Boxed: a TLS handshake's state is kilobytes, and held
                // inline it would make every plain connection's task as big.
                let handshake = Box::pin(tls.handshake(stream, self.header_timeout));
                tokio::select! {
                    s = handshake => (s?, "tls"),
                    _ = shed() => return None,
                }
            }
            _ => (stream, "plain"),
        };
        let mut stream = stream;
        let h2 = tokio::select! {
            h2 = self.speaks_h2(&mut stream) => h2?,
            _ = shed() => return None,
        };
        if h2 {
            // Pingora's own HTTP/2 server: streams are framed and bounded by
            // the h2 layer, so the HTTP/1 guards below do not apply. Its
            // requests are not visible here, so an HTTP/2 connection stays
            // sheddable for its whole life: under a full cap, the one held
            // longest gives way (its client reconnects).
            self.protocols.with_label_values(&[listener, "h2"]).inc();
            let out = self.serve_h2(stream, shutdown, shed()).await;
            drop(place);
            return out;
        }
        self.protocols.with_label_values(&[listener, "h1"]).inc();
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
        let answer = Arc::new(AnswerWait::default());
        loop {
            let (tx, rx) = oneshot::channel();
            let carried = session.take_connection_user_context();
            cap.next_request();
            session.set_connection_user_context(Some(Box::new(HeaderClock {
                arrived: tx,
                cap: cap.clone(),
                carried,
                answer: answer.clone(),
            })));
            if place.as_ref().is_some_and(|p| !p.waiting()) {
                // Shed during its last request: its place is promised.
                return None;
            }
            let result = match with_header_deadline(
                self.proxy.process_new_http(session, shutdown),
                rx,
                deadline,
                shed(),
                &answer,
                || {
                    if let Some(p) = &place {
                        p.busy();
                    }
                },
            )
            .await
            {
                Ended::Done(result) => result,
                Ended::HeaderLate => {
                    self.header_timeouts.inc();
                    log::debug!("request header not whole within {deadline:?}: connection closed");
                    return None;
                }
            };
            let (stream, persistent) = result?.consume();
            session = ServerSession::new_http1(stream);
            if let Some(settings) = persistent {
                settings.apply_to_session(&mut session);
            }
            deadline = self.keepalive_timeout + self.header_timeout;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pingora's fast timer runs on a clock of its own: these use real time,
    // with short deadlines.

    /// Runs `request` with a 100 ms header deadline, never shed.
    async fn within_100ms<T>(
        request: impl Future<Output = T>,
        arrived: oneshot::Receiver<()>,
    ) -> Ended<T> {
        let answer = AnswerWait::default();
        let deadline = Duration::from_millis(100);
        with_header_deadline(
            request,
            arrived,
            deadline,
            std::future::pending(),
            &answer,
            || {},
        )
        .await
    }

    #[tokio::test]
    async fn a_header_that_never_completes_is_cut_at_the_deadline() {
        let (_tx, rx) = oneshot::channel::<()>();
        let out = within_100ms(std::future::pending::<()>(), rx).await;
        assert_eq!(out, Ended::HeaderLate);
    }

    #[tokio::test]
    async fn once_the_header_is_in_the_request_may_take_its_time() {
        let (tx, rx) = oneshot::channel::<()>();
        let slow = async move {
            tx.send(()).unwrap();
            tokio::time::sleep(Duration::from_millis(400)).await;
            7
        };
        assert_eq!(within_100ms(slow, rx).await, Ended::Done(7));
    }

    #[tokio::test]
    async fn a_connection_waiting_for_its_header_can_be_shed() {
        let (_tx, rx) = oneshot::channel::<()>();
        let never = std::future::pending::<()>();
        let shed = std::future::ready(());
        let answer = AnswerWait::default();
        let out =
            with_header_deadline(never, rx, Duration::from_secs(10), shed, &answer, || {}).await;
        assert_eq!(out, Ended::HeaderLate);
    }
}
