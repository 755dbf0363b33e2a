//! How an upstream is reached: the Pingora peer for its address and protocol
//! (HTTP/2 by ALPN over TLS or h2c in the clear; TLS with SNI, certificate
//! and host name verification against its CA or the system's roots). The
//! proxy and the health checks build peers the same way, so a check speaks
//! the upstream's own protocol.

use std::net::SocketAddr;

use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;

use crate::config::UpstreamProtocol;

/// Concurrent streams on one HTTP/2 connection to an upstream.
const H2_STREAMS: usize = 100;

pub fn peer(addr: SocketAddr, protocol: &UpstreamProtocol) -> HttpPeer {
    let tls = protocol.tls.as_ref();
    let mut peer = HttpPeer::new(
        addr,
        tls.is_some(),
        tls.map_or(String::new(), |t| t.sni.clone()),
    );
    if let Some(t) = tls {
        peer.options.verify_cert = t.verify;
        peer.options.verify_hostname = t.verify;
        peer.options.ca = t.ca.clone();
    }
    if protocol.h2 {
        peer.options.alpn = ALPN::H2;
        peer.options.max_h2_streams = H2_STREAMS;
    }
    peer
}
