//! Overload protection (`concurrency.adaptive`): each upstream's concurrency
//! limit, learned from its latency ([`gradient`], kept per upstream by
//! [`limit`]), and the pool's short queue for requests that find every
//! upstream at its limit ([`queue`]).

pub mod gradient;
pub mod limit;
pub mod queue;

pub use limit::Limit;
pub use queue::Queue;
