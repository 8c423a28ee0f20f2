//! Claiming a round: transactions that delete the oldest outbox rows no
//! other transaction holds (`FOR UPDATE SKIP LOCKED`), and read what
//! PostgreSQL recorded of the lanes before the push.

use std::time::Instant;

use chrono::{DateTime, Utc};
use futures_util::future::try_join_all;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::{Relay, RelayError};
use crate::{db::bounded, queue::Lane};

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

/// [`CLAIM`] that also reads, for the first row it returns, what
/// [`READ_POSITIONS`] reads for queue $3 (the other rows carry nulls
/// there; the subqueries are init plans, evaluated once). A lone message
/// then waits for one round trip after `BEGIN` before its push, not two.
/// Used by a drain's first claim, after a wake, usually of a few rows; a
/// backlog's rounds of hundreds use [`CLAIM`] and read the record after it,
/// in [`READ_POSITIONS`]: there the round trip is spread over the round, and
/// carrying every row through the window would cost PostgreSQL more.
const CLAIM_READING: &str = "WITH claimed AS (DELETE FROM outbox WHERE id = ANY(ARRAY( \
         SELECT id FROM outbox WHERE id > $2 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)) \
     RETURNING id, job_id, lane, payload, created_at, attempt, token), \
     numbered AS (SELECT *, row_number() OVER () = 1 AS first FROM claimed) \
     SELECT id, job_id, lane, payload, created_at, attempt, token, \
         CASE WHEN first THEN clock_timestamp() END, \
         CASE WHEN first THEN (SELECT generation FROM queue_generations WHERE queue = $3) END, \
         CASE WHEN first THEN ARRAY(SELECT lane FROM lane_positions AS l \
             WHERE l.queue = $3 AND l.generation = \
                 (SELECT generation FROM queue_generations WHERE queue = $3) \
             ORDER BY lane) END, \
         CASE WHEN first THEN ARRAY(SELECT seq FROM lane_positions AS l \
             WHERE l.queue = $3 AND l.generation = \
                 (SELECT generation FROM queue_generations WHERE queue = $3) \
             ORDER BY lane) END \
     FROM numbered";

/// PostgreSQL's clock and the highest position recorded per lane of the
/// queue's current generation, read after a round's claim, before its push.
const READ_POSITIONS: &str = "SELECT clock_timestamp(), g.generation, \
         ARRAY(SELECT lane FROM lane_positions AS l \
               WHERE l.queue = $1 AND l.generation = g.generation ORDER BY lane), \
         ARRAY(SELECT seq FROM lane_positions AS l \
               WHERE l.queue = $1 AND l.generation = g.generation ORDER BY lane) \
     FROM (SELECT (SELECT generation FROM queue_generations WHERE queue = $1) AS generation) AS g";

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

/// The columns [`CLAIM_READING`] returns, in order: [`CLAIM`]'s, then (in
/// the first row only) [`READ_POSITIONS`]'.
type ReadingColumns = (
    i64,
    Uuid,
    String,
    String,
    DateTime<Utc>,
    i32,
    i32,
    Option<DateTime<Utc>>,
    Option<i64>,
    Option<Vec<String>>,
    Option<Vec<i64>>,
);

/// Splits [`ReadingColumns`] into the row and, where it carries it (the
/// first row), the record of the lanes.
fn split(columns: ReadingColumns) -> (OutboxRow, Option<Recorded>) {
    let (id, job_id, lane, payload, created_at, attempt, token, at, generation, lanes, seqs) =
        columns;
    let row = OutboxRow::from((id, job_id, lane, payload, created_at, attempt, token));
    let recorded = at.map(|at| Recorded {
        at: Some(at),
        generation,
        highest: lanes
            .unwrap_or_default()
            .into_iter()
            .zip(seqs.unwrap_or_default())
            .collect(),
    });
    (row, recorded)
}

/// Rows taken out of the outbox by transactions that are still open.
pub struct Claimed {
    /// The claiming transactions (one per claimer that found rows).
    pub(super) parts: Vec<Transaction<'static, Postgres>>,
    /// Every row claimed, in id order.
    pub rows: Vec<OutboxRow>,
    /// For each row, the index in `parts` of the transaction that deleted
    /// it: its publication is recorded in the same transaction.
    pub(super) part_of: Vec<usize>,
    /// When the claim began: the round's latency runs from here to the commit.
    pub(super) started: Instant,
    /// What PostgreSQL had recorded before the push (read by the claim or
    /// just after it).
    pub(super) recorded: Recorded,
}

/// PostgreSQL's record of the lanes before a round's push: the highest
/// position recorded per lane of the current generation, and its clock.
/// A push that finds a lane's counter below that position met a Redis
/// that lost writes (a failover to a replica that missed the last pushes).
#[derive(Debug, Clone, Default)]
pub(super) struct Recorded {
    pub(super) at: Option<DateTime<Utc>>,
    generation: Option<i64>,
    highest: Vec<(String, i64)>,
}

impl Recorded {
    pub(super) fn highest(&self, generation: i64, lane: Lane) -> i64 {
        if self.generation != Some(generation) {
            return 0;
        }
        self.highest
            .iter()
            .find(|(name, _)| name == lane.as_str())
            .map_or(0, |(_, seq)| *seq)
    }
}

impl Relay {
    /// Begins a transaction and claims (deletes) the oldest unclaimed rows
    /// in it, up to the batch size, in id order.
    ///
    /// The transaction commits asynchronously (`synchronous_commit = off`,
    /// for this transaction only): the relay's commit need not wait for the
    /// WAL flush. If PostgreSQL crashes before the flush, the deleted rows
    /// come back and are pushed again, and the push-once markers drop the
    /// copies. The outbox rows themselves were written by synchronous
    /// commits.
    ///
    /// This is a drain's first claim: after a wake it often finds a lone
    /// message, whose wait for the push it shortens by reading the lanes'
    /// record in the claiming statement (see [`CLAIM_READING`]).
    pub async fn claim(&self) -> Result<Claimed, RelayError> {
        self.claim_parts(1, 0, true).await
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
    /// The lanes' record is read after the claim, in a statement of its own.
    pub async fn claim_split(&self, claimers: usize, after: i64) -> Result<Claimed, RelayError> {
        self.claim_parts(claimers, after, false).await
    }

    /// [`Relay::claim_split`], reading the lanes' record in the claiming
    /// statement when `reading` and one transaction claims.
    async fn claim_parts(
        &self,
        claimers: usize,
        after: i64,
        reading: bool,
    ) -> Result<Claimed, RelayError> {
        let started = Instant::now();
        let claimers = claimers.max(1);
        let share = self.settings.batch_size.div_ceil(claimers as u32);
        let reading = reading && claimers == 1;
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
            self.claim_part(share, start, reading)
        });
        let mut parts = Vec::with_capacity(claimers);
        let mut rows = Vec::new();
        let mut part_of = Vec::new();
        let mut recorded = None;
        for (tx, claimed, read) in try_join_all(claims).await? {
            if claimed.is_empty() {
                // Nothing to commit: rolled back when dropped.
                continue;
            }
            recorded = recorded.or(read);
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
        let recorded = match (recorded, parts.first_mut()) {
            (Some(recorded), _) => recorded,
            (None, Some(tx)) => self.read_positions(tx).await?,
            (None, None) => Recorded::default(),
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
    /// transaction holds, deleted, in id order, and, if `reading` and it
    /// found any, what PostgreSQL recorded of the lanes.
    async fn claim_part(
        &self,
        limit: u32,
        after: i64,
        reading: bool,
    ) -> Result<
        (
            Transaction<'static, Postgres>,
            Vec<OutboxRow>,
            Option<Recorded>,
        ),
        RelayError,
    > {
        let timeout = self.settings.call_timeout;
        // One round trip: the transaction and its asynchronous commit.
        let mut tx = bounded(timeout, self.pool.begin_with(BEGIN_ASYNC_COMMIT)).await?;
        // Decoded by position: by name, every value of every row costs a
        // hash lookup of its column.
        let (mut rows, recorded) = if reading {
            let columns = bounded(
                timeout,
                sqlx::query_as::<_, ReadingColumns>(CLAIM_READING)
                    .bind(i64::from(limit))
                    .bind(after)
                    .bind(self.queue.queue().as_str())
                    .fetch_all(&mut *tx),
            )
            .await?;
            let mut recorded = None;
            let mut rows = Vec::with_capacity(columns.len());
            for columns in columns {
                let (row, read) = split(columns);
                recorded = recorded.or(read);
                rows.push(row);
            }
            (rows, recorded)
        } else {
            let columns = bounded(
                timeout,
                sqlx::query_as::<_, ClaimedColumns>(CLAIM)
                    .bind(i64::from(limit))
                    .bind(after)
                    .fetch_all(&mut *tx),
            )
            .await?;
            (columns.into_iter().map(OutboxRow::from).collect(), None)
        };
        // RETURNING does not promise an order.
        rows.sort_unstable_by_key(|row: &OutboxRow| row.id);
        Ok((tx, rows, recorded))
    }
}
