//! The queue's state hash `{<queue>}:state`: the generation of its Redis
//! data, the database that owns it, and a push counter per lane.
//!
//! The hash has no expiry and is written before the first push of a
//! generation. If it is gone, or holds a generation the database does not
//! know, Redis lost data (restart without persistence, FLUSHALL, failover to
//! an empty replica) and the service starts a new generation (see
//! `outbox::generation`).

use fred::prelude::{HashesInterface, Value};

use super::{Lane, QueueError, RedisQueue};

/// The state hash as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisState {
    pub generation: Option<i64>,
    /// The identity of the database whose service writes this queue.
    pub owner: Option<String>,
}

/// One lane at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneCount {
    pub lane: Lane,
    /// Messages ever pushed onto it in this generation.
    pub pushed: i64,
    /// Messages on it now.
    pub length: i64,
}

impl LaneCount {
    /// Messages workers popped from it in this generation: lanes are popped
    /// from the head only, so the first `popped` positions are gone.
    pub fn popped(&self) -> i64 {
        (self.pushed - self.length).max(0)
    }
}

/// The generation and every lane, read atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub generation: Option<i64>,
    pub lanes: Vec<LaneCount>,
}

impl Snapshot {
    pub fn lane(&self, lane: Lane) -> Option<&LaneCount> {
        self.lanes.iter().find(|count| count.lane == lane)
    }
}

impl RedisQueue {
    /// Reads the generation and the owner.
    pub async fn read_state(&self) -> Result<RedisState, QueueError> {
        let (generation, owner): (Option<String>, Option<String>) = self
            .client
            .hmget(self.queue.tagged("state"), vec!["generation", "owner"])
            .await?;
        Ok(RedisState {
            generation: generation.and_then(|g| g.parse().ok()),
            owner,
        })
    }

    /// Starts generation `new` (counters from zero) if the state still holds
    /// `found`. Returns false when something else changed it first.
    pub async fn start_generation(
        &self,
        found: Option<i64>,
        new: i64,
        owner: &str,
    ) -> Result<bool, QueueError> {
        let found = found.map(|g| g.to_string()).unwrap_or_default();
        let reply: Vec<Value> = self
            .start_generation
            .evalsha_with_reload(
                &self.client,
                vec![self.queue.tagged("state")],
                vec![found, new.to_string(), owner.to_owned()],
            )
            .await?;
        Ok(reply.first().and_then(Value::as_i64) == Some(1))
    }

    /// The generation, and each lane's counter and length, in one step.
    pub async fn snapshot(&self) -> Result<Snapshot, QueueError> {
        let mut keys = vec![self.queue.tagged("state")];
        keys.extend(Lane::ALL.iter().map(|lane| self.queue.key(*lane)));
        let names: Vec<&str> = Lane::ALL.iter().map(|lane| lane.as_str()).collect();
        let reply: Vec<Value> = self
            .snapshot
            .evalsha_with_reload(&self.client, keys, names)
            .await?;
        let mut values = reply.into_iter();
        let generation = values.next().and_then(|v| v.as_i64());
        let mut lanes = Vec::with_capacity(Lane::ALL.len());
        for lane in Lane::ALL {
            let (Some(pushed), Some(length)) = (
                values.next().and_then(|v| v.as_i64()),
                values.next().and_then(|v| v.as_i64()),
            ) else {
                return Err(QueueError::Reply("lane snapshot".into()));
            };
            lanes.push(LaneCount {
                lane,
                pushed,
                length,
            });
        }
        Ok(Snapshot { generation, lanes })
    }
}
