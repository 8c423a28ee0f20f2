//! The relay: moves committed outbox rows to the Redis lanes.
//!
//! One drain is three steps, each a public method so that tests can stop
//! between them (a crash between the push and the commit is the case that
//! matters): [`Relay::claim`] takes the oldest rows with `FOR UPDATE SKIP
//! LOCKED` (so any number of replicas can drain one outbox) and deletes them
//! in a transaction; [`Relay::publish`] pushes them with one script call,
//! every lane at once, each row at most once (see `queue::push`);
//! [`Relay::commit`] records where each message went and commits. A relay
//! that dies before the commit leaves the rows to the next attempt, whose
//! push skips what already reached Redis.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, instrument};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

use super::generation::{self, GenerationError};
use crate::{
    db::bounded,
    metrics::Metrics,
    queue::{Lane, OutboxMessage, Placement, PushOutcome, QueueError, RedisQueue},
    supervise::Beat,
    telemetry::{error_chain, traces},
    wake::Wake,
};

/// The relay lingers after a wake-up only when its last batch had at least
/// this many rows, i.e. when commits arrive faster than it drains them.
const LINGER_FROM_BATCH: usize = 16;

/// Shortest pause after a failed drain; doubles up to the configured maximum.
const MIN_BACKOFF: Duration = Duration::from_millis(50);

/// Errors of one drain.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox database error")]
    Database(#[from] sqlx::Error),
    #[error("publishing to Redis failed")]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Generation(#[from] GenerationError),
    /// Redis no longer holds the generation this relay pushes under; nothing
    /// was pushed. The next drain settles the generation first.
    #[error("Redis does not hold generation {expected} of the queue (found {found:?})")]
    StaleGeneration { expected: i64, found: Option<i64> },
}

/// Tunables of the relay.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows claimed per transaction.
    pub batch_size: u32,
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

/// One claimed outbox row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub job_id: Uuid,
    pub lane: String,
    pub payload: String,
    pub created_at: DateTime<Utc>,
    /// The job's attempt the message is for.
    pub attempt: i32,
    /// Random, non-zero: tells this row from an earlier one with the same id.
    pub token: i32,
}

/// Rows taken out of the outbox in a transaction that is still open.
pub struct Claimed {
    tx: Transaction<'static, Postgres>,
    pub rows: Vec<OutboxRow>,
    /// When the claim began: the batch's latency runs from here to the commit.
    started: Instant,
}

/// Where the claimed rows' messages went.
#[derive(Debug, Clone)]
pub struct Published {
    generation: i64,
    pub placements: Vec<Placement>,
}

impl Published {
    /// Messages that reached a lane now (the rest had been pushed by an
    /// earlier attempt that did not commit).
    pub fn pushed(&self) -> u64 {
        self.placements.iter().filter(|p| p.pushed).count() as u64
    }
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
        })
    }

    /// Claims, publishes and commits one batch. An empty outbox gives
    /// `claimed == 0`.
    #[instrument(skip_all)]
    pub async fn drain_once(&self) -> Result<Drained, RelayError> {
        if !self.queue.is_connected() {
            // Do not hold rows locked while the client is known to be down.
            return Err(QueueError::NotConnected.into());
        }
        let claimed = self.claim().await?;
        if claimed.rows.is_empty() {
            return Ok(Drained::default());
        }
        self.deliver(claimed).await
    }

    /// Publishes and commits one claimed batch in a span of its own (a root:
    /// a batch serves many traces), linked to the span that created each
    /// message, as named by the message's `traceparent`.
    async fn deliver(&self, claimed: Claimed) -> Result<Drained, RelayError> {
        let span = tracing::info_span!(
            parent: None,
            "relay batch",
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "redis",
            messaging.operation.type = "send",
            messaging.destination.name = %self.queue.queue().as_str(),
            messaging.batch.message_count = claimed.rows.len(),
        );
        if traces::enabled() {
            for row in &claimed.rows {
                if let Some(creator) = message_traceparent(&row.payload)
                    .as_deref()
                    .and_then(traces::span_context)
                {
                    span.add_link(creator);
                }
            }
        }
        let delivered = async {
            let published = self.publish(&claimed).await?;
            self.commit(claimed, published).await
        }
        .instrument(span.clone())
        .await;
        if delivered.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        delivered
    }

    /// Begins a transaction and claims (deletes) the oldest unclaimed rows
    /// in it, in id order.
    ///
    /// The transaction commits asynchronously (`synchronous_commit = off`,
    /// for this transaction only): the relay's commit need not wait for the
    /// WAL flush. If PostgreSQL crashes before the flush, the deleted rows
    /// come back and are pushed again, and the push-once markers drop the
    /// copies. The outbox rows themselves were written by synchronous
    /// commits.
    pub async fn claim(&self) -> Result<Claimed, RelayError> {
        let started = Instant::now();
        let limit = self.settings.call_timeout;
        let mut tx = bounded(limit, self.pool.begin()).await?;
        let mut rows = bounded(
            limit,
            sqlx::query_as::<_, OutboxRow>(
                "WITH claimed AS ( \
                     DELETE FROM outbox WHERE id IN ( \
                         SELECT id FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
                     RETURNING id, job_id, lane, payload, created_at, attempt, token), \
                 async_commit AS ( \
                     SELECT set_config('synchronous_commit', 'off', true)) \
                 SELECT c.id, c.job_id, c.lane, c.payload, c.created_at, c.attempt, c.token \
                 FROM claimed AS c, async_commit",
            )
            .bind(i64::from(self.settings.batch_size))
            .fetch_all(&mut *tx),
        )
        .await?;
        // RETURNING does not promise an order.
        rows.sort_unstable_by_key(|row| row.id);
        Ok(Claimed { tx, rows, started })
    }

    /// Pushes the claimed rows, each lane in id order, under the current
    /// Redis generation (settling it first when unknown).
    pub async fn publish(&self, claimed: &Claimed) -> Result<Published, RelayError> {
        let generation = match self.generation.load(Ordering::Acquire) {
            0 => self.settle_generation().await?,
            known => known,
        };
        let messages: Vec<OutboxMessage<'_>> = claimed
            .rows
            .iter()
            .map(|row| OutboxMessage {
                outbox_id: row.id,
                token: row.token,
                lane: Lane::parse(&row.lane).unwrap_or_else(|| {
                    tracing::warn!(outbox_id = row.id, lane = %row.lane, "unknown lane; using the normal one");
                    Lane::Normal
                }),
                payload: &row.payload,
            })
            .collect();
        match self
            .queue
            .push(generation, self.settings.marker_ttl, &messages)
            .await?
        {
            PushOutcome::Done(placements) => Ok(Published {
                generation,
                placements,
            }),
            PushOutcome::StaleGeneration { found } => {
                // Settle it on the next drain; this batch rolls back untouched.
                self.generation.store(0, Ordering::Release);
                Err(RelayError::StaleGeneration {
                    expected: generation,
                    found,
                })
            }
        }
    }

    /// Records where each message went (the job's publication: time,
    /// attempt, lane, position, generation) and commits.
    pub async fn commit(
        &self,
        claimed: Claimed,
        published: Published,
    ) -> Result<Drained, RelayError> {
        let Claimed {
            mut tx,
            rows,
            started,
        } = claimed;
        let limit = self.settings.call_timeout;
        // A job can have two rows in one batch (a stale attempt's and the
        // new one's): record the newest attempt only, as one upsert may not
        // touch a row twice.
        let mut latest: HashMap<Uuid, (i32, &str, i64)> = HashMap::with_capacity(rows.len());
        for (row, placement) in rows.iter().zip(&published.placements) {
            let entry = latest
                .entry(row.job_id)
                .or_insert((row.attempt, &row.lane, placement.seq));
            if row.attempt >= entry.0 {
                *entry = (row.attempt, &row.lane, placement.seq);
            }
        }
        let mut job_ids = Vec::with_capacity(latest.len());
        let mut attempts = Vec::with_capacity(latest.len());
        let mut lanes = Vec::with_capacity(latest.len());
        let mut seqs = Vec::with_capacity(latest.len());
        for (job_id, (attempt, lane, seq)) in latest {
            job_ids.push(job_id);
            attempts.push(attempt);
            lanes.push(lane);
            seqs.push(seq);
        }
        bounded(
            limit,
            sqlx::query(
                "INSERT INTO job_publications AS p \
                     (job_id, published_at, attempt, lane, seq, generation) \
                 SELECT u.job_id, clock_timestamp(), u.attempt, u.lane, u.seq, $5 \
                 FROM UNNEST($1::uuid[], $2::int[], $3::text[], $4::int8[]) \
                     AS u (job_id, attempt, lane, seq) \
                 ON CONFLICT (job_id) DO UPDATE SET \
                     published_at = excluded.published_at, attempt = excluded.attempt, \
                     lane = excluded.lane, seq = excluded.seq, generation = excluded.generation \
                 WHERE excluded.attempt >= p.attempt",
            )
            .bind(&job_ids)
            .bind(&attempts)
            .bind(&lanes)
            .bind(&seqs)
            .bind(published.generation)
            .execute(&mut *tx),
        )
        .await?;
        bounded(limit, tx.commit()).await?;
        let drained = Drained {
            claimed: rows.len(),
            pushed: published.pushed(),
        };
        self.record(&rows, drained, started.elapsed());
        Ok(drained)
    }

    /// Settles the generation with PostgreSQL and Redis (see
    /// `outbox::generation`); wakes the reaper when Redis had lost data.
    async fn settle_generation(&self) -> Result<i64, RelayError> {
        let synced = generation::sync(
            &self.pool,
            &self.queue,
            &self.owner,
            self.settings.call_timeout,
        )
        .await?;
        if synced.lost {
            self.lost_data.wake();
        }
        self.generation.store(synced.generation, Ordering::Release);
        Ok(synced.generation)
    }

    fn record(&self, rows: &[OutboxRow], drained: Drained, took: Duration) {
        let claimed = drained.claimed as u64;
        self.metrics
            .relay_published(drained.pushed, claimed.saturating_sub(drained.pushed), took);
        if let Some(oldest) = rows.iter().map(|r| r.created_at).min() {
            let lag = (Utc::now() - oldest).to_std().unwrap_or_default();
            self.metrics.relay_lag(lag);
        }
        for row in rows {
            tracing::debug!(job_id = %row.job_id, outbox_id = row.id, lane = %row.lane, attempt = row.attempt, "published");
        }
    }

    /// Drains until a batch comes back short; returns the size of the last.
    ///
    /// A pipeline of the three steps: while one batch is being pushed and
    /// committed, the next is claimed on a second connection (SKIP LOCKED
    /// hands it the following rows). Pushes still happen one batch after the
    /// other, each after the previous batch committed, so order is kept.
    async fn drain_until_idle(
        &self,
        token: &CancellationToken,
        beat: &Beat,
    ) -> Result<usize, RelayError> {
        if !self.queue.is_connected() {
            return Err(QueueError::NotConnected.into());
        }
        let full = self.settings.batch_size as usize;
        let mut claimed = self.claim().await?;
        loop {
            beat.beat();
            if claimed.rows.is_empty() {
                return Ok(0);
            }
            let size = claimed.rows.len();
            let more = size >= full && !token.is_cancelled();
            let publish = self.deliver(claimed);
            let (drained, next) = if more {
                let (drained, next) = tokio::join!(publish, self.claim());
                (drained, Some(next))
            } else {
                (publish.await, None)
            };
            // On any error both transactions roll back when dropped; their
            // rows are claimed again later and pushed at most once more.
            drained?;
            match next {
                None => return Ok(size),
                Some(next) => claimed = next?,
            }
        }
    }

    /// Runs until `token` is cancelled: drains on every wake (a local commit
    /// or a NOTIFY relayed by `watch::Listener`) and poll tick, and backs off
    /// with jitter while a drain fails.
    pub async fn run(self, token: CancellationToken, wake: Wake, beat: Beat) {
        let mut failures: u32 = 0;
        let mut last_batch;
        // Give a fresh Redis connection a moment before the first drain, so
        // start-up does not log a failure for nothing.
        let _ = self.queue.wait_connected(self.settings.max_backoff).await;
        tracing::info!(
            batch_size = self.settings.batch_size,
            poll_interval = ?self.settings.poll_interval,
            "relay started"
        );
        loop {
            beat.beat();
            match self.drain_until_idle(&token, &beat).await {
                Ok(claimed) => {
                    last_batch = claimed;
                    if failures > 0 {
                        tracing::info!(failures, "relay recovered");
                    }
                    failures = 0;
                }
                Err(RelayError::StaleGeneration { expected, found }) => {
                    // Not an outage: settle the generation and go on at once.
                    tracing::info!(expected, ?found, "Redis generation changed; settling it");
                    continue;
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    self.metrics.relay_failed();
                    if let RelayError::Queue(queue_error)
                    | RelayError::Generation(GenerationError::Queue(queue_error)) = &error
                    {
                        self.queue.reconnect_after_timeout(queue_error).await;
                    }
                    let delay = backoff(failures, self.settings.max_backoff);
                    // Log the first failure and then one in fifty, not every retry.
                    if failures == 1 || failures.is_multiple_of(50) {
                        tracing::warn!(error = %error_chain(&error), failures, ?delay, "relay drain failed; retrying");
                    }
                    tokio::select! {
                        () = token.cancelled() => break,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            }
            tokio::select! {
                () = token.cancelled() => break,
                () = wake.woken() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
            // Linger only when busy: a light load drains at once.
            if !self.settings.linger.is_zero() && last_batch >= LINGER_FROM_BATCH {
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(self.settings.linger) => {}
                }
            }
        }
        tracing::info!("relay stopped");
    }
}

/// The `traceparent` a message carries, if any. Reads only that key.
fn message_traceparent(payload: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Traced {
        traceparent: Option<String>,
    }
    serde_json::from_str::<Traced>(payload)
        .ok()
        .and_then(|message| message.traceparent)
}

/// Exponential backoff with full jitter: a random pause up to
/// `MIN_BACKOFF * 2^(failures-1)`, capped at `max`.
fn backoff(failures: u32, max: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let ceiling = MIN_BACKOFF.saturating_mul(1 << exponent).min(max);
    let millis = u64::try_from(ceiling.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(fastrand::u64(millis / 2..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traceparent_is_read_from_a_message_when_present() {
        let traced = r#"{"job_id":"j","target_lang":"en","attempt":0,"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#;
        assert_eq!(
            message_traceparent(traced).as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(message_traceparent(r#"{"job_id":"j"}"#), None);
        assert_eq!(message_traceparent("not json"), None);
    }

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let max = Duration::from_secs(1);
        for failures in 1..100 {
            let delay = backoff(failures, max);
            assert!(delay <= max, "{failures}: {delay:?}");
            assert!(delay >= Duration::from_millis(1));
        }
        assert!(backoff(1, max) <= MIN_BACKOFF);
    }
}
