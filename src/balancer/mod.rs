//! Selection over a pool's published eligible set, as pure parts: smooth
//! weighted round robin, power of two choices, `dynamic`'s latency factors,
//! sidelining, probe latency, slow start, SRV standby and ejection verdicts.
//! The pool (`crate::pool`) owns the table they work on.

pub mod dynamic;
pub mod outlier;
pub mod p2c;
pub mod probe;
pub mod sideline;
pub mod slow_start;
pub mod standby;
pub mod wrr;
