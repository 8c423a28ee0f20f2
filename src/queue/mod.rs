//! The Redis side of the service: the message format, the lanes, the client,
//! the idempotent push and the queue's state. Nothing here knows about
//! PostgreSQL.

mod client;
mod dead;
mod lanes;
mod message;
mod push;
mod replicas;
mod state;

pub use client::{QueueError, RedisQueue, RedisSettings, SAFE_MAXMEMORY_POLICY, eviction_risk};
pub use lanes::{Lane, MAX_QUEUE_NAME_LEN, QueueName, QueueNameError};
pub use message::JobMessage;
pub use push::{MARKER_BLOCK_IDS, MAX_MESSAGES_PER_SCRIPT, OutboxMessage, Placement, PushOutcome};
pub use replicas::ReplicaWait;
pub use state::{LaneCount, RedisState, Snapshot};
