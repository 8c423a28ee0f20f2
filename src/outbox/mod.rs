//! The transactional outbox: rows written with each change that must reach
//! Redis, the relay that publishes them, the generation of Redis's data
//! that tells when published messages were lost, and how much waits in it
//! (`size`, read without walking the table).
//!
//! The create statement (see `jobs::create_job`) inserts the row; the relay
//! deletes it in the transaction that pushed it. Progress is never tracked
//! with a high-water mark over ids: identity values commit out of order, so
//! a lower id can become visible after a higher one. Rows are claimed, not
//! skipped past: under a backlog the relay's claims start their scan after
//! the previous round's last id (walking over the rows just claimed costs
//! PostgreSQL a third of its work), but every `FULL_SCAN_EVERY` rounds, and
//! before a drain ends, a claim scans from the lowest id again.

mod enqueue;
pub mod generation;
mod relay;
pub mod scheduler;
mod size;

pub use enqueue::{OUTBOX_CHANNEL, Pending, enqueue};
pub use relay::{
    Claimed, Drained, FULL_SCAN_EVERY, OutboxRow, Published, Relay, RelayError, RelaySettings,
};
pub use scheduler::Scheduler;
pub use size::{EXACT_UP_TO, OutboxSize, outbox_size};
