//! `lb.limits.max_header_bytes` enforced while a request header is read, not
//! after: Pingora buffers up to 1 MiB of an unterminated header before its own
//! check, so a thousand clients could hold a gigabyte. The connection's stream
//! is wrapped; while a header is due, the wrapper counts its bytes up to the
//! blank line that ends it, and past the cap answers 431 and closes.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the client is told when its header is too large (RFC 6585 §5).
const REFUSAL: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
Content-Type: text/plain\r\nContent-Length: 33\r\nConnection: close\r\n\r\n\
request header fields too large\r\n";

/// After refusing, at most this much of what the client has already sent is
/// read and thrown away, so that closing with it unread does not reset the
/// connection before the client reads the answer (a bounded lingering close).
const LINGER_BYTES: usize = 64 * 1024;

/// Finds the end of a request header in the bytes as they arrive: the first
/// empty line after the request line has begun. Leading empty lines are
/// skipped, as the parser skips them (RFC 9112 §2.2), and bare LF ends lines
/// as it does for the parser.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeaderScan {
    /// Bytes of this header seen so far (up to its end, once found).
    pub seen: usize,
    started: bool,
    /// 0: inside a line; 1: just after LF; 2: after LF then CR.
    line: u8,
}

/// What the scan found in one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scanned {
    /// The header is not whole yet.
    More,
    /// The header ends this many bytes into the read.
    End(usize),
}

impl HeaderScan {
    /// Feeds the next bytes read. Looks at line ends only (memchr), not at
    /// every byte: the state between two LFs is all a line tells.
    pub fn feed(&mut self, bytes: &[u8]) -> Scanned {
        let mut at = 0;
        for lf in memchr::memchr_iter(b'\n', bytes) {
            self.line_part(&bytes[at..lf]);
            at = lf + 1;
            if self.started && self.line != 0 {
                self.seen += at;
                return Scanned::End(at);
            }
            self.line = 1;
        }
        self.line_part(&bytes[at..]);
        self.seen += bytes.len();
        Scanned::More
    }

    /// Takes in a run of bytes without LF: a lone CR right after an LF
    /// may still end the header; anything else is a line's content.
    fn line_part(&mut self, part: &[u8]) {
        match part {
            [] => {}
            [b'\r'] => self.line = if self.line == 1 { 2 } else { 0 },
            _ => {
                self.started = self.started || part.iter().any(|&b| b != b'\r');
                self.line = 0;
            }
        }
    }
}

/// Arms the cap for each request on a connection, and disarms it once the
/// header is in (so a pipelined request's body is never taken for a header).
/// It also keeps count of the bytes read past the header's end, so that the
/// frontend knows whether a request ended with nothing of the next one read.
#[derive(Clone, Debug)]
pub struct Arming(Arc<Armed>);

#[derive(Debug)]
struct Armed {
    /// The request's number times two, plus one while its header is due.
    word: AtomicU64,
    /// Bytes read past the end of the current request's header; [`UNKNOWN`]
    /// until that end has been read from the socket (a header Pingora had
    /// already buffered, pipelined, is never seen here).
    past_header: AtomicU64,
    /// The request's body length as its header gave it; [`UNKNOWN`] when
    /// it did not (chunked) or has not yet been read.
    body: AtomicU64,
    /// How many bytes the scan counted up to the header's end, and how long
    /// the header Pingora parsed was. When the scan began partway into the
    /// header (its start was already buffered, pipelined), they differ.
    scanned: AtomicU64,
    parsed: AtomicU64,
}

const UNKNOWN: u64 = u64::MAX;

impl Default for Arming {
    fn default() -> Self {
        Arming(Arc::new(Armed {
            word: AtomicU64::new(1),
            past_header: AtomicU64::new(UNKNOWN),
            body: AtomicU64::new(UNKNOWN),
            scanned: AtomicU64::new(UNKNOWN),
            parsed: AtomicU64::new(0),
        }))
    }
}

impl Arming {
    /// A new request header is due from here on.
    pub fn next_request(&self) {
        let n = self.0.word.load(Ordering::Relaxed) >> 1;
        self.0.word.store(((n + 1) << 1) | 1, Ordering::Relaxed);
        self.0.past_header.store(UNKNOWN, Ordering::Relaxed);
        self.0.body.store(UNKNOWN, Ordering::Relaxed);
        self.0.scanned.store(UNKNOWN, Ordering::Relaxed);
    }

    /// The request's header, `parsed` bytes long as Pingora read it, has
    /// been read whole; its body is `body` bytes long (`None`: not known
    /// from the header).
    pub fn header_in(&self, parsed: usize, body: Option<u64>) {
        self.0
            .body
            .store(body.unwrap_or(UNKNOWN), Ordering::Relaxed);
        self.0.parsed.store(parsed as u64, Ordering::Relaxed);
        self.0.word.fetch_and(!1, Ordering::Relaxed);
    }

    /// Whether the current request's header has been read whole.
    pub fn is_header_in(&self) -> bool {
        self.0.word.load(Ordering::Relaxed) & 1 == 0
    }

    /// Whether the request's header was read from the socket whole, from
    /// its first byte (the scan counted as many bytes as Pingora parsed),
    /// and exactly its body, nothing more, after it: then no byte of a next
    /// request is buffered anywhere, and the socket alone says when one
    /// comes. Anything else (a pipelined header, a chunked body) leaves the
    /// next request to Pingora's own read.
    pub fn ended_clean(&self) -> bool {
        let body = self.0.body.load(Ordering::Relaxed);
        body != UNKNOWN
            && self.0.past_header.load(Ordering::Relaxed) == body
            && self.0.scanned.load(Ordering::Relaxed) == self.0.parsed.load(Ordering::Relaxed)
    }

    /// The header's end was read, `seen` bytes into the scan, with `tail`
    /// bytes after it.
    fn header_end(&self, seen: usize, tail: usize) {
        self.0.scanned.store(seen as u64, Ordering::Relaxed);
        self.0.past_header.store(tail as u64, Ordering::Relaxed);
    }

    /// `n` more bytes were read past the header. (Only the connection's
    /// reader writes the count, so load and store do not race.)
    fn passed(&self, n: usize) {
        let past = self.0.past_header.load(Ordering::Relaxed);
        if n > 0 && past != UNKNOWN {
            self.0.past_header.store(past + n as u64, Ordering::Relaxed);
        }
    }
}

enum Phase {
    /// Counting a header's bytes.
    Header(HeaderScan),
    /// The header is in; reads pass straight through.
    Passing,
    /// Writing the refusal; this much of it is written.
    Refusing(usize),
    /// Refused: reading and discarding what the client still sends.
    Lingering(usize),
}

/// A connection's stream with the header cap in front of its reads.
pub struct HeaderCap {
    inner: Stream,
    limit: usize,
    phase: Phase,
    arming: Arming,
    armed: u64,
    refused: IntCounter,
}

impl HeaderCap {
    /// Wraps `inner`; a header is due at once, and again after each
    /// [`Arming::next_request`].
    pub fn wrap(inner: Stream, limit: usize, refused: IntCounter) -> (Stream, Arming) {
        let arming = Arming::default();
        let cap = HeaderCap {
            inner,
            limit,
            phase: Phase::Header(HeaderScan::default()),
            armed: 0,
            arming: arming.clone(),
            refused,
        };
        (Box::new(cap), arming)
    }

    fn too_large() -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, "request header too large")
    }
}

impl AsyncRead for HeaderCap {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let word = this.arming.0.word.load(Ordering::Relaxed);
        if matches!(this.phase, Phase::Passing | Phase::Header(_)) {
            if word >> 1 != this.armed {
                this.armed = word >> 1;
                this.phase = Phase::Header(HeaderScan::default());
            }
            if word & 1 == 0 {
                this.phase = Phase::Passing;
            }
        }
        loop {
            match &mut this.phase {
                Phase::Passing => {
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                    this.arming.passed(buf.filled().len() - before);
                    return Poll::Ready(Ok(()));
                }
                Phase::Header(scan) => {
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                    let mut scan = *scan;
                    let fresh = &buf.filled()[before..];
                    let outcome = scan.feed(fresh);
                    // The scan counts up to the header's end, not past it.
                    let over = scan.seen > this.limit;
                    if !over {
                        this.phase = match outcome {
                            Scanned::End(at) => {
                                this.arming.header_end(scan.seen, fresh.len() - at);
                                Phase::Passing
                            }
                            Scanned::More => Phase::Header(scan),
                        };
                        return Poll::Ready(Ok(()));
                    }
                    // Keep nothing of it: the parser never sees an oversized header.
                    buf.set_filled(before);
                    this.refused.inc();
                    this.phase = Phase::Refusing(0);
                }
                Phase::Refusing(written) => {
                    while *written < REFUSAL.len() {
                        let n =
                            ready!(Pin::new(&mut this.inner).poll_write(cx, &REFUSAL[*written..]))?;
                        if n == 0 {
                            return Poll::Ready(Err(Self::too_large()));
                        }
                        *written += n;
                    }
                    ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
                    this.phase = Phase::Lingering(0);
                }
                Phase::Lingering(drained) => {
                    // Only what has already arrived: the connection closes
                    // now, not when the client stops sending.
                    let mut scratch = [0u8; 4096];
                    while *drained < LINGER_BYTES {
                        let mut sink = ReadBuf::new(&mut scratch);
                        match Pin::new(&mut this.inner).poll_read(cx, &mut sink) {
                            Poll::Ready(Ok(())) if !sink.filled().is_empty() => {
                                *drained += sink.filled().len();
                            }
                            _ => break,
                        }
                    }
                    return Poll::Ready(Err(Self::too_large()));
                }
            }
        }
    }
}

impl AsyncWrite for HeaderCap {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeaderCap {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeaderCap {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderCap {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderCap {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> std::time::Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> std::time::Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderCap {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeaderCap {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeaderCap {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl fmt::Debug for HeaderCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderCap")
            .field("inner", &self.inner)
            .field("limit", &self.limit)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule byte by byte, as the scan must behave.
    fn by_byte(s: &mut (bool, u8, usize), bytes: &[u8]) -> Scanned {
        let (started, line, seen) = s;
        for (i, &b) in bytes.iter().enumerate() {
            *seen += 1;
            match b {
                b'\n' if *started && *line != 0 => return Scanned::End(i + 1),
                b'\n' => *line = 1,
                b'\r' if *line == 1 => *line = 2,
                b'\r' => *line = 0,
                _ => {
                    *started = true;
                    *line = 0;
                }
            }
        }
        Scanned::More
    }

    #[test]
    fn the_scan_by_line_ends_agrees_with_the_rule_byte_by_byte() {
        // Every split of every string of up to 6 bytes over "\r", "\n", "a".
        let alphabet = [b'\r', b'\n', b'a'];
        for len in 1..=6u32 {
            for code in 0..3usize.pow(len) {
                let bytes: Vec<u8> = (0..len)
                    .map(|i| alphabet[code / 3usize.pow(i) % 3])
                    .collect();
                for cut in 0..=bytes.len() {
                    let (a, b) = bytes.split_at(cut);
                    let mut fast = HeaderScan::default();
                    let mut slow = (false, 0u8, 0usize);
                    for part in [a, b] {
                        let (f, s) = (fast.feed(part), by_byte(&mut slow, part));
                        assert_eq!(f, s, "{bytes:?} cut at {cut}");
                        assert_eq!(fast.seen, slow.2, "{bytes:?} cut at {cut}");
                        if f != Scanned::More {
                            break;
                        }
                    }
                }
            }
        }
    }

    fn scan_all(parts: &[&[u8]]) -> (Vec<Scanned>, usize) {
        let mut s = HeaderScan::default();
        let out = parts.iter().map(|p| s.feed(p)).collect();
        (out, s.seen)
    }

    #[test]
    fn the_end_of_a_header_is_found_across_reads() {
        let (out, _) = scan_all(&[b"GET / HTTP/1.1\r\nHost: x\r", b"\n\r", b"\nbody"]);
        assert_eq!(out, vec![Scanned::More, Scanned::More, Scanned::End(1)]);
        let (out, seen) = scan_all(&[b"GET / HTTP/1.1\nHost: x\n\nrest"]);
        assert_eq!(out, vec![Scanned::End(24)]);
        assert_eq!(seen, 24);
    }

    #[test]
    fn leading_empty_lines_do_not_end_a_header() {
        let (out, _) = scan_all(&[b"\r\n\r\n\n\n", b"GET / HTTP/1.1\r\n", b"\r\n"]);
        assert_eq!(out, vec![Scanned::More, Scanned::More, Scanned::End(2)]);
    }

    #[test]
    fn a_lone_cr_inside_a_line_is_not_a_line_end() {
        let (out, _) = scan_all(&[b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n"]);
        assert_eq!(out, vec![Scanned::End(26)]);
        let (out, _) = scan_all(&[b"GET / HTTP/1.1\r\nX: a\r\r\n"]);
        assert_eq!(out, vec![Scanned::More]);
    }

    async fn read_through(limit: usize, client_sends: &[u8]) -> (io::Result<Vec<u8>>, Vec<u8>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (server, mut client) = tokio::io::duplex(1 << 20);
        client.write_all(client_sends).await.unwrap();
        AsyncWriteExt::shutdown(&mut client).await.unwrap();
        let refused = IntCounter::new("t", "t").unwrap();
        let (mut stream, _arming) = HeaderCap::wrap(Box::new(server), limit, refused);
        // Large reads, as Pingora's: a header and its body arrive in one.
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        let result = loop {
            match stream.read(&mut chunk).await {
                Ok(0) => break Ok(got),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) => break Err(e),
            }
        };
        drop(stream);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        (result, answer)
    }

    #[tokio::test]
    async fn a_header_within_the_cap_and_its_body_pass_untouched() {
        let mut req = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9000\r\n\r\n".to_vec();
        req.extend(std::iter::repeat_n(b'b', 9000));
        let (got, answer) = read_through(64, &req).await;
        assert_eq!(got.unwrap(), req);
        assert!(answer.is_empty());
    }

    #[tokio::test]
    async fn past_the_cap_the_client_gets_431_and_the_reader_nothing() {
        let mut req = b"GET / HTTP/1.1\r\nX: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 5000));
        let (got, answer) = read_through(4096, &req).await;
        let err = got.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(answer.starts_with(b"HTTP/1.1 431 "), "{answer:?}");
    }

    #[tokio::test]
    async fn a_whole_header_over_the_cap_is_refused_too() {
        let mut req = b"GET / HTTP/1.1\r\nX: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 100));
        req.extend_from_slice(b"\r\n\r\n");
        let (got, answer) = read_through(64, &req).await;
        assert!(got.is_err());
        assert!(answer.starts_with(b"HTTP/1.1 431 "));
    }
}
