//! The PROXY protocol (HAProxy's; v1 text, v2 binary) on the proxy's
//! listeners, with `lb.proxy_protocol`. A trusted peer (an AWS NLB, a HAProxy
//! with `send-proxy`) begins each connection with a header carrying the
//! client's address, which then stands for the peer's everywhere: admission,
//! forwarding headers, rate limits, IP stickiness, the access log. A trusted
//! peer's connection without a valid header is closed, as HAProxy's
//! `accept-proxy` does; a header from any other peer is closed too (it could
//! claim any address), while its plain connections are served as ever.
//! Parsing is the `ppp` crate's.

use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::time::Duration;

use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;

/// The longest v1 header (the protocol's own bound).
const MAX_V1: usize = 107;
/// The longest v2 header: 16 bytes and a 16-bit length of addresses and
/// TLVs (a load balancer may add kilobytes of TLVs: certificates, ids).
const MAX_HEADER: usize = 16 + 65_535;
/// What is read at first; grown to a v2 header's declared length.
const FIRST_READ: usize = 256;
const V1_SIGNATURE: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// What the start of a connection said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A header with the client's address, now the connection's peer.
    Carried,
    /// A header without one (v2 LOCAL, v1 UNKNOWN: the proxy's own check):
    /// the peer stays the peer.
    Local,
    /// No header, from a peer not trusted to send one: served as ever.
    Plain,
    /// Closed: a header from a peer not trusted to send one.
    Untrusted,
    /// Closed: a trusted peer's header malformed, missing or cut off.
    Invalid,
    /// Closed: no whole header within the header timeout, however it
    /// trickled.
    Late,
    /// The peer closed before sending anything (a port check).
    Gone,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Carried => "carried",
            Verdict::Local => "local",
            Verdict::Plain => "plain",
            Verdict::Untrusted => "untrusted",
            Verdict::Invalid => "invalid",
            Verdict::Late => "late",
            Verdict::Gone => "gone",
        }
    }

    /// Whether the connection goes on.
    pub fn serves(self) -> bool {
        matches!(self, Verdict::Carried | Verdict::Local | Verdict::Plain)
    }
}

/// What the bytes read so far are.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a header at all.
    NotHeader,
    /// A header's start: more is needed.
    Incomplete,
    /// A whole header of `len` bytes, with the client's and the address it
    /// connected to (None for LOCAL / UNKNOWN).
    Header {
        len: usize,
        addresses: Option<(SocketAddr, SocketAddr)>,
    },
    Invalid,
}

/// Reads what `bytes` (a connection's first bytes) begin with.
pub fn parse(bytes: &[u8]) -> Parsed {
    let begins = |sig: &[u8]| {
        let n = bytes.len().min(sig.len());
        bytes[..n] == sig[..n]
    };
    if !begins(V1_SIGNATURE) && !begins(V2_SIGNATURE) {
        return Parsed::NotHeader;
    }
    if begins(V1_SIGNATURE) && !bytes.windows(2).any(|w| w == b"\r\n") {
        // A v1 header is parsed whole: cut after a field's separator, ppp
        // would take the missing field for a bad one.
        return if bytes.len() < MAX_V1 {
            Parsed::Incomplete
        } else {
            Parsed::Invalid
        };
    }
    let result = HeaderResult::parse(bytes);
    if result.is_incomplete() {
        return if bytes.len() < MAX_HEADER {
            Parsed::Incomplete
        } else {
            Parsed::Invalid
        };
    }
    match result {
        HeaderResult::V1(Ok(h)) => Parsed::Header {
            len: h.header.len(),
            addresses: match h.addresses {
                v1::Addresses::Tcp4(a) => Some((
                    (a.source_address, a.source_port).into(),
                    (a.destination_address, a.destination_port).into(),
                )),
                v1::Addresses::Tcp6(a) => Some((
                    (a.source_address, a.source_port).into(),
                    (a.destination_address, a.destination_port).into(),
                )),
                v1::Addresses::Unknown => None,
            },
        },
        HeaderResult::V2(Ok(h))
            if h.protocol == v2::Protocol::Datagram || h.tlvs().any(|t| t.is_err()) =>
        {
            // UDP addresses on a TCP connection, or a TLV running past the
            // header: not a header to believe.
            Parsed::Invalid
        }
        HeaderResult::V2(Ok(h)) => Parsed::Header {
            len: h.len(),
            addresses: match (h.command, h.addresses) {
                (v2::Command::Local, _) => None,
                (_, v2::Addresses::IPv4(a)) => Some((
                    (a.source_address, a.source_port).into(),
                    (a.destination_address, a.destination_port).into(),
                )),
                (_, v2::Addresses::IPv6(a)) => Some((
                    (a.source_address, a.source_port).into(),
                    (a.destination_address, a.destination_port).into(),
                )),
                // UNIX sockets and unspecified families carry no client
                // address the balancer can use.
                _ => None,
            },
        },
        _ => Parsed::Invalid,
    }
}

/// How many bytes the header begun in `bytes` needs at least: a v2
/// header's declared length once its first 16 bytes are in.
fn needed(bytes: &[u8]) -> usize {
    if bytes.len() >= 16 && bytes.starts_with(V2_SIGNATURE) {
        16 + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]))
    } else {
        0
    }
}

/// Reads the start of `stream` (a just-accepted TCP connection) from a peer
/// `trusted` to send a header or not; the whole header must be in within
/// `limit`, however it trickles. Whatever follows the header is put back to
/// be read as the connection's first bytes.
pub async fn read(stream: Stream, trusted: bool, limit: Duration) -> (Option<Stream>, Verdict) {
    let mut l4: Box<L4Stream> = match stream.into_any().downcast() {
        Ok(l4) => l4,
        // Not a TCP stream of Pingora's own: nothing to read a header from.
        Err(_) => return (None, Verdict::Invalid),
    };
    let mut buf = vec![0u8; FIRST_READ];
    let mut filled = 0;
    let deadline = tokio::time::Instant::now() + limit;
    let verdict = loop {
        let want = needed(&buf[..filled]).max(filled + 1).min(MAX_HEADER);
        if want > buf.len() {
            buf.resize(want, 0);
        }
        let n = match tokio::time::timeout_at(deadline, l4.read(&mut buf[filled..])).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => break Verdict::Invalid,
            Err(_) => break Verdict::Late,
        };
        if n == 0 {
            break if filled == 0 {
                Verdict::Gone
            } else {
                Verdict::Invalid
            };
        }
        filled += n;
        match (parse(&buf[..filled]), trusted) {
            (Parsed::Incomplete, _) => continue,
            (Parsed::NotHeader, false) => {
                l4.rewind(&buf[..filled]);
                break Verdict::Plain;
            }
            (Parsed::Header { .. }, false) => break Verdict::Untrusted,
            (Parsed::Header { len, addresses }, true) => {
                l4.rewind(&buf[len..filled]);
                match addresses {
                    Some((client, to)) => {
                        let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
                        let _ = digest.peer_addr.set(Some(PeerAddr::Inet(client)));
                        let _ = digest.local_addr.set(Some(PeerAddr::Inet(to)));
                        l4.set_socket_digest(digest);
                        break Verdict::Carried;
                    }
                    None => break Verdict::Local,
                }
            }
            (Parsed::NotHeader | Parsed::Invalid, true) | (Parsed::Invalid, false) => {
                break Verdict::Invalid
            }
        }
    };
    let stream: Option<Stream> = verdict.serves().then_some(l4 as Stream);
    (stream, verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: v2::Command, from: &str, to: &str) -> Vec<u8> {
        let addresses: v2::Addresses = (
            from.parse::<SocketAddr>().unwrap(),
            to.parse::<SocketAddr>().unwrap(),
        )
            .into();
        let mut header = v2::Builder::with_addresses(
            v2::Version::Two | command,
            v2::Protocol::Stream,
            addresses,
        )
        .build()
        .unwrap();
        header.extend_from_slice(b"GET / HTTP/1.1\r\n");
        header
    }

    #[test]
    fn a_v1_header_gives_its_addresses_and_its_length() {
        let text = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(text),
            Parsed::Header {
                len: 43,
                addresses: Some((
                    "203.0.113.7:51234".parse().unwrap(),
                    "10.0.0.1:443".parse().unwrap()
                )),
            }
        );
        let six = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert!(matches!(
            parse(six),
            Parsed::Header {
                len: 40,
                addresses: Some(_)
            }
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\nGET"),
            Parsed::Header {
                len: 15,
                addresses: None
            }
        );
    }

    #[test]
    fn a_v2_header_gives_its_addresses_and_local_gives_none() {
        let proxied = v2(v2::Command::Proxy, "198.51.100.9:4000", "10.0.0.1:8080");
        let Parsed::Header { len, addresses } = parse(&proxied) else {
            panic!("{:?}", parse(&proxied));
        };
        assert_eq!(&proxied[len..], b"GET / HTTP/1.1\r\n");
        assert_eq!(addresses.unwrap().0, "198.51.100.9:4000".parse().unwrap());
        let local = v2(v2::Command::Local, "127.0.0.1:1", "127.0.0.1:2");
        assert!(matches!(
            parse(&local),
            Parsed::Header {
                addresses: None,
                ..
            }
        ));
    }

    #[test]
    fn partial_headers_wait_for_more_and_anything_else_is_no_header() {
        assert_eq!(parse(b"PRO"), Parsed::Incomplete);
        assert_eq!(parse(b"PROXY TCP4 203.0.113.7"), Parsed::Incomplete);
        // Cut after the separator before a port: still only a start.
        assert_eq!(
            parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 "),
            Parsed::Incomplete
        );
        assert_eq!(parse(b"\r\n\r\n\0\r"), Parsed::Incomplete);
        let proxied = v2(v2::Command::Proxy, "198.51.100.9:4000", "10.0.0.1:8080");
        assert_eq!(parse(&proxied[..20]), Parsed::Incomplete);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parsed::NotHeader);
        assert_eq!(parse(&[0x16, 3, 1]), Parsed::NotHeader, "a TLS ClientHello");
        assert_eq!(parse(b"\r\n\r\nGET"), Parsed::NotHeader);
    }

    #[test]
    fn long_v2_headers_are_read_and_lax_ones_refused() {
        let addresses = (
            "198.51.100.9:4000".parse::<SocketAddr>().unwrap(),
            "10.0.0.1:8080".parse::<SocketAddr>().unwrap(),
        );
        let builder = || {
            v2::Builder::with_addresses(
                v2::Version::Two | v2::Command::Proxy,
                v2::Protocol::Stream,
                addresses,
            )
        };
        // Kilobytes of TLVs, as a load balancer passing a certificate adds.
        let long = builder()
            .write_tlv(0xE0, &[7; 5000])
            .unwrap()
            .build()
            .unwrap();
        assert!(matches!(
            parse(&long),
            Parsed::Header {
                addresses: Some(_),
                ..
            }
        ));
        assert_eq!(needed(&long[..16]), long.len());
        // A TLV claiming more than the header holds.
        let mut overrun = builder().write_tlv(0xE0, &[7; 8]).unwrap().build().unwrap();
        let tlv_len = overrun.len() - 10;
        overrun[tlv_len] = 0xFF;
        assert_eq!(parse(&overrun), Parsed::Invalid);
        let udp = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Datagram,
            addresses,
        )
        .build()
        .unwrap();
        assert_eq!(
            parse(&udp),
            Parsed::Invalid,
            "UDP addresses on a TCP connection"
        );
    }

    #[test]
    fn malformed_or_endless_headers_are_invalid() {
        assert_eq!(
            parse(b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n"),
            Parsed::Invalid
        );
        assert_eq!(
            parse(b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n"),
            Parsed::Invalid
        );
        let mut endless = b"PROXY TCP4 ".to_vec();
        endless.resize(MAX_V1, b'1');
        assert_eq!(parse(&endless), Parsed::Invalid);
    }
}
