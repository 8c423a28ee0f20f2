//! Status changes asked for by callers: cancel and retry.

use sqlx::{PgConnection, PgPool};
use tracing::instrument;
use uuid::Uuid;

use super::{Job, JobError, JobStatus, get::read_job, rescue::forget_publications};
use crate::outbox::{Pending, enqueue};

/// PENDING or IN_PROGRESS becomes CANCELLED, and so do its unfinished
/// subtasks. A worker sees the status before its next subtask and stops;
/// its message, if still queued, is skipped by the claim.
#[instrument(skip(pool), err(level = "debug"))]
pub async fn cancel_job(pool: &PgPool, id: Uuid) -> Result<Job, JobError> {
    let mut tx = pool.begin().await?;
    lock_subtasks(&mut tx, id).await?;
    let changed = sqlx::query(
        "UPDATE translation_jobs SET status = 'CANCELLED' \
         WHERE id = $1 AND status IN ('PENDING', 'IN_PROGRESS')",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed == 0 {
        return Err(refusal(&mut tx, id, "cancel", "PENDING or IN_PROGRESS").await);
    }
    sqlx::query(
        "UPDATE translation_subtasks SET status = 'CANCELLED' \
         WHERE job_id = $1 AND status IN ('PENDING', 'IN_PROGRESS')",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let job = read_job(&mut tx, id).await?;
    tx.commit().await?;
    tracing::info!(job_id = %id, "job cancelled");
    Ok(job)
}

/// FAILED or CANCELLED becomes PENDING with a fresh count of attempts; its
/// unfinished subtasks become PENDING again (completed ones stay done) and a
/// new message goes through the outbox in the same transaction.
#[instrument(skip(pool), err(level = "debug"))]
pub async fn retry_job(pool: &PgPool, id: Uuid) -> Result<Job, JobError> {
    let mut tx = pool.begin().await?;
    lock_subtasks(&mut tx, id).await?;
    let changed = sqlx::query(
        "UPDATE translation_jobs \
         SET status = 'PENDING', attempts = 0, error = NULL \
         WHERE id = $1 AND status IN ('FAILED', 'CANCELLED')",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed == 0 {
        return Err(refusal(&mut tx, id, "retry", "FAILED or CANCELLED").await);
    }
    forget_publications(&mut tx, &[id]).await?;
    sqlx::query(
        "UPDATE translation_subtasks SET status = 'PENDING', error = NULL \
         WHERE job_id = $1 AND status <> 'COMPLETED'",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let job = read_job(&mut tx, id).await?;
    enqueue(
        &mut tx,
        &[Pending {
            job_id: id,
            lane: job.priority.lane(),
            payload: job.message().to_json(),
        }],
    )
    .await?;
    tx.commit().await?;
    tracing::info!(job_id = %id, "job retried");
    Ok(job)
}

/// Locks a job's subtasks before the job itself. A worker's subtask update
/// locks the subtask and then, through the heartbeat trigger, the job; taking
/// them in the same order here means the two can wait for each other but
/// never deadlock.
pub(crate) async fn lock_subtasks(
    conn: &mut PgConnection,
    job_ids: impl AsJobIds,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM translation_subtasks WHERE job_id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(job_ids.as_job_ids())
        .execute(conn)
        .await?;
    Ok(())
}

/// One job id or several, for [`lock_subtasks`].
pub(crate) trait AsJobIds {
    fn as_job_ids(&self) -> Vec<Uuid>;
}

impl AsJobIds for Uuid {
    fn as_job_ids(&self) -> Vec<Uuid> {
        vec![*self]
    }
}

impl AsJobIds for &[Uuid] {
    fn as_job_ids(&self) -> Vec<Uuid> {
        self.to_vec()
    }
}

/// Why a conditional update changed nothing: no such job, or a status the
/// action does not apply to.
async fn refusal(
    conn: &mut PgConnection,
    id: Uuid,
    action: &'static str,
    allowed: &'static str,
) -> JobError {
    let status: Result<Option<String>, _> =
        sqlx::query_scalar("SELECT status FROM translation_jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await;
    match status {
        Err(error) => JobError::Database(error),
        Ok(None) => JobError::NotFound(id),
        Ok(Some(raw)) => JobError::WrongStatus {
            job_id: id,
            status: JobStatus::parse(&raw).map_or("in an unknown status", JobStatus::as_str),
            action,
            allowed,
        },
    }
}
