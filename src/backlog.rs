//! Backpressure: creates are refused while too many jobs wait.
//!
//! Waiting means on a Redis lane (high, normal, low) or still in the outbox.
//! Creates never do I/O for it: they read the last reading and add the jobs
//! this process accepted since, so a burst of creates costs no round trip
//! each and still cannot overshoot the limit by more than other replicas
//! accept within one reading. A reading older than [`SAMPLE_TTL`] makes the
//! first create that finds it ask [`Backlog::run`], the one task that
//! reads, for a new one and wait for it at most [`REFRESH_WAIT`]; the
//! creates meanwhile go on with the old one. A slow PostgreSQL or a Redis
//! that does not answer delays the next reading, not the creates (no lock
//! is held across I/O). Only a process without a reading at all (just
//! started), or with one older than [`STALE_AFTER`] (the reading task is
//! not running), makes creates wait, at most [`READING_WAIT`].
//!
//! A reading that fails (PostgreSQL down) is kept for as long as a good one:
//! during an outage creates get UNAVAILABLE at once.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::PgPool;
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    outbox::{EXACT_UP_TO, outbox_size},
    queue::{Lane, RedisQueue},
    supervise::Beat,
};

/// How long a reading answers creates before the next one is asked for.
pub const SAMPLE_TTL: Duration = Duration::from_millis(250);

/// Longest a reading waits for Redis; Redis counts as empty when it is down
/// (the outbox then holds everything that waits).
const REDIS_SAMPLE_TIMEOUT: Duration = Duration::from_millis(500);

/// Longest a reading waits for PostgreSQL before it counts as failed.
const DATABASE_SAMPLE_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest one reading can take: PostgreSQL twice (a lost session is
/// asked again at once) and Redis.
const READING_BOUND: Duration = Duration::from_millis(2500);

/// A reading this old is not used: the task that reads has stopped (or has
/// not started yet). Well above [`SAMPLE_TTL`] plus [`READING_BOUND`].
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// Longest a create waits for a reading when there is none to use.
pub const READING_WAIT: Duration = Duration::from_secs(3);

/// Longest the create that asks for a new reading waits for it before it
/// goes on with the old one.
pub const REFRESH_WAIT: Duration = Duration::from_millis(50);

/// How often the reading task beats while nobody asks it for anything.
const IDLE_BEAT: Duration = Duration::from_secs(1);

/// Longest the reading task may go without beating: an idle beat, then a
/// reading.
pub const MAX_QUIET: Duration = IDLE_BEAT.saturating_add(READING_BOUND);

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
    /// The last reading failed moments ago (it is asked again), or there
    /// was none to use and none came within [`READING_WAIT`].
    #[error("cannot count the outbox: PostgreSQL did not answer moments ago")]
    RecentlyFailed,
}

/// One reading of the backlog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Sum of the high, normal and low lanes (0 when Redis is unreachable).
    pub in_redis: u64,
    /// Unpublished outbox rows: counted up to the limit (or up to
    /// `outbox::EXACT_UP_TO` when the limit is higher), PostgreSQL's
    /// estimate beyond.
    pub in_outbox: u64,
    pub redis_reachable: bool,
}

/// A reading and when it was taken; `sample` is `None` when it failed.
#[derive(Debug, Clone, Copy)]
struct Reading {
    taken: Instant,
    sample: Option<Sample>,
}

/// The admission gate in front of creates.
pub struct Backlog {
    pool: PgPool,
    queue: RedisQueue,
    /// 0 turns backpressure off.
    limit: u64,
    /// The latest reading; written by [`Backlog::run`] only.
    reading: watch::Sender<Option<Reading>>,
    /// Asks [`Backlog::run`] for a new reading.
    wanted: Notify,
    /// A create has asked for a new reading that has not come yet: the
    /// others do not wait for it.
    asked: AtomicBool,
    /// Jobs admitted by this process since the reading started.
    admitted_since_sample: AtomicU64,
}

impl Backlog {
    pub fn new(pool: PgPool, queue: RedisQueue, limit: u64) -> Self {
        Self {
            pool,
            queue,
            limit,
            reading: watch::Sender::new(None),
            wanted: Notify::new(),
            asked: AtomicBool::new(false),
            admitted_since_sample: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Admits `adding` new jobs or refuses them with
    /// [`BacklogError::Full`]. Stores nothing either way, and waits for
    /// nothing while a reading less than [`STALE_AFTER`] old exists.
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

    /// The last reading. One older than [`SAMPLE_TTL`] is refreshed: the
    /// one create that finds it so first asks [`Backlog::run`] for a new
    /// reading and waits for it at most [`REFRESH_WAIT`] (a reading usually
    /// takes a millisecond or two), then goes on with the freshest there
    /// is; every other create meanwhile uses the old one at once. Only when
    /// there is no reading younger than [`STALE_AFTER`] do creates wait,
    /// at most [`READING_WAIT`].
    async fn current(&self) -> Result<Sample, BacklogError> {
        let last = *self.reading.borrow();
        let reading = match last {
            Some(reading) if reading.taken.elapsed() < SAMPLE_TTL => reading,
            Some(reading) if reading.taken.elapsed() < STALE_AFTER => {
                if self.asked.swap(true, Ordering::AcqRel) {
                    // A new reading is on its way: the old one meanwhile.
                    reading
                } else {
                    self.wanted.notify_one();
                    self.newer_than(reading.taken, REFRESH_WAIT)
                        .await
                        .unwrap_or(reading)
                }
            }
            _ => {
                self.asked.store(true, Ordering::Release);
                self.wanted.notify_one();
                let now = Instant::now();
                let taken = now.checked_sub(STALE_AFTER).unwrap_or(now);
                self.newer_than(taken, READING_WAIT)
                    .await
                    .ok_or(BacklogError::RecentlyFailed)?
            }
        };
        reading.sample.ok_or(BacklogError::RecentlyFailed)
    }

    /// The first reading taken after `taken`, waiting for it at most `wait`.
    async fn newer_than(&self, taken: Instant, wait: Duration) -> Option<Reading> {
        let mut readings = self.reading.subscribe();
        let newer = |r: &Option<Reading>| r.is_some_and(|reading| reading.taken > taken);
        match tokio::time::timeout(wait, readings.wait_for(newer)).await {
            Ok(Ok(reading)) => *reading,
            _ => None,
        }
    }

    /// Takes a reading each time a create asks for one (at most one at a
    /// time, and none while the last is younger than [`SAMPLE_TTL`]), until
    /// `token` is cancelled. Beats at least every [`MAX_QUIET`].
    pub async fn run(self: Arc<Self>, token: CancellationToken, beat: Beat) {
        loop {
            beat.beat();
            tokio::select! {
                () = token.cancelled() => return,
                () = self.wanted.notified() => {}
                () = tokio::time::sleep(IDLE_BEAT) => continue,
            }
            let fresh = self
                .reading
                .borrow()
                .is_some_and(|reading| reading.taken.elapsed() < SAMPLE_TTL);
            if !fresh {
                self.refresh().await;
            }
            self.asked.store(false, Ordering::Release);
        }
    }

    /// One reading, stored for the creates. The jobs admitted while it ran
    /// may or may not be in it: they stay counted on top of it.
    async fn refresh(&self) {
        let admitted_before = self.admitted_since_sample.load(Ordering::Relaxed);
        // Boxed: the reading's future (a query and three Redis calls) is
        // large and rarely run.
        let mut measured = Box::pin(crate::db::bounded(
            DATABASE_SAMPLE_TIMEOUT,
            self.measure(Some(self.limit)),
        ))
        .await;
        // A session ended under the reading (a pooler restart, a failover
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
        if let Err(error) = &measured {
            tracing::warn!(
                error = %crate::telemetry::error_chain(error),
                "cannot read the backlog; creates are refused with UNAVAILABLE until a reading succeeds"
            );
        }
        self.admitted_since_sample
            .fetch_sub(admitted_before, Ordering::Relaxed);
        self.reading.send_replace(Some(Reading {
            taken: Instant::now(),
            sample: measured.ok(),
        }));
    }

    /// Reads the lanes and the outbox. With `cap`, the outbox is counted
    /// only up to it (and up to `outbox::EXACT_UP_TO` at most: PostgreSQL's
    /// estimate beyond), which keeps the query cheap however large it
    /// grows; without, up to `outbox::EXACT_UP_TO`.
    pub async fn measure(&self, cap: Option<u64>) -> Result<Sample, BacklogError> {
        let count_up_to = cap
            .map_or(EXACT_UP_TO, |cap| i64::try_from(cap).unwrap_or(i64::MAX))
            .min(EXACT_UP_TO);
        let outbox = outbox_size(&self.pool, count_up_to).await?;
        let mut sample = Sample {
            in_outbox: u64::try_from(outbox.rows).unwrap_or(0),
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
