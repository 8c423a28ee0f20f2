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

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use futures_util::future::{join_all, try_join_all};
use sqlx::{PgPool, Postgres, Transaction};
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};
use tracing::{Instrument as _, Span, instrument};
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

/// While a backlog lasts, a round's claim starts its scan after the last id
/// of the round before (see [`Relay::claim_split`]); every this many rounds
/// one claim scans from the start instead, so a row whose id is below that
/// point (its transaction committed late) waits at most this many rounds.
pub const FULL_SCAN_EVERY: u32 = 16;

/// Shortest pause after a failed drain; doubles up to the configured maximum.
const MIN_BACKOFF: Duration = Duration::from_millis(50);

/// Begins a claiming transaction that commits without waiting for the WAL
/// flush (see [`Relay::claim`]), in one round trip.
const BEGIN_ASYNC_COMMIT: &str = "BEGIN; SET LOCAL synchronous_commit = off";

/// Deletes up to $1 of the oldest rows with an id above $2 that no other
/// transaction holds. The ids are locked first (SKIP LOCKED passes over rows
/// other relays hold), then deleted through the primary key with `= ANY`
/// (cheaper than `IN (subquery)`, which plans a hash and a join).
const CLAIM: &str = "DELETE FROM outbox WHERE id = ANY(ARRAY( \
         SELECT id FROM outbox WHERE id > $2 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)) \
     RETURNING id, job_id, lane, payload, created_at, attempt, token";

/// The publications of one claiming transaction, one row per job, and the
/// highest position recorded per lane raised to the round's ($7, $8: one
/// part of a round does that for the whole round; in lane order, so that
/// concurrent rounds lock those rows in one order).
const INSERT_PUBLICATIONS: &str = "WITH recorded AS (INSERT INTO job_publications \
         (job_id, published_at, attempt, lane, seq, generation) \
     SELECT u.job_id, clock_timestamp(), u.attempt, u.lane, u.seq, $5 \
     FROM UNNEST($1::uuid[], $2::int[], $3::text[], $4::int8[]) AS u (job_id, attempt, lane, seq)) \
     INSERT INTO lane_positions AS m (queue, generation, lane, seq) \
     SELECT $6, $5, u.lane, u.seq FROM UNNEST($7::text[], $8::int8[]) AS u (lane, seq) \
     ORDER BY u.lane \
     ON CONFLICT (queue, generation, lane) DO UPDATE SET seq = excluded.seq \
     WHERE m.seq < excluded.seq";

/// The same where a job may already have one: the newer attempt wins.
const UPSERT_PUBLICATIONS: &str = "WITH recorded AS (INSERT INTO job_publications AS p \
         (job_id, published_at, attempt, lane, seq, generation) \
     SELECT u.job_id, clock_timestamp(), u.attempt, u.lane, u.seq, $5 \
     FROM UNNEST($1::uuid[], $2::int[], $3::text[], $4::int8[]) AS u (job_id, attempt, lane, seq) \
     ON CONFLICT (job_id) DO UPDATE SET \
         published_at = excluded.published_at, attempt = excluded.attempt, \
         lane = excluded.lane, seq = excluded.seq, generation = excluded.generation \
     WHERE excluded.attempt >= p.attempt) \
     INSERT INTO lane_positions AS m (queue, generation, lane, seq) \
     SELECT $6, $5, u.lane, u.seq FROM UNNEST($7::text[], $8::int8[]) AS u (lane, seq) \
     ORDER BY u.lane \
     ON CONFLICT (queue, generation, lane) DO UPDATE SET seq = excluded.seq \
     WHERE m.seq < excluded.seq";

/// PostgreSQL's clock and the highest position recorded per lane of the
/// queue's current generation, read after a round's claim, before its push.
const READ_POSITIONS: &str = "SELECT clock_timestamp(), g.generation, \
         ARRAY(SELECT lane FROM lane_positions AS l \
               WHERE l.queue = $1 AND l.generation = g.generation ORDER BY lane), \
         ARRAY(SELECT seq FROM lane_positions AS l \
               WHERE l.queue = $1 AND l.generation = g.generation ORDER BY lane) \
     FROM (SELECT (SELECT generation FROM queue_generations WHERE queue = $1) AS generation) AS g";

/// A rollback found by a push, recorded for the reaper (see
/// `jobs::requeue_rolled_back`): the lane's counter before and after the
/// push, the jobs the push put there, and a time before the push.
const RECORD_ROLLBACK: &str = "INSERT INTO lane_rollbacks \
         (queue, generation, lane, after_seq, own_up_to, own_jobs, pushed_before) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

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

/// The columns [`CLAIM`] returns, in order.
type ClaimedColumns = (i64, Uuid, String, String, DateTime<Utc>, i32, i32);

impl From<ClaimedColumns> for OutboxRow {
    fn from((id, job_id, lane, payload, created_at, attempt, token): ClaimedColumns) -> Self {
        Self {
            id,
            job_id,
            lane,
            payload,
            created_at,
            attempt,
            token,
        }
    }
}

/// Rows taken out of the outbox by transactions that are still open.
pub struct Claimed {
    /// The claiming transactions (one per claimer that found rows).
    parts: Vec<Transaction<'static, Postgres>>,
    /// Every row claimed, in id order.
    pub rows: Vec<OutboxRow>,
    /// For each row, the index in `parts` of the transaction that deleted
    /// it: its publication is recorded in the same transaction.
    part_of: Vec<usize>,
    /// When the claim began: the round's latency runs from here to the commit.
    started: Instant,
    /// What PostgreSQL had recorded before the push (read after the claim).
    recorded: Recorded,
}

/// PostgreSQL's record of the lanes before a round's push: the highest
/// position recorded per lane of the current generation, and its clock.
/// A push that finds a lane's counter below that position met a Redis
/// that lost writes (a failover to a replica that missed the last pushes).
#[derive(Debug, Clone, Default)]
struct Recorded {
    at: Option<DateTime<Utc>>,
    generation: Option<i64>,
    highest: Vec<(String, i64)>,
}

impl Recorded {
    fn highest(&self, generation: i64, lane: Lane) -> i64 {
        if self.generation != Some(generation) {
            return 0;
        }
        self.highest
            .iter()
            .find(|(name, _)| name == lane.as_str())
            .map_or(0, |(_, seq)| *seq)
    }
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
        let span = self.batch_span(&claimed);
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

    /// The span of one round's publish and commit: a root (a round serves
    /// many traces), linked to the span that created each message, as named
    /// by the message's `traceparent`.
    fn batch_span(&self, claimed: &Claimed) -> Span {
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
        span
    }

    /// Begins a transaction and claims (deletes) the oldest unclaimed rows
    /// in it, up to the batch size, in id order.
    ///
    /// The transaction commits asynchronously (`synchronous_commit = off`,
    /// for this transaction only): the relay's commit need not wait for the
    /// WAL flush. If PostgreSQL crashes before the flush, the deleted rows
    /// come back and are pushed again, and the push-once markers drop the
    /// copies. The outbox rows themselves were written by synchronous
    /// commits.
    pub async fn claim(&self) -> Result<Claimed, RelayError> {
        self.claim_split(1, 0).await
    }

    /// Claims up to the batch size of the oldest unclaimed rows with an id
    /// above `after` (0: all of them) with `claimers` transactions at once,
    /// each taking its share (SKIP LOCKED lets them pass over each other's
    /// rows), and merges them in id order. Together they take the oldest
    /// such rows no other relay holds, as one transaction would.
    ///
    /// `after` is the drain loop's scan-start hint: under a backlog the rows
    /// of the previous rounds are still in the index (locked by a claim not
    /// yet committed, or deleted and not yet vacuumed), and a claim scanning
    /// from the start steps over every one of them; starting after the last
    /// id claimed skips that walk (measured in BENCHMARKS.md: a third less
    /// PostgreSQL CPU per message). Rows below the hint that commit late are
    /// taken by the next claim that starts from 0 (see `FULL_SCAN_EVERY`).
    pub async fn claim_split(&self, claimers: usize, after: i64) -> Result<Claimed, RelayError> {
        let started = Instant::now();
        let claimers = claimers.max(1);
        let share = self.settings.batch_size.div_ceil(claimers as u32);
        // After a hint, part k starts its scan k shares further on, so the
        // parts do not walk over each other's locked rows (outbox ids are
        // dense but for rolled-back creates; where a gap makes one part run
        // into the next one's rows, SKIP LOCKED still keeps them apart and
        // the merged round is still every row between the hint and its last
        // id). From 0, every part starts at the start.
        let claims = (0..claimers).map(|part| {
            let start = if after > 0 {
                after.saturating_add(part as i64 * i64::from(share))
            } else {
                0
            };
            self.claim_part(share, start)
        });
        let mut parts = Vec::with_capacity(claimers);
        let mut rows = Vec::new();
        let mut part_of = Vec::new();
        for (tx, claimed) in try_join_all(claims).await? {
            if claimed.is_empty() {
                // Nothing to commit: rolled back when dropped.
                continue;
            }
            part_of.extend(std::iter::repeat_n(parts.len(), claimed.len()));
            rows.extend(claimed);
            parts.push(tx);
        }
        if parts.len() > 1 {
            let mut order: Vec<usize> = (0..rows.len()).collect();
            order.sort_unstable_by_key(|&i| rows[i].id);
            let mut taken: Vec<Option<OutboxRow>> = rows.into_iter().map(Some).collect();
            rows = order.iter().filter_map(|&i| taken[i].take()).collect();
            part_of = order.iter().map(|&i| part_of[i]).collect();
        }
        let recorded = match parts.first_mut() {
            Some(tx) => self.read_positions(tx).await?,
            None => Recorded::default(),
        };
        Ok(Claimed {
            parts,
            rows,
            part_of,
            started,
            recorded,
        })
    }

    /// Reads [`Recorded`] in a claiming transaction.
    async fn read_positions(
        &self,
        tx: &mut Transaction<'static, Postgres>,
    ) -> Result<Recorded, RelayError> {
        let (at, generation, lanes, seqs): (DateTime<Utc>, Option<i64>, Vec<String>, Vec<i64>) =
            bounded(
                self.settings.call_timeout,
                sqlx::query_as(READ_POSITIONS)
                    .bind(self.queue.queue().as_str())
                    .fetch_one(&mut **tx),
            )
            .await?;
        Ok(Recorded {
            at: Some(at),
            generation,
            highest: lanes.into_iter().zip(seqs).collect(),
        })
    }

    /// One claiming transaction: up to `limit` of the oldest rows no other
    /// transaction holds, deleted, in id order.
    async fn claim_part(
        &self,
        limit: u32,
        after: i64,
    ) -> Result<(Transaction<'static, Postgres>, Vec<OutboxRow>), RelayError> {
        let timeout = self.settings.call_timeout;
        // One round trip: the transaction and its asynchronous commit.
        let mut tx = bounded(timeout, self.pool.begin_with(BEGIN_ASYNC_COMMIT)).await?;
        // Decoded by position: by name, every value of every row costs a
        // hash lookup of its column.
        let mut rows: Vec<OutboxRow> = bounded(
            timeout,
            sqlx::query_as::<_, ClaimedColumns>(CLAIM)
                .bind(i64::from(limit))
                .bind(after)
                .fetch_all(&mut *tx),
        )
        .await?
        .into_iter()
        .map(OutboxRow::from)
        .collect();
        // RETURNING does not promise an order.
        rows.sort_unstable_by_key(|row| row.id);
        Ok((tx, rows))
    }

    /// Pushes the claimed rows, each lane in id order, under the current
    /// Redis generation (settling it first when unknown), and records a
    /// rollback the push finds (see `find_rollbacks`).
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
            PushOutcome::Done(placements) => {
                self.find_rollbacks(claimed, &messages, &placements, generation)
                    .await?;
                Ok(Published {
                    generation,
                    placements,
                })
            }
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

    /// Compares each lane's counter before this push with the highest
    /// position recorded before it (by any relay, read after the claim, or
    /// seen by this one's earlier pushes, which may not be committed yet).
    /// A counter below it means Redis lost pushes: the positions above the
    /// counter now go to new messages, so the reaper could no longer tell
    /// the lost messages by their position. The rollback is recorded for the
    /// reaper, which queues the lost jobs again, and the reaper is woken.
    /// (The messages of `claimed.rows` are `messages`, in the same order.)
    async fn find_rollbacks(
        &self,
        claimed: &Claimed,
        messages: &[OutboxMessage<'_>],
        placements: &[Placement],
        generation: i64,
    ) -> Result<(), RelayError> {
        // Per lane: its counter before the push, and after it.
        let mut lanes: Vec<(Lane, i64, i64)> = Vec::new();
        for (message, placement) in messages.iter().zip(placements) {
            let before = if placement.pushed {
                placement.seq - 1
            } else {
                placement.seq
            };
            match lanes.iter_mut().find(|(lane, _, _)| *lane == message.lane) {
                Some((_, low, high)) => {
                    *low = (*low).min(before);
                    *high = (*high).max(placement.seq);
                }
                None => lanes.push((message.lane, before, placement.seq)),
            }
        }
        // Until the counter passes the highest position recorded, every push
        // finds the rollback again (from PostgreSQL's record, or from this
        // relay's own earlier pushes): each records the positions it took,
        // so that the reaper tells the lost messages there from its own.
        let mut rolled_back = Vec::new();
        {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            seen.retain(|(pushed_under, _), _| *pushed_under == generation);
            for (lane, before, after) in lanes {
                let seen = seen.entry((generation, lane)).or_insert(0);
                let highest = claimed.recorded.highest(generation, lane).max(*seen);
                if before < highest {
                    rolled_back.push((lane, before, after, highest));
                }
                *seen = (*seen).max(after);
            }
        }
        let Some(pushed_before) = claimed.recorded.at else {
            return Ok(());
        };
        for &(lane, before, after, highest) in &rolled_back {
            let own_jobs: Vec<Uuid> = claimed
                .rows
                .iter()
                .zip(messages)
                .filter(|(_, message)| message.lane == lane)
                .map(|(row, _)| row.job_id)
                .collect();
            tracing::warn!(
                lane = %lane.as_str(),
                counter = before,
                recorded = highest,
                "Redis lost pushes (its push counter is below a recorded position: a failover to a \
                 replica that missed them); their jobs are queued again"
            );
            bounded(
                self.settings.call_timeout,
                sqlx::query(RECORD_ROLLBACK)
                    .bind(self.queue.queue().as_str())
                    .bind(generation)
                    .bind(lane.as_str())
                    .bind(before)
                    .bind(after)
                    .bind(&own_jobs)
                    .bind(pushed_before)
                    .execute(&self.pool),
            )
            .await?;
        }
        if !rolled_back.is_empty() {
            self.lost_data.wake();
        }
        Ok(())
    }

    /// Records where each message went (the job's publication: time,
    /// attempt, lane, position, generation) and commits, every claiming
    /// transaction at once, each recording the rows it deleted.
    pub async fn commit(
        &self,
        claimed: Claimed,
        published: Published,
    ) -> Result<Drained, RelayError> {
        let Claimed {
            parts,
            rows,
            part_of,
            started,
            recorded: _,
        } = claimed;
        // A job can have two rows in one round (a stale attempt's and the
        // new one's): record the newest attempt only, once.
        let mut latest: HashMap<Uuid, usize> = HashMap::with_capacity(rows.len());
        for (index, row) in rows.iter().enumerate() {
            let entry = latest.entry(row.job_id).or_insert(index);
            if row.attempt >= rows[*entry].attempt {
                *entry = index;
            }
        }
        let mut records: Vec<Records> = (0..parts.len()).map(|_| Records::default()).collect();
        for index in latest.into_values() {
            let (row, placement) = (&rows[index], &published.placements[index]);
            let record = &mut records[part_of[index]];
            record.job_ids.push(row.job_id);
            record.attempts.push(row.attempt);
            record.lanes.push(&row.lane);
            record.seqs.push(placement.seq);
        }
        // The round's highest position per lane, raised by its first part.
        if let Some(first) = records.first_mut() {
            let mut highest: Vec<(&str, i64)> = Vec::new();
            for (row, placement) in rows.iter().zip(&published.placements) {
                match highest.iter_mut().find(|(lane, _)| *lane == row.lane) {
                    Some((_, seq)) => *seq = (*seq).max(placement.seq),
                    None => highest.push((&row.lane, placement.seq)),
                }
            }
            highest.sort_unstable();
            first.highest_lanes = highest.iter().map(|(lane, _)| *lane).collect();
            first.highest_seqs = highest.iter().map(|(_, seq)| *seq).collect();
        }
        let commits = parts
            .into_iter()
            .zip(&records)
            .map(|(tx, record)| self.record_and_commit(tx, record, published.generation));
        let outcomes = join_all(commits).await;
        // Parts that committed are done; a failed one's rows come back and
        // their push is skipped by the markers.
        outcomes.into_iter().collect::<Result<(), _>>()?;
        let drained = Drained {
            claimed: rows.len(),
            pushed: published.pushed(),
        };
        self.record(&rows, drained, started.elapsed());
        Ok(drained)
    }

    /// Inserts the publications of one claiming transaction and commits it.
    ///
    /// A plain insert: a job has no publication row when its message is
    /// queued (queueing it again deletes the old one, see
    /// `jobs::forget_messages`), so the upsert's conflict check is work for
    /// nothing in the normal case. Should a row exist anyway (an outbox row
    /// written by hand for a job already published), the insert fails, the
    /// round rolls back, and the retry records with an upsert.
    async fn record_and_commit(
        &self,
        mut tx: Transaction<'static, Postgres>,
        records: &Records<'_>,
        generation: i64,
    ) -> Result<(), RelayError> {
        let timeout = self.settings.call_timeout;
        if !records.job_ids.is_empty() {
            let upsert = self.upsert_publications.load(Ordering::Acquire);
            let inserted = bounded(
                timeout,
                sqlx::query(if upsert {
                    UPSERT_PUBLICATIONS
                } else {
                    INSERT_PUBLICATIONS
                })
                .bind(&records.job_ids)
                .bind(&records.attempts)
                .bind(&records.lanes)
                .bind(&records.seqs)
                .bind(generation)
                .bind(self.queue.queue().as_str())
                .bind(&records.highest_lanes)
                .bind(&records.highest_seqs)
                .execute(&mut *tx),
            )
            .await;
            match inserted {
                Ok(_) if upsert => self.upsert_publications.store(false, Ordering::Release),
                Ok(_) => {}
                Err(error) => {
                    if is_unique_violation(&error) {
                        tracing::info!(
                            "a published job already had a publication; recording with an upsert on retry"
                        );
                        self.upsert_publications.store(true, Ordering::Release);
                    }
                    return Err(error.into());
                }
            }
        }
        bounded(timeout, tx.commit()).await?;
        Ok(())
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

    /// Drains until a round comes back short; returns the size of the last.
    ///
    /// A pipeline over consecutive rounds: round n is pushed while round n+1
    /// is claimed on other connections (SKIP LOCKED hands it the following
    /// rows), and as soon as round n is pushed, its publications are
    /// recorded and committed on a task of their own, while round n+1 is
    /// pushed. Pushes happen one round after the other, in claim order, so
    /// order is kept; a round whose commit fails comes back and its second
    /// push is skipped by the markers, as after any failed commit. Commits
    /// hold their own connections and never wait for a claim, so a claim
    /// waiting for a free connection always gets one. The first round is
    /// claimed by one transaction; while rounds come back full (a backlog),
    /// by `claimers` transactions at once, from the previous round's last id
    /// (see [`Relay::claim_split`] and [`FULL_SCAN_EVERY`]). On any error,
    /// a round already pushed is still committed (or fails to) before the
    /// error is returned: its task is never aborted half way. `run` calls
    /// this in its loop; tests call it directly.
    pub async fn drain_until_idle(
        &self,
        token: &CancellationToken,
        beat: &Beat,
    ) -> Result<usize, RelayError> {
        if !self.queue.is_connected() {
            return Err(QueueError::NotConnected.into());
        }
        let full = self.settings.batch_size as usize;
        let mut claimed = self.claim().await?;
        // Where the claim of `claimed` started its scan, and the rounds
        // since one started from 0.
        let mut hint = 0;
        let mut hinted_rounds = 0;
        // The previous round's record and commit, still running.
        let mut committing: Option<Committing> = None;
        loop {
            beat.beat();
            if claimed.rows.is_empty() && hint > 0 {
                // Nothing above the hint: one claim from 0 before ending.
                claimed = match self.claim().await {
                    Ok(claimed) => claimed,
                    Err(error) => {
                        // The previous round was pushed: let it commit
                        // before giving up, rather than abort its task.
                        if let Some(previous) = committing.take() {
                            joined(previous.await)?;
                        }
                        return Err(error);
                    }
                };
                hint = 0;
                hinted_rounds = 0;
                continue;
            }
            if claimed.rows.is_empty() {
                if let Some(previous) = committing.take() {
                    joined(previous.await)?;
                }
                return Ok(0);
            }
            let size = claimed.rows.len();
            // A full round: the backlog lasts, claim on from its last id
            // (from 0 every FULL_SCAN_EVERY rounds). A short round that
            // started after a hint: rows below the hint may have committed
            // meanwhile, so one more claim from 0 before the drain ends.
            let more = (size >= full || hint > 0) && !token.is_cancelled();
            hint = match claimed.rows.last() {
                Some(last) if size >= full && hinted_rounds < FULL_SCAN_EVERY => last.id,
                _ => 0,
            };
            hinted_rounds = if hint > 0 { hinted_rounds + 1 } else { 0 };
            let previous = committing.take();
            let previous = async move {
                match previous {
                    Some(previous) => joined(previous.await).map(Some),
                    None => Ok(None),
                }
            };
            let span = self.batch_span(&claimed);
            let round = async move {
                let published = self
                    .publish(&claimed)
                    .instrument(span.clone())
                    .await
                    .inspect_err(|_| {
                        span.record("otel.status_code", "ERROR");
                    })?;
                let relay = self.clone();
                Ok::<_, RelayError>(AbortOnDropHandle::new(tokio::spawn(
                    async move {
                        relay.commit(claimed, published).await.inspect_err(|_| {
                            Span::current().record("otel.status_code", "ERROR");
                        })
                    }
                    .instrument(span),
                )))
            };
            // On any error the open transactions roll back when dropped;
            // their rows are claimed again later and pushed at most once more.
            let (committed, this_round, next) = if more {
                let (committed, this_round, next) = tokio::join!(
                    previous,
                    round,
                    self.claim_split(self.settings.claimers, hint)
                );
                (committed, this_round, Some(next))
            } else {
                let (committed, this_round) = tokio::join!(previous, round);
                (committed, this_round, None)
            };
            let this_round = this_round?;
            if let Err(error) = committed {
                // This round was pushed: let it commit before giving up.
                joined(this_round.await)?;
                return Err(error);
            }
            match next {
                None => {
                    joined(this_round.await)?;
                    return Ok(size);
                }
                Some(Ok(next)) => {
                    committing = Some(this_round);
                    claimed = next;
                }
                Some(Err(error)) => {
                    joined(this_round.await)?;
                    return Err(error);
                }
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
                        tracing::warn!(error = %error_chain(&error), redis = self.queue.target(), failures, ?delay, "relay drain failed; retrying");
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

/// A round's record and commit, running while the next round is pushed.
type Committing = AbortOnDropHandle<Result<Drained, RelayError>>;

/// The outcome of a round's commit task.
fn joined(
    outcome: Result<Result<Drained, RelayError>, tokio::task::JoinError>,
) -> Result<Drained, RelayError> {
    outcome.map_err(|error| RelayError::CommitTask(error.to_string()))?
}

/// The publications one claiming transaction records.
#[derive(Default)]
struct Records<'a> {
    job_ids: Vec<Uuid>,
    attempts: Vec<i32>,
    lanes: Vec<&'a str>,
    seqs: Vec<i64>,
    /// The round's highest position per lane, in lane order (in one part
    /// of the round only).
    highest_lanes: Vec<&'a str>,
    highest_seqs: Vec<i64>,
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(database) if database.code().as_deref() == Some("23505"))
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
