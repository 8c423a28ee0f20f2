//! Scheduled attempts coming due: rows of `outbox_scheduled` whose time has
//! come become outbox rows, in one transaction with the job's hand-out.
//!
//! Three kinds of row wait there: a create with a `schedule_time` (its
//! exact message, attempt 0), a retry the trigger `retry_failed_job`
//! scheduled after a worker's FAILED (no payload: built from the job now),
//! and a worker's final FAILED, whose message goes to the dead lane at once.
//! The trigger runs inside the worker's statement holding the job and writes
//! nothing else; the rest of the hand-out (the unfinished subtasks PENDING
//! again, their guard moved to the new attempt, or closed for a dead letter)
//! happens here, taking subtasks before the job as every transition does.
//!
//! A row is queued only if its job is still where the row left it: PENDING
//! at the row's attempt (FAILED for a dead letter). A job cancelled, retried
//! by hand or deleted since has no row left anyway (those paths delete it);
//! the check covers the instant between.

use std::{collections::HashMap, time::Duration};

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    JobError, JobStatus,
    get::JobRow,
    requeue::{forget_messages, guard_subtasks, try_lock_subtasks},
};
use crate::{
    outbox::{Pending, enqueue},
    queue::Lane,
};

/// What one round of [`promote_due`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Promoted {
    /// Rows that became outbox rows.
    pub queued: usize,
    /// Rows dropped because their job had moved on (or was deleted).
    pub dropped: usize,
    /// Due rows looked at (at most the limit): the limit means there may be
    /// more.
    pub candidates: usize,
    /// Due rows left for a later round because another transaction holds
    /// their job (a worker's statement, a transition).
    pub skipped: usize,
}

/// Moves up to `limit` due rows, oldest due first, into the outbox. Never
/// waits for a lock (`SKIP LOCKED`), so replicas share the rows.
pub async fn promote_due(pool: &PgPool, limit: i64) -> Result<Promoted, JobError> {
    let mut tx = pool.begin().await?;
    let promoted = promote_in(&mut tx, limit).await?;
    tx.commit().await?;
    Ok(promoted)
}

async fn promote_in(tx: &mut PgConnection, limit: i64) -> Result<Promoted, JobError> {
    let candidates: Vec<(i64, Uuid)> = sqlx::query_as(
        "SELECT id, job_id FROM outbox_scheduled WHERE due_at <= clock_timestamp() \
         ORDER BY due_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if candidates.is_empty() {
        return Ok(Promoted::default());
    }
    let mut job_ids: Vec<Uuid> = candidates.iter().map(|(_, job)| *job).collect();
    job_ids.sort_unstable();
    job_ids.dedup();

    // Subtasks first, then the jobs, neither waiting.
    let free = try_lock_subtasks(tx, &job_ids).await?;
    let rows = sqlx::query_as::<_, JobRow>(
        "SELECT id, user_id, novel_id, source_lang, target_lang, target_fields, \
                enable_code_filter, output_dir, priority, status, attempts, error, request_id, \
                created_at, updated_at, NULL::timestamptz AS published_at, scheduled_at, \
                max_attempts, failures, retryable \
         FROM translation_jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE SKIP LOCKED",
    )
    .bind(&free)
    .fetch_all(&mut *tx)
    .await?;
    let existing: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM translation_jobs WHERE id = ANY($1)")
            .bind(&job_ids)
            .fetch_all(&mut *tx)
            .await?;
    let mut jobs = HashMap::with_capacity(rows.len());
    for row in rows {
        let job = row.into_job(Vec::new())?;
        jobs.insert(job.id, job);
    }
    // Rows of jobs this transaction holds, and of jobs that are gone.
    let takeable: Vec<i64> = candidates
        .iter()
        .filter(|(_, job)| jobs.contains_key(job) || !existing.contains(job))
        .map(|(id, _)| *id)
        .collect();
    let taken: Vec<(Uuid, i32, String, Option<String>)> = sqlx::query_as(
        "DELETE FROM outbox_scheduled WHERE id = ANY($1) \
         RETURNING job_id, attempt, lane, payload",
    )
    .bind(&takeable)
    .fetch_all(&mut *tx)
    .await?;

    let mut promoted = Promoted {
        candidates: candidates.len(),
        skipped: candidates.len() - takeable.len(),
        ..Promoted::default()
    };
    let mut retried = Vec::new();
    let mut closed = Vec::new();
    let mut messages = Vec::with_capacity(taken.len());
    for (job_id, attempt, lane, payload) in taken {
        let (Some(job), Some(lane)) = (jobs.get(&job_id), Lane::parse(&lane)) else {
            promoted.dropped += 1;
            continue;
        };
        let expected = if lane == Lane::Dead {
            JobStatus::Failed
        } else {
            JobStatus::Pending
        };
        if job.status != expected || job.attempts != attempt {
            promoted.dropped += 1;
            continue;
        }
        if lane == Lane::Dead {
            closed.push(job_id);
        } else if payload.is_none() {
            retried.push(job_id);
        }
        messages.push(Pending {
            job_id,
            attempt,
            lane,
            payload: payload.unwrap_or_else(|| job.message().to_json()),
        });
    }
    // A retry's unfinished subtasks start again; completed ones stay done.
    sqlx::query(
        "UPDATE translation_subtasks SET status = 'PENDING', error = NULL \
         WHERE job_id = ANY($1) AND status <> 'COMPLETED'",
    )
    .bind(&retried)
    .execute(&mut *tx)
    .await?;
    let handed_out: Vec<Uuid> = messages.iter().map(|m| m.job_id).collect();
    guard_subtasks(tx, &handed_out).await?;
    // An earlier attempt's message still in the outbox is stale now.
    forget_messages(tx, &handed_out).await?;
    enqueue(tx, &messages).await?;
    promoted.queued = messages.len();
    for job_id in &retried {
        tracing::info!(job_id = %job_id, "a failed job's backoff is over; queued again");
    }
    for job_id in &closed {
        tracing::warn!(job_id = %job_id, "a worker failed the job for good; dead-lettered");
    }
    Ok(promoted)
}

/// How long until the earliest scheduled row is due (zero when one is due
/// now); None when nothing is scheduled. Read with PostgreSQL's clock, the
/// one the rows were compared with.
pub async fn next_due_in(pool: &PgPool) -> Result<Option<Duration>, JobError> {
    let seconds: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM min(due_at) - clock_timestamp())::float8 FROM outbox_scheduled",
    )
    .fetch_one(pool)
    .await?;
    Ok(seconds.map(|s| Duration::from_secs_f64(s.max(0.0))))
}

/// Writes RETRY_BACKOFF_BASE and RETRY_BACKOFF_MAX where the retry trigger
/// reads them. Every replica writes its own at start: they should agree.
pub async fn write_retry_settings(
    pool: &PgPool,
    base: Duration,
    max: Duration,
) -> Result<(), JobError> {
    let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO retry_settings (singleton, backoff_base_ms, backoff_max_ms) \
         VALUES (true, $1, $2) \
         ON CONFLICT (singleton) DO UPDATE \
         SET backoff_base_ms = excluded.backoff_base_ms, backoff_max_ms = excluded.backoff_max_ms \
         WHERE (retry_settings.backoff_base_ms, retry_settings.backoff_max_ms) \
               IS DISTINCT FROM (excluded.backoff_base_ms, excluded.backoff_max_ms)",
    )
    .bind(millis(base))
    .bind(millis(max))
    .execute(pool)
    .await?;
    Ok(())
}
