//! The Redis side: publishing messages, lane lengths and health.

use std::{collections::BTreeMap, time::Duration};

use fred::{
    prelude::{
        Builder, Client, ClientLike, Config, Error as RedisError, KeysInterface, ListInterface,
        ReconnectPolicy, Value,
    },
    types::scripts::Script,
};
use tracing::instrument;

use super::{JobMessage, Lane, QueueName};

/// Outbox ids per marker bitmap: 4096 bits is 512 bytes of Redis memory.
pub const MARKER_BLOCK_IDS: i64 = 4096;

/// Most messages sent in one script call; Lua's `unpack` has a stack limit.
pub const MAX_MESSAGES_PER_SCRIPT: usize = 1000;

/// Shortest and longest pause between reconnection attempts, in milliseconds.
const RECONNECT_MIN_DELAY_MS: u32 = 50;
const RECONNECT_MAX_DELAY_MS: u32 = 1000;

const PUSH_ONCE_LUA: &str = include_str!("push_once.lua");

/// Errors talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// `REDIS_URL` could not be understood.
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(String),
    /// The client is not connected right now; it keeps reconnecting by itself.
    #[error("Redis is not connected")]
    NotConnected,
    /// A command failed or timed out.
    #[error("Redis command failed")]
    Command(#[from] RedisError),
}

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://`, `rediss://`, `redis-cluster://` or `redis-sentinel://` URL.
    pub url: String,
    /// Limit for one command, including waiting for a reconnection.
    pub command_timeout: Duration,
}

/// One message for [`RedisQueue::push_once`], identified by its outbox row.
#[derive(Debug, Clone, Copy)]
pub struct OutboxMessage<'a> {
    pub outbox_id: i64,
    pub payload: &'a str,
}

/// A handle on the queue's Redis lists. Cheap to clone; all clones share one
/// multiplexed connection that reconnects by itself.
#[derive(Clone)]
pub struct RedisQueue {
    client: Client,
    queue: QueueName,
    push_once: Script,
}

impl RedisQueue {
    /// Builds the client and starts connecting in the background. Succeeds
    /// while Redis is unreachable: commands fail until it comes back.
    pub fn connect(settings: &RedisSettings, queue: QueueName) -> Result<Self, QueueError> {
        let mut config = Config::from_url(&settings.url)
            .map_err(|error| QueueError::InvalidUrl(error.details().to_owned()))?;
        // Keep retrying the first connection instead of failing start-up.
        config.fail_fast = false;
        let timeout = settings.command_timeout;
        let client = Builder::from_config(config)
            .with_performance_config(|performance| {
                performance.default_command_timeout = timeout;
            })
            .with_connection_config(|connection| {
                connection.connection_timeout = timeout;
                connection.internal_command_timeout = timeout;
            })
            .set_policy(ReconnectPolicy::new_exponential(
                0,
                RECONNECT_MIN_DELAY_MS,
                RECONNECT_MAX_DELAY_MS,
                2,
            ))
            .build()
            .map_err(|error| QueueError::InvalidUrl(error.details().to_owned()))?;
        // The connection task runs until `quit`; its handle is not needed.
        let _connection = client.connect();
        Ok(Self {
            client,
            queue,
            push_once: Script::from_lua(PUSH_ONCE_LUA),
        })
    }

    pub fn queue(&self) -> &QueueName {
        &self.queue
    }

    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// Waits until the client is connected, at most `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), QueueError> {
        match tokio::time::timeout(timeout, self.client.wait_for_connect()).await {
            Ok(result) => result.map_err(QueueError::from),
            Err(_) => Err(QueueError::NotConnected),
        }
    }

    /// Pushes one message (plain RPUSH, not deduplicated). The relay uses
    /// [`push_once`](Self::push_once) instead.
    #[instrument(skip_all, fields(job_id = %message.job_id, lane = lane.as_str()), err)]
    pub async fn publish(&self, lane: Lane, message: &JobMessage) -> Result<u64, QueueError> {
        Ok(self
            .client
            .rpush(self.queue.key(lane), message.to_json())
            .await?)
    }

    /// Pushes several messages in one RPUSH, in order (not deduplicated).
    #[instrument(skip_all, fields(count = messages.len(), lane = lane.as_str()), err)]
    pub async fn publish_batch(
        &self,
        lane: Lane,
        messages: &[JobMessage],
    ) -> Result<u64, QueueError> {
        if messages.is_empty() {
            return self.queue_length(lane).await;
        }
        let payloads: Vec<String> = messages.iter().map(JobMessage::to_json).collect();
        Ok(self.client.rpush(self.queue.key(lane), payloads).await?)
    }

    /// Pushes messages onto one lane, in order, each at most once per outbox
    /// id within `marker_ttl`: a retried batch whose first attempt reached
    /// Redis pushes nothing twice. `namespace` separates the marker sets of
    /// different databases. Returns how many were pushed (the rest had
    /// already been pushed).
    #[instrument(skip_all, fields(count = messages.len(), lane = lane.as_str()), err)]
    pub async fn push_once(
        &self,
        lane: Lane,
        namespace: &str,
        marker_ttl: Duration,
        messages: &[OutboxMessage<'_>],
    ) -> Result<u64, QueueError> {
        let list = self.queue.key(lane);
        let mut pushed = 0;
        for chunk in messages.chunks(MAX_MESSAGES_PER_SCRIPT) {
            let (keys, args) = push_once_arguments(&list, namespace, marker_ttl, chunk);
            let count: i64 = self
                .push_once
                .evalsha_with_reload(&self.client, keys, args)
                .await?;
            pushed += u64::try_from(count).unwrap_or(0);
        }
        Ok(pushed)
    }

    /// LLEN of one lane.
    pub async fn queue_length(&self, lane: Lane) -> Result<u64, QueueError> {
        Ok(self.client.llen(self.queue.key(lane)).await?)
    }

    /// PING.
    pub async fn health_check(&self) -> Result<(), QueueError> {
        if !self.client.is_connected() {
            return Err(QueueError::NotConnected);
        }
        let _: String = self.client.ping(None).await?;
        Ok(())
    }

    /// Removes the marker bitmaps of one lane (used by tests to simulate a
    /// marker that expired).
    pub async fn forget_markers(
        &self,
        lane: Lane,
        namespace: &str,
        outbox_ids: &[i64],
    ) -> Result<(), QueueError> {
        let list = self.queue.key(lane);
        let keys: Vec<String> = outbox_ids
            .iter()
            .map(|id| marker_key(&list, namespace, id.div_euclid(MARKER_BLOCK_IDS)))
            .collect();
        let _: i64 = self.client.del(keys).await?;
        Ok(())
    }

    /// Closes the connection.
    pub async fn quit(&self) {
        let _ = self.client.quit().await;
    }
}

/// The marker bitmap for one block of outbox ids. The `{list}` hash tag puts
/// it in the same cluster slot as the list itself.
fn marker_key(list: &str, namespace: &str, block: i64) -> String {
    format!("{{{list}}}:pushed:{namespace}:{block}")
}

fn push_once_arguments(
    list: &str,
    namespace: &str,
    marker_ttl: Duration,
    messages: &[OutboxMessage<'_>],
) -> (Vec<String>, Vec<Value>) {
    let mut blocks: BTreeMap<i64, usize> = BTreeMap::new();
    let mut keys = vec![list.to_owned()];
    let mut args = Vec::with_capacity(1 + messages.len() * 3);
    args.push(Value::Integer(
        i64::try_from(marker_ttl.as_secs().max(1)).unwrap_or(i64::MAX),
    ));
    for message in messages {
        let block = message.outbox_id.div_euclid(MARKER_BLOCK_IDS);
        let index = *blocks.entry(block).or_insert_with(|| {
            keys.push(marker_key(list, namespace, block));
            keys.len()
        });
        args.push(Value::Integer(index as i64));
        args.push(Value::Integer(
            message.outbox_id.rem_euclid(MARKER_BLOCK_IDS),
        ));
        args.push(Value::String(message.payload.into()));
    }
    (keys, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_keys_share_the_list_hash_tag() {
        assert_eq!(
            marker_key("translation_jobs:high", "ns", 3),
            "{translation_jobs:high}:pushed:ns:3"
        );
    }

    #[test]
    fn arguments_point_each_message_at_its_block() {
        let messages = [
            OutboxMessage {
                outbox_id: 1,
                payload: "a",
            },
            OutboxMessage {
                outbox_id: MARKER_BLOCK_IDS + 2,
                payload: "b",
            },
            OutboxMessage {
                outbox_id: 3,
                payload: "c",
            },
        ];
        let (keys, args) = push_once_arguments("q", "ns", Duration::from_secs(60), &messages);
        assert_eq!(keys, vec!["q", "{q}:pushed:ns:0", "{q}:pushed:ns:1"]);
        assert_eq!(args.len(), 10);
        assert_eq!(args[0], Value::Integer(60));
        assert_eq!(
            args[1..4],
            [
                Value::Integer(2),
                Value::Integer(1),
                Value::String("a".into())
            ]
        );
        assert_eq!(
            args[4..7],
            [
                Value::Integer(3),
                Value::Integer(2),
                Value::String("b".into())
            ]
        );
        assert_eq!(
            args[7..10],
            [
                Value::Integer(2),
                Value::Integer(3),
                Value::String("c".into())
            ]
        );
    }
}
