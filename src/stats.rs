//! Queue statistics: what waits where. One reading shared by GetQueueStats,
//! the HTTP `/api/v1/stats` (the dashboard) and the `stats` command.
//!
//! The outbox half comes from PostgreSQL (rows not yet published, counted
//! up to `outbox::EXACT_UP_TO` and estimated beyond, and the age of the
//! oldest), the Redis half from one atomic read of every lane's
//! length and push counter. Redis being down is part of the answer
//! (`redis_reachable: false`), not an error: jobs then wait in the outbox.

use std::time::Duration;

use sqlx::PgPool;

use crate::{
    db::bounded,
    outbox::{EXACT_UP_TO, outbox_size},
    queue::{Lane, QueueError, QueueName, RedisQueue},
};

/// Longest a reading waits for Redis before reporting it unreachable.
pub const STATS_REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// One Redis list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneStats {
    pub lane: Lane,
    /// Its Redis key, e.g. `{translation_jobs}:high`.
    pub key: String,
    pub length: i64,
    /// Messages ever pushed onto it since Redis's data began; its growth is
    /// the relay's rate.
    pub pushed: i64,
}

/// A reading of the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    pub queue: QueueName,
    /// Every lane, dead letters included; empty when Redis is unreachable.
    pub lanes: Vec<LaneStats>,
    /// Outbox rows not yet published: exact up to
    /// [`EXACT_UP_TO`](crate::outbox::EXACT_UP_TO), PostgreSQL's estimate
    /// above (see `outbox_backlog_estimated`).
    pub outbox_backlog: i64,
    /// Whether `outbox_backlog` (and so `backlog`) is an estimate.
    pub outbox_backlog_estimated: bool,
    /// Age of the oldest of them; `None` when the outbox is empty.
    pub oldest_unpublished_age: Option<Duration>,
    /// Length of the dead lane.
    pub dead_letters: i64,
    pub redis_reachable: bool,
    /// Waiting jobs as backpressure counts them: the high, normal and low
    /// lanes plus the outbox.
    pub backlog: i64,
    /// `QUEUE_MAX_BACKLOG` (0: no limit).
    pub backlog_limit: u64,
    /// Redis's `maxmemory-policy`; empty when it could not be read.
    pub redis_maxmemory_policy: String,
}

impl QueueStats {
    /// Messages pushed onto all lanes since Redis's data began.
    pub fn pushed_total(&self) -> i64 {
        self.lanes.iter().map(|lane| lane.pushed).sum()
    }
}

/// Reads the outbox (bounded by `call_timeout`) and Redis (bounded by
/// [`STATS_REDIS_TIMEOUT`]). Fails only when PostgreSQL does.
pub async fn read_stats(
    pool: &PgPool,
    queue: &RedisQueue,
    backlog_limit: u64,
    call_timeout: Duration,
) -> Result<QueueStats, sqlx::Error> {
    let outbox = bounded(call_timeout, outbox_size(pool, EXACT_UP_TO)).await?;
    let mut stats = QueueStats {
        queue: queue.queue().clone(),
        lanes: Vec::new(),
        outbox_backlog: outbox.rows,
        outbox_backlog_estimated: outbox.estimated,
        oldest_unpublished_age: outbox.oldest_age,
        dead_letters: 0,
        redis_reachable: false,
        backlog: outbox.rows,
        backlog_limit,
        redis_maxmemory_policy: String::new(),
    };
    if !queue.is_connected() {
        return Ok(stats);
    }
    let read = async {
        let snapshot = queue.snapshot().await?;
        // Managed services may refuse CONFIG: the rest still counts.
        let policy = queue.maxmemory_policy().await.unwrap_or_default();
        Ok::<_, QueueError>((snapshot, policy))
    };
    if let Ok(Ok((snapshot, policy))) = tokio::time::timeout(STATS_REDIS_TIMEOUT, read).await {
        stats.redis_reachable = true;
        stats.redis_maxmemory_policy = policy;
        for count in snapshot.lanes {
            if count.lane == Lane::Dead {
                stats.dead_letters = count.length;
            } else {
                stats.backlog = stats.backlog.saturating_add(count.length);
            }
            stats.lanes.push(LaneStats {
                lane: count.lane,
                key: queue.queue().key(count.lane),
                length: count.length,
                pushed: count.pushed,
            });
        }
    }
    Ok(stats)
}
