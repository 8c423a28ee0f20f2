//! Confirming that the relay's pushes reached Redis replicas (`WAIT`).
//!
//! Redis replicates asynchronously: a push the master acknowledged can be
//! lost when a replica that had not received it is promoted (Sentinel or
//! Cluster failover). With [`ReplicaWait`] set, a push counts only once
//! `WAIT <replicas> <timeout>` says that many replicas hold it; otherwise it
//! fails like any other Redis error, the relay's transaction rolls back, and
//! the retry is idempotent on whichever server has the data (the push-once
//! markers travel with the lanes).
//!
//! `WAIT` counts the writes of the connection it is sent on. Three things
//! keep that honest: it goes to the node serving the queue's hash slot on
//! the pushes' own connection (also on a cluster); it is never re-sent on a
//! new connection; and a reconnection between the push and the `WAIT`
//! makes the push unconfirmed. `WAIT` holds its connection until it
//! answers, so pushes that wait use a connection of their own and the
//! API's reads (lane lengths, stats) never queue behind one. The push script always writes (it renews its
//! markers' lifetimes), so `WAIT` also covers what an earlier, unconfirmed
//! attempt of the same batch wrote.

use std::time::Duration;

use fred::{
    prelude::{ClientLike, EventInterface, Options, Server},
    types::{ClusterHash, CustomCommand},
    util::redis_keyslot,
};
use tokio::sync::broadcast::{Receiver, error::TryRecvError};

use super::{Lane, QueueError, RedisQueue};

/// How many replicas must hold a push before it counts
/// (`REDIS_WAIT_REPLICAS`, `REDIS_WAIT_TIMEOUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaWait {
    /// 0 turns the wait off.
    pub replicas: u32,
    /// How long `WAIT` blocks before answering with fewer replicas.
    pub timeout: Duration,
}

impl ReplicaWait {
    /// No wait: a push counts once the master has it.
    pub const OFF: ReplicaWait = ReplicaWait {
        replicas: 0,
        timeout: Duration::ZERO,
    };

    pub fn is_off(&self) -> bool {
        self.replicas == 0
    }
}

/// Reconnections of the client seen since a write began.
pub(super) struct ConnectionWatch(Receiver<Server>);

impl ConnectionWatch {
    fn reconnected(&mut self) -> bool {
        !matches!(self.0.try_recv(), Err(TryRecvError::Empty))
    }
}

impl RedisQueue {
    /// Pushes count only once `wait.replicas` replicas confirm them. They
    /// then go through a connection of their own (connecting in the
    /// background), as `WAIT` holds its connection until it answers. Call
    /// once, right after [`connect`](Self::connect).
    pub fn with_replica_wait(mut self, wait: ReplicaWait) -> Self {
        if !wait.is_off() && self.wait.is_off() {
            let pusher = self.client.clone_new();
            // The connection task runs until `quit`.
            let _connection = pusher.connect();
            self.pusher = pusher;
        }
        self.wait = wait;
        self
    }

    pub fn replica_wait(&self) -> ReplicaWait {
        self.wait
    }

    /// Called before a write whose replication [`confirm_replicated`]
    /// will check; `None` when no confirmation is asked for.
    ///
    /// [`confirm_replicated`]: Self::confirm_replicated
    pub(super) async fn watch_connection(&self) -> Option<ConnectionWatch> {
        if self.wait.is_off() {
            return None;
        }
        // A first connection made after the subscription would look like a
        // reconnection: let a connection that is coming up finish first.
        let _ = tokio::time::timeout(self.wait.timeout, self.pusher.wait_for_connect()).await;
        Some(ConnectionWatch(self.pusher.reconnect_rx()))
    }

    /// Sends `WAIT` on the connection the write used and fails unless
    /// enough replicas confirm it and the connection stayed the same.
    pub(super) async fn confirm_replicated(
        &self,
        mut watch: ConnectionWatch,
    ) -> Result<(), QueueError> {
        let required = self.wait.replicas;
        let slot = redis_keyslot(self.queue.key(Lane::Normal).as_bytes());
        // Never re-sent: on another connection WAIT would count that
        // connection's writes, not the push's.
        let once = Options {
            max_attempts: Some(1),
            ..Options::default()
        };
        let timeout_ms = i64::try_from(self.wait.timeout.as_millis()).unwrap_or(i64::MAX);
        let acknowledged: i64 = self
            .pusher
            .with_options(&once)
            .custom(
                CustomCommand::new_static("WAIT", ClusterHash::Custom(slot), true),
                vec![i64::from(required), timeout_ms],
            )
            .await?;
        if watch.reconnected() {
            return Err(QueueError::Reconnected);
        }
        if acknowledged < i64::from(required) {
            return Err(QueueError::NotReplicated {
                acknowledged,
                required,
            });
        }
        Ok(())
    }
}
