//! What a Pingora error says: the outcome of the try it ended (for
//! `attempt::classify`), the status the client is answered with, and
//! whether it is news for the error log.

use pingora::prelude::*;
use pingora::ErrorSource;

use crate::attempt::Outcome;

/// What an error during a try says about it. `status` is the response's, if
/// its header arrived; `stale` says a pooled connection explains the error.
pub fn outcome_of(e: &Error, status: Option<u16>, stale: bool) -> Outcome {
    match (e.esource(), status) {
        (ErrorSource::Upstream, Some(s)) => Outcome::BrokeMidBody(s),
        (ErrorSource::Upstream, None) if stale => Outcome::StalePooled,
        (ErrorSource::Upstream, None) => match e.etype() {
            ReadTimedout | WriteTimedout => Outcome::TimedOut,
            ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError => {
                Outcome::ConnectFailed
            }
            _ => Outcome::Reset,
        },
        // The client went away, or its request broke a limit.
        _ => Outcome::Abandoned,
    }
}

/// The status answered for an error (0: the client is gone, answer nothing).
pub fn error_status(e: &Error) -> u16 {
    match e.etype() {
        HTTPStatus(code) => *code,
        ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => 504,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// Whether an error that ended a request is the ordinary course of things
/// rather than news for the error log: a client that went away, a 4xx of
/// our own (a too-large body), and our own fast 503 when no upstream may be
/// picked (counted in `hlb_no_upstream_total` and shown on the dashboard).
pub fn is_ordinary(e: &Error, no_upstream: bool) -> bool {
    if no_upstream {
        return true;
    }
    match e.etype() {
        HTTPStatus(code) => *code < 500,
        WriteError | ReadError | ConnectionClosed => e.esource() == &ErrorSource::Downstream,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_outcomes() {
        let up = |t| {
            let mut e = Error::new(t);
            e.as_up();
            e
        };
        assert_eq!(
            outcome_of(&up(ReadTimedout), None, false),
            Outcome::TimedOut
        );
        assert_eq!(
            outcome_of(&up(ConnectionClosed), None, false),
            Outcome::Reset
        );
        assert_eq!(
            outcome_of(&up(ConnectionClosed), None, true),
            Outcome::StalePooled
        );
        assert_eq!(
            outcome_of(&up(ReadError), Some(200), false),
            Outcome::BrokeMidBody(200)
        );
        assert_eq!(
            outcome_of(&up(ConnectRefused), None, false),
            Outcome::ConnectFailed
        );
        let mut down = Error::new(ConnectionClosed);
        down.as_down();
        assert_eq!(outcome_of(&down, None, false), Outcome::Abandoned);
        assert_eq!(outcome_of(&down, Some(200), false), Outcome::Abandoned);
    }

    #[test]
    fn errors_map_to_statuses() {
        let mut timeout = Error::new(ReadTimedout);
        timeout.as_up();
        assert_eq!(error_status(&timeout), 504);
        let mut reset = Error::new(ConnectionClosed);
        reset.as_up();
        assert_eq!(error_status(&reset), 502);
        let mut gone = Error::new(ConnectionClosed);
        gone.as_down();
        assert_eq!(error_status(&gone), 0);
        assert_eq!(error_status(&Error::new(HTTPStatus(413))), 413);
    }

    #[test]
    fn only_ordinary_ends_are_kept_out_of_the_error_log() {
        let mut gone = Error::explain(ConnectionClosed, "client closed");
        gone.as_down();
        assert!(is_ordinary(&gone, false));
        let mut refused = Error::explain(ConnectRefused, "upstream refused");
        refused.as_up();
        assert!(!is_ordinary(&refused, false));
        let mut closed_up = Error::explain(ConnectionClosed, "upstream closed");
        closed_up.as_up();
        assert!(!is_ordinary(&closed_up, false));
        assert!(is_ordinary(&Error::explain(HTTPStatus(413), "big"), false));
        assert!(!is_ordinary(&Error::explain(HTTPStatus(502), "bad"), false));
        assert!(is_ordinary(&Error::explain(HTTPStatus(503), "none"), true));
    }
}
