//! The Redis client: connection, health, lane lengths, the server's
//! eviction policy.

use std::time::Duration;

use fred::{
    prelude::{
        Builder, Client, ClientLike, Config, Error as RedisError, ErrorKind, EventInterface,
        KeysInterface, ListInterface, ReconnectPolicy, Server, TcpConfig, Value,
    },
    socket2::TcpKeepalive,
    types::scripts::Script,
};

use super::{Lane, QueueName, ReplicaWait};

/// Shortest and longest pause between reconnection attempts, in milliseconds.
const RECONNECT_MIN_DELAY_MS: u32 = 50;
const RECONNECT_MAX_DELAY_MS: u32 = 1000;
/// TCP keepalive towards Redis: a peer that vanished without a FIN is
/// noticed by the kernel, not only by the next command's timeout.
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Logs an error of a Redis connection: a warning when it will not go away
/// by retrying (authentication, TLS, configuration), debug otherwise (an
/// unreachable server shows in readiness and the relay's warnings). The
/// error text never holds the password; the server is host and port.
fn report_connection_error(error: &RedisError, server: Option<&Server>) {
    let server = server.map(ToString::to_string).unwrap_or_default();
    match error.kind() {
        ErrorKind::Auth | ErrorKind::Tls | ErrorKind::Config | ErrorKind::Url => {
            tracing::warn!(%server, kind = ?error.kind(), error = error.details(), "Redis refused the connection");
        }
        _ => {
            tracing::debug!(%server, kind = ?error.kind(), error = error.details(), "Redis connection error")
        }
    }
}

/// The eviction policy under which Redis never drops a key by itself.
pub const SAFE_MAXMEMORY_POLICY: &str = "noeviction";

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
    /// A script answered something it never answers.
    #[error("unexpected reply from Redis: {0}")]
    Reply(String),
    /// Fewer replicas than `REDIS_WAIT_REPLICAS` confirmed a push in time: a
    /// failover could still lose it, so it does not count (see
    /// `queue::replicas`).
    #[error(
        "{acknowledged} of the {required} replicas REDIS_WAIT_REPLICAS asks for confirmed the push in time"
    )]
    NotReplicated { acknowledged: i64, required: u32 },
    /// The client reconnected between a push and its `WAIT`, so the `WAIT`
    /// cannot speak for the push.
    #[error(
        "the Redis connection was re-established during a push; its replication is unconfirmed"
    )]
    Reconnected,
}

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://`, `rediss://`, `redis-cluster://` or `redis-sentinel://` URL.
    pub url: String,
    /// Limit for one command, including waiting for a reconnection.
    pub command_timeout: Duration,
}

/// The longest shutdown waits for Redis to answer `QUIT`.
pub const QUIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A handle on the queue's Redis keys. Cheap to clone; all clones share one
/// multiplexed connection (per cluster node) that reconnects by itself, and
/// a second one for the relay's pushes when they wait for replicas.
#[derive(Clone)]
pub struct RedisQueue {
    pub(super) client: Client,
    /// Where pushes go: `client` itself, or with a [`ReplicaWait`] a
    /// connection of their own, so that a `WAIT` (which holds its
    /// connection until the replicas answer) never delays other commands.
    pub(super) pusher: Client,
    pub(super) queue: QueueName,
    pub(super) push: Script,
    pub(super) snapshot: Script,
    pub(super) start_generation: Script,
    move_lane: Script,
    /// Replicas that must confirm a push (`queue::replicas`); off by default.
    pub(super) wait: ReplicaWait,
    /// Limit of one command (`REDIS_COMMAND_TIMEOUT`).
    command_timeout: Duration,
    /// `REDIS_URL` with every password masked, for log lines.
    target: std::sync::Arc<str>,
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
                // A connection that leaves a command unanswered this long is
                // closed and opened again: a black-holed server cannot hold
                // the client forever.
                connection.unresponsive.max_timeout = Some(timeout);
                connection.unresponsive.interval = (timeout / 4).max(Duration::from_millis(100));
                connection.tcp = TcpConfig {
                    nodelay: Some(true),
                    keepalive: Some(
                        TcpKeepalive::new()
                            .with_time(TCP_KEEPALIVE_IDLE)
                            .with_interval(TCP_KEEPALIVE_INTERVAL),
                    ),
                    ..TcpConfig::default()
                };
            })
            .set_policy(ReconnectPolicy::new_exponential(
                0,
                RECONNECT_MIN_DELAY_MS,
                RECONNECT_MAX_DELAY_MS,
                2,
            ))
            .build()
            .map_err(|error| QueueError::InvalidUrl(error.details().to_owned()))?;
        // Errors of the connection itself (a refused password, a failed TLS
        // handshake) happen on the client's own task, outside any command:
        // without this they would only show as "Redis is not connected".
        // The listener ends with the client.
        if tokio::runtime::Handle::try_current().is_ok() {
            let _listener = client.on_error(|(error, server)| async move {
                report_connection_error(&error, server.as_ref());
                Ok(())
            });
        }
        // The connection task runs until `quit`; its handle is not needed.
        let _connection = client.connect();
        Ok(Self {
            pusher: client.clone(),
            client,
            queue,
            push: Script::from_lua(include_str!("push.lua")),
            snapshot: Script::from_lua(include_str!("snapshot.lua")),
            start_generation: Script::from_lua(include_str!("start_generation.lua")),
            move_lane: Script::from_lua(include_str!("move_lane.lua")),
            wait: ReplicaWait::OFF,
            command_timeout: timeout,
            target: crate::redact::redact_url(&settings.url).into(),
        })
    }

    /// Where this client connects (`REDIS_URL`, passwords masked): every
    /// warning about Redis names it.
    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn queue(&self) -> &QueueName {
        &self.queue
    }

    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// Whether the URL names a Redis Cluster.
    pub fn is_clustered(&self) -> bool {
        self.client.is_clustered()
    }

    /// Waits until the client is connected, at most `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), QueueError> {
        match tokio::time::timeout(timeout, self.client.wait_for_connect()).await {
            Ok(result) => result.map_err(QueueError::from),
            Err(_) => Err(QueueError::NotConnected),
        }
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

    /// The server's `maxmemory-policy`. Managed services that disable
    /// CONFIG answer with an error.
    pub async fn maxmemory_policy(&self) -> Result<String, QueueError> {
        let reply: Value = self
            .client
            .custom(fred::cmd!("CONFIG"), vec!["GET", "maxmemory-policy"])
            .await?;
        let policy = match reply {
            Value::Array(items) => items.into_iter().nth(1),
            Value::Map(map) => map.inner().into_iter().next().map(|(_, value)| value),
            _ => None,
        };
        policy
            .and_then(|value| value.into_string())
            .ok_or_else(|| QueueError::Reply("CONFIG GET maxmemory-policy".into()))
    }

    /// Moves what an older version left on the lanes' old keys
    /// (`<queue>:high`, `<queue>:low`, `<queue>:dead`) to the new ones.
    /// Does nothing on a cluster, where the old keys sit in other slots.
    pub async fn move_legacy_lanes(&self) -> Result<u64, QueueError> {
        if self.is_clustered() {
            return Ok(0);
        }
        let mut moved = 0;
        for lane in Lane::ALL {
            let Some(old) = self.queue.legacy_key(lane) else {
                continue;
            };
            let count: i64 = self
                .move_lane
                .evalsha_with_reload(&self.client, vec![old, self.queue.key(lane)], ())
                .await?;
            moved += u64::try_from(count).unwrap_or(0);
        }
        Ok(moved)
    }

    /// Deletes keys of this queue (tests clean up with it).
    pub async fn delete(&self, keys: Vec<String>) -> Result<(), QueueError> {
        let _: i64 = self.client.del(keys).await?;
        Ok(())
    }

    /// Opens a new connection when `error` is a command that timed out,
    /// and tells whether it did.
    ///
    /// fred closes a connection as unresponsive only when nothing was
    /// written to it for `unresponsive.max_timeout` while an answer is
    /// due; under steady traffic (the relay's retries, the backlog's
    /// samples) there is always a recent write, so a connection that stops
    /// answering for good (a black-holed path, a proxy that lost its
    /// upstream, a NAT that forgot the flow) would be kept, and every
    /// command on it would time out, until the traffic paused. A timed-out
    /// command is the sign: start over on a fresh connection. Commands in
    /// flight are retried there; a push sent twice is harmless (the
    /// push-once markers).
    pub async fn reconnect_after_timeout(&self, error: &QueueError) -> bool {
        let QueueError::Command(error) = error else {
            return false;
        };
        if *error.kind() != fred::error::ErrorKind::Timeout {
            return false;
        }
        tracing::warn!("a Redis command timed out; reconnecting");
        let limit = self.command_timeout;
        let _ = tokio::time::timeout(limit, self.client.force_reconnection()).await;
        if !self.wait.is_off() {
            // The pushes' own connection (see `queue::replicas`) too.
            let _ = tokio::time::timeout(limit, self.pusher.force_reconnection()).await;
        }
        true
    }

    /// Closes the connections.
    /// Closes the connections, giving Redis at most [`QUIT_TIMEOUT`] (an
    /// unreachable Redis must not hold shutdown past the pod's grace
    /// period).
    pub async fn quit(&self) {
        let quit = async {
            if !self.wait.is_off() {
                let _ = self.pusher.quit().await;
            }
            let _ = self.client.quit().await;
        };
        if tokio::time::timeout(QUIT_TIMEOUT, quit).await.is_err() {
            tracing::debug!("Redis did not answer QUIT in time; closing anyway");
        }
    }
}

/// What a maxmemory-policy other than `noeviction` can cost, for the warning.
pub fn eviction_risk(policy: &str) -> Option<&'static str> {
    match policy {
        SAFE_MAXMEMORY_POLICY => None,
        p if p.starts_with("volatile-") => Some(
            "when memory runs out Redis may evict push-once markers (keys with a lifetime), \
             so a relay retry after a crash can push a duplicate message",
        ),
        _ => Some(
            "when memory runs out Redis may evict queued lists and the queue's state key: \
             waiting messages are lost (the reaper queues their jobs again, late) and \
             markers vanish (duplicates after a relay retry)",
        ),
    }
}
