//! The transactional outbox: rows written with each change that must reach
//! Redis, the relay that publishes them, and the generation of Redis's data
//! that tells when published messages were lost.
//!
//! The create statement (see `jobs::create_job`) inserts the row; the relay
//! deletes it in the transaction that pushed it. Progress is never tracked
//! with a high-water mark over ids: identity values commit out of order, so
//! a lower id can become visible after a higher one. Rows are claimed, not
//! skipped past.

mod enqueue;
pub mod generation;
mod relay;

pub use enqueue::{OUTBOX_CHANNEL, Pending, enqueue};
pub use relay::{Claimed, Drained, OutboxRow, Published, Relay, RelayError, RelaySettings};
