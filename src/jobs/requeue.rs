//! Handing a job out again: the one place that moves a job to a new attempt
//! and queues its message, shared by retry, redrive, the rescue of stuck
//! jobs and the re-queue of lost messages. Also the lock order all of them
//! keep.

use sqlx::PgConnection;
use uuid::Uuid;

use super::{
    Job, JobError,
    get::{JobRow, RETURNING_JOB},
};
use crate::outbox::{Pending, enqueue};

/// Why a job is handed out again; decides what else is reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// A caller asked (retry) or an operator redrove a dead letter: a fresh
    /// budget of failed attempts, the error cleared.
    Fresh,
    /// The reaper found the job stuck IN_PROGRESS: one more failed attempt
    /// (and rescue) counted.
    Stuck,
    /// Its message was lost (popped by a worker that never claimed it, or
    /// gone with Redis's data): nothing else changes.
    Lost,
}

/// Moves jobs to PENDING under a new attempt (`attempts + 1`) in one
/// statement, drops what of theirs still waits in the outbox (an older
/// attempt's message) and their publication, and queues one message for the
/// new attempt. A worker still inside an older attempt finds its guarded
/// updates matching nothing from the commit on.
///
/// Runs in the caller's transaction; the caller has locked the jobs (their
/// subtasks first, see [`lock_subtasks`]) and decides which jobs qualify.
/// Returns the jobs as they now are, without subtasks.
pub(crate) async fn hand_out_again(
    conn: &mut PgConnection,
    job_ids: &[Uuid],
    reason: Reason,
) -> Result<Vec<Job>, JobError> {
    if job_ids.is_empty() {
        return Ok(Vec::new());
    }
    let (reset, add_rescue) = match reason {
        Reason::Fresh => (true, 0),
        Reason::Stuck => (false, 1),
        Reason::Lost => (false, 0),
    };
    let rows = sqlx::query_as::<_, JobRow>(&format!(
        "UPDATE translation_jobs SET status = 'PENDING', attempts = attempts + 1, \
             rescues = CASE WHEN $2 THEN 0 ELSE rescues + $3 END, \
             failures = CASE WHEN $2 THEN 0 ELSE failures + $3 END, \
             retryable = retryable OR $2, scheduled_at = NULL, \
             error = CASE WHEN $2 THEN NULL ELSE error END \
         WHERE id = ANY($1) {RETURNING_JOB}"
    ))
    .bind(job_ids)
    .bind(reset)
    .bind(add_rescue)
    .fetch_all(&mut *conn)
    .await?;
    let jobs = rows
        .into_iter()
        .map(|row| row.into_job(Vec::new()))
        .collect::<Result<Vec<_>, _>>()?;
    guard_subtasks(conn, job_ids).await?;
    forget_messages(conn, job_ids).await?;
    let messages: Vec<Pending> = jobs
        .iter()
        .map(|job| Pending {
            job_id: job.id,
            attempt: job.attempts,
            lane: job.priority.lane(),
            payload: job.message().to_json(),
        })
        .collect();
    enqueue(conn, &messages).await?;
    Ok(jobs)
}

/// Writes each job's guard onto its subtask rows: the job's `attempts`
/// while it is PENDING or IN_PROGRESS, -1 once it is closed to workers
/// (cancelled, dead-lettered). Every statement of the worker contract after
/// the claim checks `job_attempt = <its attempt>` on the row it updates, and
/// PostgreSQL re-checks that row after a lock wait; so a worker statement
/// that waited behind this transaction (which holds the subtask locks, see
/// [`lock_subtasks`]) matches nothing once it commits. A guard kept in a
/// subquery on the job would have been evaluated before the wait.
///
/// Runs in the caller's transaction, after the jobs' own update. Rewriting
/// the guard is not a worker's heartbeat: it does not touch the job again.
pub(crate) async fn guard_subtasks(
    conn: &mut PgConnection,
    job_ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE translation_subtasks AS s \
         SET job_attempt = g.job_attempt \
         FROM (SELECT id, CASE WHEN status IN ('PENDING', 'IN_PROGRESS') THEN attempts \
                               ELSE -1 END AS job_attempt \
               FROM translation_jobs WHERE id = ANY($1)) AS g \
         WHERE s.job_id = g.id AND s.job_attempt <> g.job_attempt",
    )
    .bind(job_ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// Drops the jobs' rows still waiting in the outbox (due or scheduled) and
/// their publications: their messages are stale (the job is cancelled, or queued again under a
/// new attempt). A row a relay is pushing right now is locked; this waits
/// for that relay's short transaction, then finds the row gone, and the
/// message it pushed is stale (the claim's attempt check refuses it).
///
/// Outbox rows first, then publications: the order the relay locks them in
/// (claim, then record), so the two never deadlock.
pub(crate) async fn forget_messages(
    conn: &mut PgConnection,
    job_ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM outbox WHERE job_id = ANY($1)")
        .bind(job_ids)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM outbox_scheduled WHERE job_id = ANY($1)")
        .bind(job_ids)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM job_publications WHERE job_id = ANY($1)")
        .bind(job_ids)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Locks jobs' subtasks before the jobs themselves. A worker's subtask
/// update locks the subtask and then, through the heartbeat trigger, the
/// job; taking them in the same order here means the two can wait for each
/// other but never deadlock.
pub(crate) async fn lock_subtasks(
    conn: &mut PgConnection,
    job_ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM translation_subtasks WHERE job_id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(job_ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// Locks, without waiting, every subtask of each job whose subtasks no
/// other transaction holds (`SKIP LOCKED`), subtasks first as in
/// [`lock_subtasks`]. Returns those jobs, in the order given; a job one of
/// whose subtasks another transaction holds is left out (the subtasks of it
/// that were free stay locked until the caller's transaction ends).
pub(crate) async fn try_lock_subtasks(
    conn: &mut PgConnection,
    job_ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH locked AS MATERIALIZED ( \
             SELECT job_id FROM translation_subtasks WHERE job_id = ANY($1) \
             ORDER BY id FOR UPDATE SKIP LOCKED) \
         SELECT j.id FROM UNNEST($1::uuid[]) WITH ORDINALITY AS j (id, n) \
         WHERE (SELECT count(*) FROM translation_subtasks AS s WHERE s.job_id = j.id) \
             = (SELECT count(*) FROM locked AS l WHERE l.job_id = j.id) \
         ORDER BY j.n",
    )
    .bind(job_ids)
    .fetch_all(conn)
    .await
}
