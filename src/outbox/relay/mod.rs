//! The relay: moves committed outbox rows to the Redis lanes.
//!
//! One drain (a round) is three steps, each a public method so that tests
//! can stop between them (a crash between the push and the commit is the
//! case that matters): [`Relay::claim`] takes the oldest rows with `FOR
//! UPDATE SKIP LOCKED` (so any number of replicas can drain one outbox) and
//! deletes them in a transaction ([`Relay::claim_split`]: in several
//! transactions at once, each taking a share); [`Relay::publish`] pushes
//! them with one script call, every lane at once, each row at most once
//! (see `queue::push`); [`Relay::commit`] records where each message went
//! and commits. A relay that dies before the commit leaves the rows to the
//! next attempt, whose push skips what already reached Redis. Each push is
//! also checked against the highest positions PostgreSQL recorded: a lane
//! counter below them means a Redis failover dropped pushes, which the
//! relay records for the reaper (see [`Relay::publish`]).
//!
//! - `claim`: the claiming transactions and what they read ([`Claimed`]).
//! - `publish`: the push under the current generation, and the check for
//!   pushes Redis lost ([`Published`]).
//! - `commit`: recording each message's publication, and the commits.
//! - `drain`: one round ([`Relay::drain_once`]) and the pipelined rounds
//!   of a drain ([`Relay::drain_until_idle`]).
//! - `run`: the loop: wake-ups, polls, lingering and backoff.

mod claim;
mod commit;
mod drain;
mod publish;
mod run;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64},
    },
    time::Duration,
};

pub use claim::{Claimed, OutboxRow};
pub use drain::FULL_SCAN_EVERY;
pub use publish::Published;
use sqlx::PgPool;

use super::generation::{self, GenerationError};
use crate::{
    metrics::Metrics,
    queue::{Lane, QueueError, RedisQueue},
    wake::Wake,
};

/// Errors of one drain.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox database error")]
    Database(#[from] sqlx::Error),
    #[error("publishing to Redis failed")]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Generation(#[from] GenerationError),
    /// A round's commit task panicked or was cancelled; its transactions
    /// rolled back.
    #[error("the commit of a relay round did not finish: {0}")]
    CommitTask(String),
    /// Redis no longer holds the generation this relay pushes under; nothing
    /// was pushed. The next drain settles the generation first.
    #[error("Redis does not hold generation {expected} of the queue (found {found:?})")]
    StaleGeneration { expected: i64, found: Option<i64> },
}

/// Tunables of the relay.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows claimed per round (one script call pushes them all).
    pub batch_size: u32,
    /// While a backlog lasts (the last round was full), each round's rows
    /// are claimed by this many transactions at once, each taking its share
    /// of the batch; PostgreSQL then works on the claim with as many
    /// backends. 1 claims every round in one transaction.
    pub claimers: usize,
    /// Drain at least this often even when nothing woke the relay.
    pub poll_interval: Duration,
    /// Longest pause between attempts while Redis or PostgreSQL is down.
    pub max_backoff: Duration,
    /// Under load (the last batch was not tiny), wait this long after a
    /// wake-up before draining so that the rows of concurrent commits go out
    /// in one batch (one transaction, one script call) instead of a few
    /// each. Zero always drains at once.
    pub linger: Duration,
    /// How long Redis remembers that an outbox row was pushed. Must cover the
    /// longest time a claimed batch can stay uncommitted and be retried.
    pub marker_ttl: Duration,
    /// Longest any one database call may take (see `db::bounded`).
    pub call_timeout: Duration,
}

/// What one drain did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Rows taken out of the outbox.
    pub claimed: usize,
    /// Messages that reached a list; the rest had been pushed by an earlier
    /// attempt that did not commit.
    pub pushed: u64,
}

/// Moves outbox rows to Redis.
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    queue: RedisQueue,
    settings: RelaySettings,
    metrics: Arc<Metrics>,
    /// The database's identity, written into the queue's Redis state.
    owner: String,
    /// The Redis generation pushes are made under; 0 until settled.
    generation: Arc<AtomicI64>,
    /// Woken when Redis turned out to have lost data: the reaper then
    /// queues the lost jobs again without waiting for its next pass.
    lost_data: Wake,
    /// Set when a plain insert of publications met an existing one: the
    /// next round records with an upsert.
    upsert_publications: Arc<AtomicBool>,
    /// The highest counter this relay's pushes found per generation and
    /// lane, including rounds not committed yet (see `find_rollbacks`).
    seen: Arc<Mutex<HashMap<(i64, Lane), i64>>>,
}

impl Relay {
    /// Reads the database's identity.
    pub async fn new(
        pool: PgPool,
        queue: RedisQueue,
        settings: RelaySettings,
        metrics: Arc<Metrics>,
        lost_data: Wake,
    ) -> Result<Self, RelayError> {
        let owner = generation::database_identity(&pool, settings.call_timeout).await?;
        Ok(Self {
            pool,
            queue,
            settings,
            metrics,
            owner,
            generation: Arc::new(AtomicI64::new(0)),
            lost_data,
            upsert_publications: Arc::new(AtomicBool::new(false)),
            seen: Arc::new(Mutex::new(HashMap::new())),
        })
    }
}
