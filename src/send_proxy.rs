//! A pool's `proxy_protocol: v1 | v2`: each connection to its upstreams
//! begins with a PROXY protocol header (built by the `ppp` crate) naming the
//! client connection it carries (as HAProxy's `send-proxy-v2`), so the
//! upstream sees the real client. Such connections serve one client
//! connection only (the peer's `group_key`); health checks say LOCAL
//! (v1: UNKNOWN), as HAProxy's `check-send-proxy` does.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::upstreams::peer::HttpPeer;
use tokio::io::AsyncWriteExt;

/// Which header a pool's upstreams are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

/// The header for a connection from `client` to `local` (None: a
/// connection of our own, a health check).
pub fn header(version: ProxyVersion, addrs: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    // `::ffff:a.b.c.d` is the IPv4 client it stands for.
    let addrs = addrs
        .map(|(c, l)| (canonical(c), canonical(l)))
        .filter(|(c, l)| c.is_ipv4() == l.is_ipv4());
    match version {
        ProxyVersion::V1 => {
            let a: ppp::v1::Addresses = addrs.map_or(ppp::v1::Addresses::Unknown, Into::into);
            a.to_string().into_bytes()
        }
        ProxyVersion::V2 => {
            use ppp::v2::{Builder, Command, Protocol, Version};
            let built = match addrs {
                Some(a) => {
                    Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, a)
                }
                None => Builder::with_addresses(
                    Version::Two | Command::Local,
                    Protocol::Unspecified,
                    ppp::v2::Addresses::Unspecified,
                ),
            };
            built.build().expect("writing to a Vec cannot fail")
        }
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Connects to an upstream and sends the header first.
#[derive(Debug)]
pub struct SendProxy {
    header: Vec<u8>,
    /// For the connection and the header's write together.
    timeout: Duration,
}

impl SendProxy {
    /// Sets `peer` up to begin its connections with `version`'s header for
    /// the client connection `addrs` (None: a health check), reusing them for
    /// that client connection only.
    pub fn apply(
        peer: &mut HttpPeer,
        version: ProxyVersion,
        addrs: Option<(SocketAddr, SocketAddr)>,
        timeout: Duration,
    ) {
        if let Some(a) = addrs {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            a.hash(&mut h);
            peer.group_key = h.finish();
        }
        peer.options.custom_l4 = Some(Arc::new(SendProxy {
            header: header(version, addrs),
            timeout,
        }));
    }
}

#[async_trait]
impl L4Connect for SendProxy {
    async fn connect(&self, addr: &PingoraAddr) -> Result<Stream> {
        let Some(inet) = addr.as_inet().copied() else {
            return Error::e_explain(ConnectError, "PROXY protocol needs a TCP upstream");
        };
        let connect = async {
            let mut tcp = tokio::net::TcpStream::connect(inet).await?;
            tcp.set_nodelay(true)?;
            tcp.write_all(&self.header).await?;
            Ok::<_, std::io::Error>(tcp)
        };
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(tcp)) => Ok(tcp.into()),
            Ok(Err(e)) => {
                let kind = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    ConnectRefused
                } else {
                    ConnectError
                };
                Error::e_because(kind, format!("connecting to {inet}"), e)
            }
            Err(_) => Error::e_explain(
                ConnectTimedout,
                format!(
                    "connecting to {inet}: no connection within {:?}",
                    self.timeout
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(c: &str, l: &str) -> Option<(SocketAddr, SocketAddr)> {
        Some((c.parse().unwrap(), l.parse().unwrap()))
    }

    #[test]
    fn v1_names_the_client_or_says_unknown() {
        let h = header(
            ProxyVersion::V1,
            addrs("203.0.113.7:51000", "10.0.0.1:8080"),
        );
        assert_eq!(h, b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 8080\r\n");
        let mapped = header(
            ProxyVersion::V1,
            addrs("[::ffff:203.0.113.7]:1", "10.0.0.1:2"),
        );
        assert_eq!(mapped, b"PROXY TCP4 203.0.113.7 10.0.0.1 1 2\r\n");
        assert_eq!(header(ProxyVersion::V1, None), b"PROXY UNKNOWN\r\n");
        let mixed = header(ProxyVersion::V1, addrs("[2001:db8::1]:1", "10.0.0.1:2"));
        assert_eq!(mixed, b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn v2_parses_back_to_the_client_and_local_says_so() {
        let h = header(
            ProxyVersion::V2,
            addrs("[2001:db8::7]:51000", "[2001:db8::1]:443"),
        );
        let parsed = ppp::v2::Header::try_from(&h[..]).unwrap();
        assert_eq!(parsed.command, ppp::v2::Command::Proxy);
        match parsed.addresses {
            ppp::v2::Addresses::IPv6(a) => {
                assert_eq!(
                    a.source_address,
                    "2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap()
                );
                assert_eq!(a.source_port, 51000);
                assert_eq!(a.destination_port, 443);
            }
            other => panic!("{other:?}"),
        }
        let local = header(ProxyVersion::V2, None);
        let parsed = ppp::v2::Header::try_from(&local[..]).unwrap();
        assert_eq!(parsed.command, ppp::v2::Command::Local);
    }
}
