//! Status changes asked for by callers: cancel and retry.

use sqlx::{PgConnection, PgPool};
use tracing::instrument;
use uuid::Uuid;

use super::{
    Job, JobError, JobStatus,
    get::read_job,
    requeue::{Reason, forget_messages, guard_subtasks, hand_out_again, lock_subtasks},
    scope::Scope,
};

/// PENDING or IN_PROGRESS becomes CANCELLED, and so do its unfinished
/// subtasks. A message still in the outbox is dropped; one already in Redis
/// is refused by the claim (the job is no longer PENDING). The subtasks'
/// guard is closed (see `guard_subtasks`): a worker inside the job finds its
/// next subtask update matching nothing, even one that waited for this
/// transaction's locks, and stops.
/// Outside `scope` the job is `NotFound`, and nothing of it is locked.
#[instrument(skip(pool), err(level = "debug"))]
pub async fn cancel_job(pool: &PgPool, id: Uuid, scope: &Scope) -> Result<Job, JobError> {
    let mut tx = pool.begin().await?;
    ensure_in_scope(&mut tx, id, scope).await?;
    lock_subtasks(&mut tx, &[id]).await?;
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
    guard_subtasks(&mut tx, &[id]).await?;
    forget_messages(&mut tx, &[id]).await?;
    let job = read_job(&mut tx, id).await?;
    tx.commit().await?;
    tracing::info!(job_id = %id, "job cancelled");
    Ok(job)
}

/// FAILED or CANCELLED becomes PENDING under a new attempt, with a fresh
/// budget of rescues; its unfinished subtasks become PENDING again
/// (completed ones stay done) and a message for the new attempt goes
/// through the outbox in the same transaction. A worker still inside the
/// old attempt can no longer update the job.
/// Outside `scope` the job is `NotFound`, and nothing of it is locked.
#[instrument(skip(pool), err(level = "debug"))]
pub async fn retry_job(pool: &PgPool, id: Uuid, scope: &Scope) -> Result<Job, JobError> {
    let mut tx = pool.begin().await?;
    ensure_in_scope(&mut tx, id, scope).await?;
    lock_subtasks(&mut tx, &[id]).await?;
    let allowed: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM translation_jobs WHERE id = $1 AND status IN ('FAILED', 'CANCELLED') \
         FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    if allowed.is_none() {
        return Err(refusal(&mut tx, id, "retry", "FAILED or CANCELLED").await);
    }
    sqlx::query(
        "UPDATE translation_subtasks SET status = 'PENDING', error = NULL \
         WHERE job_id = $1 AND status <> 'COMPLETED'",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    hand_out_again(&mut tx, &[id], Reason::Fresh).await?;
    let job = read_job(&mut tx, id).await?;
    tx.commit().await?;
    tracing::info!(job_id = %id, attempt = job.attempts, "job retried");
    Ok(job)
}

/// `NotFound` unless the job is inside `scope`. Checked before any lock is
/// taken, so a caller cannot hold another caller's rows even briefly; a
/// job's `user_id` never changes, so the check cannot go stale.
async fn ensure_in_scope(conn: &mut PgConnection, id: Uuid, scope: &Scope) -> Result<(), JobError> {
    let Some(owner) = scope.owner() else {
        return Ok(());
    };
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM translation_jobs WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(owner)
            .fetch_optional(conn)
            .await?;
    found.map(|_| ()).ok_or(JobError::NotFound(id))
}

/// Why a conditional update changed nothing: no such job, or a status the
/// action does not apply to.
pub(crate) async fn refusal(
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
