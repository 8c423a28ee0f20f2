//! The Redis side of the service: the message format, the lanes, and the
//! client that pushes to them. Nothing here knows about PostgreSQL.

mod lanes;
mod message;
mod publisher;

pub use lanes::{Lane, MAX_QUEUE_NAME_LEN, QueueName, QueueNameError};
pub use message::JobMessage;
pub use publisher::{
    MARKER_BLOCK_IDS, MAX_MESSAGES_PER_SCRIPT, OutboxMessage, QueueError, RedisQueue, RedisSettings,
};
