//! What the frontend hands the proxy with each request on a connection: the
//! header clock, which the proxy stops as soon as the request header has
//! been read, carrying whatever the previous request on the connection left.

use std::any::Any;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::answer_wait::AnswerWait;
use crate::header_cap::Arming;

/// Rides in the connection's user context into the proxy, which fires it as
/// soon as the request header has been read; carries on whatever context the
/// previous request on the connection left.
pub struct HeaderClock {
    pub arrived: oneshot::Sender<()>,
    pub cap: Arming,
    pub carried: Option<Box<dyn Any + Send + Sync>>,
    /// The connection's wait for an upgrade request's answer.
    pub answer: Arc<AnswerWait>,
}

impl HeaderClock {
    /// The request header is in: stops the clock and the header cap, and
    /// hands back what the previous request left, and the answer's wait.
    pub fn header_in(self) -> (Option<Box<dyn Any + Send + Sync>>, Arc<AnswerWait>) {
        self.cap.header_in();
        let _ = self.arrived.send(());
        (self.carried, self.answer)
    }
}
