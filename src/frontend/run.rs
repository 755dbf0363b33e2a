//! One HTTP/1 request's processing under the frontend's two clocks: its
//! header must be in by a deadline (else the connection closes), and an
//! upgrade request's wait for its answer is kept to its bound.
//!
//! Both are read after each poll of the request, not woken apart: the header
//! arrives, and the answer's wait is armed and lifted, while the request is
//! being polled. So a request whose header is already buffered, as most are,
//! does not even poll the connection's deadline.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Instant;

use super::deadline::Deadline;
use super::stop::Stop;
use crate::answer_wait::AnswerWait;
use crate::header_cap::Arming;

/// How one request's processing ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended<T> {
    Done(T),
    /// Its header did not arrive whole in time, or the connection was shed.
    HeaderLate,
}

type Timer = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `request` (one request's whole processing), but drops it (closing the
/// connection) if its header is not in (`cap`) by `deadline` (kept by
/// `timer`), or if the connection is told to close (`stop`) before it is.
/// Once the header is in, `on_arrival` runs, and an upgrade request's wait
/// for its answer (`answer`) is cut when due.
pub async fn run<T>(
    request: impl Future<Output = T>,
    cap: &Arming,
    deadline: (Instant, &mut Deadline),
    stop: &mut Stop<'_, impl Future<Output = ()>, impl Fn() -> bool>,
    answer: &AnswerWait,
    on_arrival: impl FnOnce(),
) -> Ended<T> {
    let (deadline, timer) = deadline;
    let mut request = pin!(request);
    let mut on_arrival = Some(on_arrival);
    let mut cut: Option<(Instant, Timer)> = None;
    poll_fn(|cx| loop {
        if let Poll::Ready(out) = request.as_mut().poll(cx) {
            return Poll::Ready(Ended::Done(out));
        }
        if let Some(arrived) = on_arrival.take_if(|_| cap.is_header_in()) {
            arrived();
        }
        if on_arrival.is_some() {
            if timer.poll(deadline, cx).is_ready() || stop.poll(cx).is_ready() {
                return Poll::Ready(Ended::HeaderLate);
            }
            return Poll::Pending;
        }
        let Some(until) = answer.due() else {
            cut = None;
            return Poll::Pending;
        };
        if cut.as_ref().is_none_or(|(t, _)| *t != until) {
            cut = Some((until, Box::pin(tokio::time::sleep_until(until.into()))));
        }
        let timer = cut.as_mut().map(|(_, timer)| timer).expect("set above");
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Cut: the proxy's read ends, and it answers 504; poll it again.
        answer.cut(until);
        cut = None;
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    // Pingora's fast timer runs on a clock of its own: these use real time,
    // with short deadlines.

    /// Runs `request` with a deadline `ms` from now, never stopped.
    async fn within<T>(
        ms: u64,
        request: impl Future<Output = T>,
        cap: &Arming,
        answer: &AnswerWait,
    ) -> Ended<T> {
        let deadline = Instant::now() + Duration::from_millis(ms);
        let wait = pin!(std::future::pending());
        let mut never = Stop::new(wait, || false);
        let mut timer = Deadline::default();
        run(
            request,
            cap,
            (deadline, &mut timer),
            &mut never,
            answer,
            || {},
        )
        .await
    }

    #[tokio::test]
    async fn a_header_that_never_completes_is_cut_at_the_deadline() {
        let cap = Arming::default();
        let out = within(
            100,
            std::future::pending::<()>(),
            &cap,
            &AnswerWait::default(),
        )
        .await;
        assert_eq!(out, Ended::HeaderLate);
    }

    #[tokio::test]
    async fn once_the_header_is_in_the_request_may_take_its_time() {
        let cap = Arming::default();
        let slow = async {
            cap.header_in(0, Some(0));
            tokio::time::sleep(Duration::from_millis(400)).await;
            7
        };
        assert_eq!(
            within(100, slow, &cap, &AnswerWait::default()).await,
            Ended::Done(7)
        );
    }

    #[tokio::test]
    async fn a_connection_waiting_for_its_header_can_be_shed() {
        let cap = Arming::default();
        let never = std::future::pending::<()>();
        let wait = pin!(std::future::ready(()));
        let mut shed = Stop::new(wait, || false);
        let answer = AnswerWait::default();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut timer = Deadline::default();
        let out = run(
            never,
            &cap,
            (deadline, &mut timer),
            &mut shed,
            &answer,
            || {},
        )
        .await;
        assert_eq!(out, Ended::HeaderLate);
    }

    #[tokio::test]
    async fn an_upgrade_whose_answer_is_late_has_its_upstream_read_cut() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _peer = listener.accept().unwrap();
        let cap = Arming::default();
        let answer = AnswerWait::default();
        // The request: header in, armed for 50 ms, then waits until cut.
        let request = async {
            cap.header_in(0, Some(0));
            use std::os::unix::io::AsRawFd;
            answer.arm(
                Instant::now() + Duration::from_millis(50),
                upstream.as_raw_fd(),
            );
            for _ in 0..400 {
                if answer.take_ran_out() {
                    return "cut";
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            "never cut"
        };
        let out = within(10_000, request, &cap, &answer).await;
        assert_eq!(out, Ended::Done("cut"));
    }
}
