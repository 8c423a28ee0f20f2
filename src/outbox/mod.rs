//! The transactional outbox: rows written with each change that must reach
//! Redis, and the relay that publishes them.
//!
//! The create transaction (see `jobs::create_job`) inserts the row; the relay
//! deletes it in the transaction that pushed it. Progress is never tracked
//! with a high-water mark over ids: identity values commit out of order, so
//! a lower id can become visible after a higher one. Rows are claimed, not
//! skipped past.

mod enqueue;
mod relay;
mod wake;

pub use enqueue::{Pending, enqueue};
pub use relay::{Drained, OutboxRow, Relay, RelayError, RelaySettings};
pub use wake::{OUTBOX_CHANNEL, RelayWake};
