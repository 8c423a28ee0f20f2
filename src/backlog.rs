//! Backpressure: creates are refused while too many jobs wait.
//!
//! Waiting means on a Redis lane (high, normal, low) or still in the outbox.
//! The figure is sampled at most every [`SAMPLE_TTL`] and the jobs accepted
//! since are added locally, so a burst of creates costs no Redis round trip
//! each and still cannot overshoot the limit by more than other replicas
//! accept within one sample.
//!
//! A sample that fails (PostgreSQL down) is remembered for as long as a good
//! one, and one sample is taken at a time, bounded in time: during an outage
//! concurrent callers get UNAVAILABLE at once instead of queueing one behind
//! another for a database timeout each.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use sqlx::PgPool;
use tokio::{sync::Mutex, time::Instant};

use crate::queue::{Lane, RedisQueue};

/// How long a sampled backlog is reused.
pub const SAMPLE_TTL: Duration = Duration::from_millis(250);

/// Longest a sample waits for Redis; Redis counts as empty when it is down
/// (the outbox then holds everything that waits).
const REDIS_SAMPLE_TIMEOUT: Duration = Duration::from_millis(500);

/// Longest a sample waits for PostgreSQL before the check fails.
const DATABASE_SAMPLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a create was refused or could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum BacklogError {
    #[error(
        "the queue backlog is full: {waiting} jobs wait (Redis lanes {in_redis}, outbox {in_outbox}) \
         and {adding} more would pass QUEUE_MAX_BACKLOG={limit}; retry later"
    )]
    Full {
        waiting: u64,
        in_redis: u64,
        in_outbox: u64,
        adding: u64,
        limit: u64,
    },
    #[error("cannot count the outbox")]
    Database(#[from] sqlx::Error),
    /// The last sample failed moments ago; not asked again yet.
    #[error("cannot count the outbox: PostgreSQL did not answer moments ago")]
    RecentlyFailed,
}

/// One reading of the backlog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Sum of the high, normal and low lanes (0 when Redis is unreachable).
    pub in_redis: u64,
    /// Unpublished outbox rows, counted up to the limit only.
    pub in_outbox: u64,
    pub redis_reachable: bool,
}

/// The admission gate in front of creates.
pub struct Backlog {
    pool: PgPool,
    queue: RedisQueue,
    /// 0 turns backpressure off.
    limit: u64,
    /// The last sample and when it was taken; `None` inside when it failed.
    sample: Mutex<Option<(Instant, Option<Sample>)>>,
    /// Jobs admitted by this process since the last sample.
    admitted_since_sample: AtomicU64,
}

impl Backlog {
    pub fn new(pool: PgPool, queue: RedisQueue, limit: u64) -> Self {
        Self {
            pool,
            queue,
            limit,
            sample: Mutex::new(None),
            admitted_since_sample: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Admits `adding` new jobs or refuses them with
    /// [`BacklogError::Full`]. Stores nothing either way.
    pub async fn admit(&self, adding: u64) -> Result<(), BacklogError> {
        if self.limit == 0 {
            return Ok(());
        }
        let sample = self.current().await?;
        let admitted = self.admitted_since_sample.load(Ordering::Relaxed);
        let waiting = sample.in_redis + sample.in_outbox + admitted;
        if waiting.saturating_add(adding) > self.limit {
            return Err(BacklogError::Full {
                waiting,
                in_redis: sample.in_redis,
                in_outbox: sample.in_outbox + admitted,
                adding,
                limit: self.limit,
            });
        }
        self.admitted_since_sample
            .fetch_add(adding, Ordering::Relaxed);
        Ok(())
    }

    /// The cached sample, or a fresh one when it is too old. A failure is
    /// cached as long as a sample.
    async fn current(&self) -> Result<Sample, BacklogError> {
        let mut cached = self.sample.lock().await;
        if let Some((taken, sample)) = *cached
            && taken.elapsed() < SAMPLE_TTL
        {
            return sample.ok_or(BacklogError::RecentlyFailed);
        }
        // Boxed: the sample's future (a query and three Redis calls) is
        // about 40 KB, and embedded it would make every create's future as
        // large, copied on every call, though a sample is taken only every
        // SAMPLE_TTL.
        let mut measured = Box::pin(crate::db::bounded(
            DATABASE_SAMPLE_TIMEOUT,
            self.measure(Some(self.limit)),
        ))
        .await;
        // A session ended under the sample (a pooler restart, a failover
        // proxy) is not an outage: ask once more at once, on another
        // connection, before refusing creates for a whole SAMPLE_TTL.
        if let Err(BacklogError::Database(error)) = &measured
            && crate::db::connection_lost(error)
            && !matches!(error, sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
        {
            measured = Box::pin(crate::db::bounded(
                DATABASE_SAMPLE_TIMEOUT,
                self.measure(Some(self.limit)),
            ))
            .await;
        }
        *cached = Some((Instant::now(), measured.as_ref().ok().copied()));
        self.admitted_since_sample.store(0, Ordering::Relaxed);
        measured
    }

    /// Reads the lanes and the outbox. With `cap`, the outbox is counted
    /// only up to it, which keeps the query cheap however large it grows.
    pub async fn measure(&self, cap: Option<u64>) -> Result<Sample, BacklogError> {
        let in_outbox: i64 = match cap {
            Some(cap) => {
                sqlx::query_scalar("SELECT count(*) FROM (SELECT 1 FROM outbox LIMIT $1) AS capped")
                    .bind(i64::try_from(cap.saturating_add(1)).unwrap_or(i64::MAX))
                    .fetch_one(&self.pool)
                    .await?
            }
            None => {
                sqlx::query_scalar("SELECT count(*) FROM outbox")
                    .fetch_one(&self.pool)
                    .await?
            }
        };
        let mut sample = Sample {
            in_outbox: u64::try_from(in_outbox).unwrap_or(0),
            ..Sample::default()
        };
        if self.queue.is_connected() {
            let lanes = async {
                let (high, normal, low) = tokio::join!(
                    self.queue.queue_length(Lane::High),
                    self.queue.queue_length(Lane::Normal),
                    self.queue.queue_length(Lane::Low),
                );
                Ok::<u64, crate::queue::QueueError>(high? + normal? + low?)
            };
            if let Ok(Ok(in_redis)) = tokio::time::timeout(REDIS_SAMPLE_TIMEOUT, lanes).await {
                sample.in_redis = in_redis;
                sample.redis_reachable = true;
            }
        }
        Ok(sample)
    }
}
