//! Live job changes: the LISTEN connection and the fan-out to the
//! WatchTranslationJob streams.

mod hub;
mod listener;

pub use hub::{Subscription, WatchHub};
pub use listener::{JOB_EVENTS_CHANNEL, Listener};
