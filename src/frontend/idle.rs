//! The wait for a connection's next request, holding nothing but the socket.
//!
//! Pingora's own wait keeps the request's whole future (kilobytes, boxed) and
//! a 4 KiB header buffer alive for as long as a keep-alive client stays
//! silent. Here the read is tried with a buffer on the stack, which exists
//! only while the read is tried; the bytes that arrive are handed to the
//! request's session as the start of its header (Pingora's pipelined prefix),
//! so no byte is read twice and no extra system call is made.

use std::future::{poll_fn, Future};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use bytes::BytesMut;
use pingora::protocols::Stream;
use tokio::io::{AsyncRead, ReadBuf};

use super::deadline::Deadline;
use super::stop::Stop;

/// As much as one read takes: Pingora's first header buffer.
const FIRST_READ: usize = 4096;

/// What the wait for the next request came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Its first bytes.
    Bytes(BytesMut),
    /// The client closed the connection, or it broke.
    Closed,
    /// Nothing came by the deadline.
    Late,
    /// The connection was told to close (shed for a newcomer, or the
    /// process stopping).
    Stopped,
}

/// Waits for the first bytes of the next request on `stream`, until
/// `deadline` (kept by `timer`) or until `stop` resolves. A request already
/// on its way is read at once, without a look at the clock.
pub async fn next_request(
    stream: &mut Stream,
    deadline: (Instant, &mut Deadline),
    stop: &mut Stop<'_, impl Future<Output = ()>, impl Fn() -> bool>,
) -> Next {
    let (deadline, timer) = deadline;
    poll_fn(|cx| {
        let mut space = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut buf = ReadBuf::uninit(&mut space);
        match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                let mut bytes = BytesMut::with_capacity(FIRST_READ);
                bytes.extend_from_slice(buf.filled());
                Poll::Ready(Next::Bytes(bytes))
            }
            Poll::Ready(_) => Poll::Ready(Next::Closed),
            Poll::Pending => {
                if timer.poll(deadline, cx).is_ready() {
                    Poll::Ready(Next::Late)
                } else if stop.poll(cx).is_ready() {
                    Poll::Ready(Next::Stopped)
                } else {
                    Poll::Pending
                }
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (Stream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let server: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(server));
        (server, client)
    }

    /// Waits with a deadline `ms` from now, never stopped.
    async fn wait(server: &mut Stream, ms: u64) -> Next {
        let deadline = Instant::now() + Duration::from_millis(ms);
        let wait = std::pin::pin!(std::future::pending());
        let mut never = Stop::new(wait, || false);
        next_request(server, (deadline, &mut Deadline::default()), &mut never).await
    }

    #[tokio::test]
    async fn the_first_bytes_of_a_request_are_handed_over_whole() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let next = wait(&mut server, 5_000).await;
        assert_eq!(
            next,
            Next::Bytes(BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]))
        );
    }

    #[tokio::test]
    async fn a_silent_client_is_late_and_a_closed_one_is_closed() {
        let (mut server, client) = pair().await;
        let next = wait(&mut server, 50).await;
        assert_eq!(next, Next::Late);
        drop(client);
        let next = wait(&mut server, 5_000).await;
        assert_eq!(next, Next::Closed);
    }

    #[tokio::test]
    async fn a_wait_told_to_stop_ends() {
        let (mut server, _client) = pair().await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let wait = std::pin::pin!(std::future::pending());
        let mut stop = Stop::new(wait, || true);
        let next = next_request(&mut server, (deadline, &mut Deadline::default()), &mut stop).await;
        assert_eq!(next, Next::Stopped);
    }
}
