//! Live job changes: the LISTEN connection, the record of watched jobs that
//! the change triggers consult, the fan-out of change events to the watch
//! streams (gRPC WatchTranslationJob and the HTTP event streams), and the
//! streams themselves.

mod event;
mod follow;
mod hub;
pub mod listener;
pub mod registry;

pub use event::{Change, JobChange, SubtaskChange};
pub use follow::follow;
pub use hub::{EVENTS_PER_JOB, HubEvent, REREADS_AT_ONCE, Subscription, WatchHub};
pub use listener::{JOB_EVENTS_CHANNEL, Listener};
