//! The generation of the queue's Redis data, kept in step between
//! PostgreSQL (`queue_generations`) and Redis (the state hash, see
//! `queue::RedisState`).
//!
//! Every push names the generation it expects, and every publication records
//! the generation it was pushed under. When Redis loses its data the state
//! hash is gone (or holds a generation PostgreSQL does not have): [`sync`]
//! then starts a new generation, and the reaper queues again every PENDING
//! job whose message was pushed under an older one, and every dead letter
//! pushed under an older one (for the dead lane, so that a redrive finds it). Under the row lock of
//! `queue_generations`, so replicas that notice the loss at once still start
//! one new generation, not one each.

use std::time::Duration;

use sqlx::PgPool;

use crate::{
    db::bounded,
    queue::{QueueError, RedisQueue},
};

/// Why the generation could not be settled.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error("database error while checking the Redis generation")]
    Database(#[from] sqlx::Error),
    #[error("Redis error while checking the Redis generation")]
    Queue(#[from] QueueError),
    /// The queue's state in Redis names another database: two deployments
    /// with different databases share one queue, and each would take the
    /// other's messages for lost ones.
    #[error(
        "the Redis queue {queue} belongs to another database (owner {owner}); \
         deployments that share a queue must share one database"
    )]
    ForeignQueue { queue: String, owner: String },
    /// Another process changed the state hash while this one held the row
    /// lock (only possible if it ignores the lock); retried later.
    #[error("the Redis state of queue {0} changed while a new generation was being started")]
    Raced(String),
}

/// What [`sync`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    /// The generation to push under.
    pub generation: i64,
    /// True when Redis had lost its data and a new generation was started.
    pub lost: bool,
}

/// The database's identity, stored in the queue's state so that two
/// databases never share a queue unnoticed.
pub async fn database_identity(pool: &PgPool, limit: Duration) -> Result<String, sqlx::Error> {
    let identity: uuid::Uuid = bounded(
        limit,
        sqlx::query_scalar("SELECT marker_namespace FROM relay_identity").fetch_one(pool),
    )
    .await?;
    Ok(identity.simple().to_string())
}

/// Brings PostgreSQL's and Redis's generation into agreement and returns
/// it; starts a new one when Redis lost its data. The first use of a queue
/// starts generation 1 (and moves messages an older version left on the
/// lanes' old keys).
pub async fn sync(
    pool: &PgPool,
    queue: &RedisQueue,
    owner: &str,
    limit: Duration,
) -> Result<Synced, GenerationError> {
    let name = queue.queue().as_str();
    let mut tx = bounded(limit, pool.begin()).await?;
    bounded(
        limit,
        sqlx::query(
            "INSERT INTO queue_generations (queue, generation) VALUES ($1, 0) \
             ON CONFLICT (queue) DO NOTHING",
        )
        .bind(name)
        .execute(&mut *tx),
    )
    .await?;
    let known: i64 = bounded(
        limit,
        sqlx::query_scalar("SELECT generation FROM queue_generations WHERE queue = $1 FOR UPDATE")
            .bind(name)
            .fetch_one(&mut *tx),
    )
    .await?;

    let state = queue.read_state().await?;
    if let Some(other) = state.owner.as_deref().filter(|o| *o != owner) {
        return Err(GenerationError::ForeignQueue {
            queue: name.to_owned(),
            owner: other.to_owned(),
        });
    }
    if known > 0 && state.generation == Some(known) {
        return Ok(Synced {
            generation: known,
            lost: false,
        });
    }
    let first_use = known == 0 && state.generation.is_none();
    let next = known.max(state.generation.unwrap_or(0)) + 1;
    if !queue
        .start_generation(state.generation, next, owner)
        .await?
    {
        return Err(GenerationError::Raced(name.to_owned()));
    }
    bounded(
        limit,
        sqlx::query("UPDATE queue_generations SET generation = $2 WHERE queue = $1")
            .bind(name)
            .bind(next)
            .execute(&mut *tx),
    )
    .await?;
    bounded(limit, tx.commit()).await?;

    if first_use {
        let moved = queue.move_legacy_lanes().await?;
        if moved > 0 {
            tracing::info!(
                queue = name,
                moved,
                "moved messages from the lanes' old keys (<queue>:high) to the new ones ({{<queue>}}:high)"
            );
        }
        tracing::info!(queue = name, generation = next, "Redis queue initialised");
    } else {
        tracing::warn!(
            queue = name,
            found = ?state.generation,
            expected = known,
            generation = next,
            "Redis lost the queue's data (restart without persistence, FLUSHALL or failover to an \
             empty replica); every PENDING job whose message was there is queued again"
        );
    }
    Ok(Synced {
        generation: next,
        lost: !first_use,
    })
}
