//! The HTTPS listeners' side of a connection: telling a TLS listener's
//! connection from a plain one, and the handshake, bounded in time (a client
//! that starts one and stalls holds nothing for long) and counted by version.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::tls::server::handshake_with_callback;
use pingora::protocols::Stream;
use prometheus::{IntCounter, IntCounterVec};
use rustls::ServerConfig;

use super::client_cert;

pub struct TlsListener {
    acceptor: Acceptor,
    /// Client certificates are asked for: a verified one is put in the
    /// connection's digest (`client_cert`).
    client_certs: bool,
    /// The `lb.tls.listen` addresses.
    addrs: Vec<SocketAddr>,
    handshakes: IntCounterVec,
    /// `hlb_header_timeouts_total`: a handshake cut by the header deadline
    /// is a request header that did not come in time.
    header_timeouts: IntCounter,
}

impl TlsListener {
    pub fn new(
        config: Arc<ServerConfig>,
        client_certs: bool,
        addrs: Vec<SocketAddr>,
        handshakes: IntCounterVec,
        header_timeouts: IntCounter,
    ) -> Self {
        TlsListener {
            acceptor: Acceptor::from_server_config(config),
            client_certs,
            addrs,
            handshakes,
            header_timeouts,
        }
    }

    /// Whether `stream` was accepted on one of the HTTPS listeners.
    pub fn serves(&self, stream: &Stream) -> bool {
        let Some(local) = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet().copied()))
        else {
            return false;
        };
        self.addrs
            .iter()
            .any(|a| a.port() == local.port() && (a.ip() == local.ip() || a.ip().is_unspecified()))
    }

    /// The TLS handshake on `stream`, within `limit`; `None` if it failed or
    /// took too long (counted as `failed`, and a timeout as a header timeout).
    pub async fn handshake(&self, stream: Stream, limit: Duration) -> Option<Stream> {
        let l4 = match stream.into_any().downcast::<L4Stream>() {
            Ok(l4) => *l4,
            Err(_) => {
                log::error!("tls: an accepted connection is not a plain socket");
                return None;
            }
        };
        let handshake = async {
            if self.client_certs {
                handshake_with_callback(&self.acceptor, l4, &client_cert::Callbacks).await
            } else {
                self.acceptor.tls_handshake(l4).await
            }
        };
        match tokio::time::timeout(limit, handshake).await {
            Ok(Ok(tls)) => {
                let tls: Stream = Box::new(tls);
                // Pingora names them `TLSv1_3`; the metric says `TLSv1.3`.
                let version = tls
                    .get_ssl_digest()
                    .map(|d| d.version.replace('_', "."))
                    .unwrap_or_default();
                self.handshakes.with_label_values(&[&version]).inc();
                Some(tls)
            }
            Ok(Err(e)) => {
                log::debug!("tls handshake failed: {e}");
                self.handshakes.with_label_values(&["failed"]).inc();
                None
            }
            Err(_) => {
                log::debug!("tls handshake not done within {limit:?}");
                self.handshakes.with_label_values(&["failed"]).inc();
                self.header_timeouts.inc();
                None
            }
        }
    }
}
