//! Rescuing stuck jobs: IN_PROGRESS with no heartbeat for too long.

use std::time::Duration;

use sqlx::PgPool;
use tracing::instrument;
use uuid::Uuid;

use super::{
    JobError, JobStatus,
    get::{JOB_COLUMNS, JobRow},
};
use crate::{
    outbox::{Pending, enqueue},
    queue::Lane,
};

/// What one rescue pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rescued {
    /// Back to PENDING and queued again.
    pub requeued: Vec<Uuid>,
    /// Out of attempts: FAILED, message sent to the dead lane.
    pub dead: Vec<Uuid>,
}

/// Rules of the rescue.
#[derive(Debug, Clone, Copy)]
pub struct RescuePolicy {
    /// A job IN_PROGRESS whose `updated_at` is older than this is stuck.
    pub stuck_after: Duration,
    /// When a rescue brings `attempts` to this, the job fails instead.
    pub max_attempts: i32,
    /// Jobs handled per transaction.
    pub batch_size: i64,
}

/// Takes up to `batch_size` stuck jobs (skipping rows another replica holds)
/// and, in one transaction: counts an attempt, puts them back to PENDING
/// with their unfinished subtasks, and queues them again through the outbox;
/// a job whose attempts reach the maximum becomes FAILED with the reason and
/// its message goes to the dead lane.
#[instrument(skip_all, err)]
pub async fn rescue_stuck_jobs(pool: &PgPool, policy: RescuePolicy) -> Result<Rescued, JobError> {
    let mut tx = pool.begin().await?;
    let stuck_secs = policy.stuck_after.as_secs_f64();
    let rows = sqlx::query_as::<_, JobRow>(&format!(
        "SELECT {JOB_COLUMNS} FROM translation_jobs \
         WHERE status = 'IN_PROGRESS' AND updated_at < now() - make_interval(secs => $1) \
         ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED"
    ))
    .bind(stuck_secs)
    .bind(policy.batch_size)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(Rescued::default());
    }

    let mut rescued = Rescued::default();
    let mut ids = Vec::with_capacity(rows.len());
    let mut statuses = Vec::with_capacity(rows.len());
    let mut attempts = Vec::with_capacity(rows.len());
    let mut errors: Vec<Option<String>> = Vec::with_capacity(rows.len());
    let mut messages = Vec::with_capacity(rows.len());
    for row in rows {
        let job = row.into_job(Vec::new())?;
        let attempt = job.attempts.saturating_add(1);
        let out_of_attempts = attempt >= policy.max_attempts;
        let (status, lane, error) = if out_of_attempts {
            let reason = format!(
                "stuck in IN_PROGRESS for more than {} on each of {attempt} attempts; giving up",
                humantime::format_duration(policy.stuck_after)
            );
            rescued.dead.push(job.id);
            (JobStatus::Failed, Lane::Dead, Some(reason))
        } else {
            rescued.requeued.push(job.id);
            (JobStatus::Pending, job.priority.lane(), None)
        };
        tracing::warn!(job_id = %job.id, attempt, status = status.as_str(), "rescued a stuck job");
        ids.push(job.id);
        statuses.push(status.as_str());
        attempts.push(attempt);
        errors.push(error);
        messages.push(Pending {
            job_id: job.id,
            lane,
            payload: job.message().to_json(),
        });
    }

    sqlx::query(
        "UPDATE translation_jobs AS j \
         SET status = u.status, attempts = u.attempts, error = COALESCE(u.error, j.error) \
         FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::text[]) AS u (id, status, attempts, error) \
         WHERE j.id = u.id",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&attempts)
    .bind(&errors)
    .execute(&mut *tx)
    .await?;
    // Subtasks a vanished worker left half done: redo them, or fail them
    // with the job.
    sqlx::query(
        "UPDATE translation_subtasks AS s \
         SET status = CASE WHEN j.status = 'FAILED' THEN 'FAILED' ELSE 'PENDING' END, \
             error = CASE WHEN j.status = 'FAILED' THEN 'job given up after being stuck' ELSE s.error END \
         FROM translation_jobs AS j \
         WHERE s.job_id = j.id AND j.id = ANY($1) AND s.status = 'IN_PROGRESS'",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    enqueue(&mut tx, &messages).await?;
    tx.commit().await?;
    Ok(rescued)
}
