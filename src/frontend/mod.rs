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
//!
//! - The PROXY protocol (`lb.proxy_protocol`, see `proxy_header`): a trusted
//!   peer's header is read before admission, so the client it names is the
//!   one admitted; any other peer's connection is admitted first, then
//!   closed if it begins with a header.
//!
//! Each connection runs in a task of its own rather than in Pingora's accept
//! task (which holds its TLS handshake state inline, kilobytes, for the
//! connection's life), and between requests it holds only its socket (see
//! `idle`): an idle keep-alive connection costs a few kilobytes.

mod deadline;
mod idle;
pub mod proxy_header;
mod run;
mod stop;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::protocols::ALPN;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntCounterVec};
use tokio::sync::Notify;

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
    /// `lb.proxy_protocol.trusted`; None: off.
    proxy_protocol: Option<Vec<ipnet::IpNet>>,
    /// `hlb_proxy_protocol_total{result}`.
    proxy_headers: IntCounterVec,
    /// Trusted peers' connections whose header is being read (before
    /// admission), at most `max_connections`: a trusted proxy gone wrong
    /// cannot open more than the cap.
    reading_headers: AtomicUsize,
    max_connections: usize,
    /// Connections by listener kind and protocol.
    protocols: IntCounterVec,
    /// Set (and notified) once the listeners are closed and the connections
    /// waiting for a request should close.
    closing: AtomicBool,
    closed: Notify,
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
            proxy_protocol: state.config.lb.proxy_protocol.clone(),
            proxy_headers: state.metrics.proxy_protocol_total.clone(),
            reading_headers: AtomicUsize::new(0),
            max_connections: limits.max_connections,
            protocols: state.metrics.downstream_connections_total.clone(),
            proxy: Arc::new(proxy),
            admission,
            header_timeout: limits.header_timeout,
            keepalive_timeout: limits.keepalive_timeout,
            drain: state.config.lb.timeouts.read,
            header_timeouts: state.metrics.header_timeouts_total.clone(),
            max_header_bytes: limits.max_header_bytes as usize,
            headers_too_large: state.metrics.headers_too_large_total.clone(),
            closing: AtomicBool::new(false),
            closed: Notify::new(),
        }
    }

    /// Resolves once the connections waiting for a request should close.
    async fn closing(&self) {
        let notified = self.closed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.closing.load(Ordering::Acquire) {
            notified.await;
        }
    }
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
        let (me, shutdown) = (self.clone(), shutdown.clone());
        tokio::spawn(async move {
            me.serve(stream, &shutdown).await;
            crate::memory::after_connection();
        });
        None
    }

    async fn cleanup(&self) {
        // The listeners are closed: let connections just accepted deliver the
        // request already on its way, then cut those still waiting.
        tokio::time::sleep(crate::lifecycle::CLOSE_LINGER).await;
        self.closing.store(true, Ordering::Release);
        self.closed.notify_waiters();
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

    /// The start of a connection under the PROXY protocol, from a peer
    /// `trusted` to send a header or not: the connection to go on with, if
    /// any. Boxed: its buffer lives only while the header is read.
    async fn proxy_header(&self, stream: Stream, trusted: bool) -> Option<Stream> {
        let (stream, verdict) =
            Box::pin(proxy_header::read(stream, trusted, self.header_timeout)).await;
        if verdict != proxy_header::Verdict::Gone {
            self.proxy_headers
                .with_label_values(&[verdict.as_str()])
                .inc();
        }
        if !verdict.serves() {
            log::debug!(
                "connection closed: PROXY protocol header {}",
                verdict.as_str()
            );
        }
        stream
    }

    /// One client connection, from admission to its last request.
    async fn serve(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let trusted = self.proxy_protocol.as_ref().map(|nets| {
            connections::client_of(&stream).is_some_and(|ip| nets.iter().any(|n| n.contains(&ip)))
        });
        let stream = match trusted {
            Some(true) => {
                if self.reading_headers.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
                    self.reading_headers.fetch_sub(1, Ordering::AcqRel);
                    self.proxy_headers.with_label_values(&["full"]).inc();
                    return None;
                }
                let read = self.proxy_header(stream, true).await;
                self.reading_headers.fetch_sub(1, Ordering::AcqRel);
                read?
            }
            _ => stream,
        };
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
        let stream = match trusted {
            Some(false) => tokio::select! {
                s = self.proxy_header(stream, false) => s?,
                _ = shed() => return None,
            },
            _ => stream,
        };
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
        let (mut stream, cap) = HeaderCap::wrap(
            stream,
            self.max_header_bytes,
            self.headers_too_large.clone(),
        );
        let answer = Arc::new(AnswerWait::default());
        let mut deadline = Instant::now() + self.header_timeout;
        // What the previous request left: Pingora's settings for the
        // connection (keep-alive, pipelining, any bytes of the next request
        // it read) and our context.
        let mut persistent: Option<HttpPersistentSettings> = None;
        let mut fresh = true;
        // One timer and one wait for "close now" serve all the connection's
        // requests: registering either anew for each would cost every request.
        let mut timer = deadline::Deadline::default();
        let wait = async {
            tokio::select! {
                _ = shed() => {}
                _ = self.closing() => {}
            }
        };
        let given = || {
            place.as_ref().is_some_and(|p| p.slot.is_shed()) || self.closing.load(Ordering::Acquire)
        };
        let wait = std::pin::pin!(wait);
        let mut stop = stop::Stop::new(wait, given);
        loop {
            if place.as_ref().is_some_and(|p| !p.waiting()) {
                // Shed during its last request: its place is promised.
                return None;
            }
            // Wait for the next request holding only the socket, unless
            // some of it may already be buffered with Pingora.
            let clean = fresh || cap.ended_clean();
            cap.next_request();
            let first = if clean {
                match idle::next_request(&mut stream, (deadline, &mut timer), &mut stop).await {
                    idle::Next::Bytes(bytes) => Some(bytes),
                    idle::Next::Closed | idle::Next::Stopped => return None,
                    idle::Next::Late => {
                        self.header_timeouts.inc();
                        log::debug!("no request header by the deadline: connection closed");
                        return None;
                    }
                }
            } else {
                None
            };
            let mut session = ServerSession::new_http1(stream);
            match persistent.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None => {
                    // Pipelined requests (RFC 9112 §9.3.2) are answered one
                    // after the other, in order; the setting carries over to
                    // the connection's next requests.
                    session.set_pipelining_enabled(true);
                    let secs = self.header_timeout.as_secs().max(1);
                    session.set_keepalive((!*shutdown.borrow()).then_some(secs));
                }
            }
            if let Some(bytes) = first {
                session.set_pipelined_prefix(bytes);
            }
            let carried = session.take_connection_user_context();
            session.set_connection_user_context(Some(Box::new(HeaderClock {
                cap: cap.clone(),
                carried,
                answer: answer.clone(),
            })));
            let request = self.proxy.process_new_http(session, shutdown);
            let busy = || {
                if let Some(p) = &place {
                    p.busy();
                }
            };
            let on_time = (deadline, &mut timer);
            let result = match run::run(request, &cap, on_time, &mut stop, &answer, busy).await {
                run::Ended::Done(result) => result,
                run::Ended::HeaderLate => {
                    self.header_timeouts.inc();
                    log::debug!("request header not whole by the deadline: connection closed");
                    return None;
                }
            };
            let (next, settings) = result?.consume();
            stream = next;
            persistent = settings;
            fresh = false;
            deadline = Instant::now() + self.keepalive_timeout + self.header_timeout;
        }
    }
}
