//! Rescuing stuck jobs: IN_PROGRESS with no heartbeat for too long, and
//! PENDING long after their message was published (the message was lost: a
//! worker died between its pop and its claim, or Redis lost data).

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tracing::instrument;
use uuid::Uuid;

use super::{
    JobError, JobStatus,
    get::{JobRow, SELECT_JOBS},
    transitions::lock_subtasks,
};
use crate::{
    outbox::{Pending, enqueue},
    queue::Lane,
};

/// What one rescue pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rescued {
    /// Stuck IN_PROGRESS, back to PENDING and queued again.
    pub requeued: Vec<Uuid>,
    /// Out of attempts: FAILED, message sent to the dead lane.
    pub dead: Vec<Uuid>,
    /// PENDING long after being published, queued again.
    pub republished: Vec<Uuid>,
}

impl Rescued {
    pub fn is_empty(&self) -> bool {
        self.requeued.is_empty() && self.dead.is_empty() && self.republished.is_empty()
    }

    pub fn len(&self) -> usize {
        self.requeued.len() + self.dead.len() + self.republished.len()
    }
}

/// Rules of the rescue.
#[derive(Debug, Clone, Copy)]
pub struct RescuePolicy {
    /// A job IN_PROGRESS whose `updated_at` is older than this is stuck; so
    /// is a job PENDING whose message was published longer ago than this.
    pub stuck_after: Duration,
    /// When a rescue brings `attempts` to this, the job fails instead.
    pub max_attempts: i32,
    /// Jobs handled per transaction.
    pub batch_size: i64,
}

/// One pass over at most `batch_size` jobs of each kind, in one
/// transaction: stuck jobs get an attempt counted, their unfinished subtasks
/// and themselves go back to PENDING and a new outbox row queues them again;
/// a job whose attempts reach the maximum becomes FAILED with the reason and
/// its message goes to the dead lane. PENDING jobs whose message was
/// published too long ago are queued again (no attempt counted: no worker
/// started them). Safe with several replicas.
#[instrument(skip_all, err)]
pub async fn rescue_stuck_jobs(pool: &PgPool, policy: RescuePolicy) -> Result<Rescued, JobError> {
    let mut tx = pool.begin().await?;
    let mut rescued = Rescued::default();
    let mut messages = Vec::new();
    rescue_in_progress(&mut tx, policy, &mut rescued, &mut messages).await?;
    republish_pending(&mut tx, policy, &mut rescued, &mut messages).await?;
    enqueue(&mut tx, &messages).await?;
    tx.commit().await?;
    Ok(rescued)
}

async fn rescue_in_progress(
    tx: &mut PgConnection,
    policy: RescuePolicy,
    rescued: &mut Rescued,
    messages: &mut Vec<Pending>,
) -> Result<(), JobError> {
    let stuck_secs = policy.stuck_after.as_secs_f64();
    let candidates: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM translation_jobs \
         WHERE status = 'IN_PROGRESS' AND updated_at < now() - make_interval(secs => $1) \
         ORDER BY updated_at LIMIT $2",
    )
    .bind(stuck_secs)
    .bind(policy.batch_size)
    .fetch_all(&mut *tx)
    .await?;
    if candidates.is_empty() {
        return Ok(());
    }
    // Subtasks first, then jobs: the order a worker's subtask update takes
    // them in (see `lock_subtasks`). Then check again: a worker may have
    // made progress while we waited.
    lock_subtasks(tx, candidates.as_slice()).await?;
    let rows = sqlx::query_as::<_, JobRow>(&format!(
        "{SELECT_JOBS} \
         WHERE j.id = ANY($1) AND j.status = 'IN_PROGRESS' \
           AND j.updated_at < now() - make_interval(secs => $2) \
         ORDER BY j.id FOR UPDATE OF j"
    ))
    .bind(&candidates)
    .bind(stuck_secs)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(());
    }

    let mut ids = Vec::with_capacity(rows.len());
    let mut statuses = Vec::with_capacity(rows.len());
    let mut attempts = Vec::with_capacity(rows.len());
    let mut errors: Vec<Option<String>> = Vec::with_capacity(rows.len());
    for row in rows {
        let job = row.into_job(Vec::new())?;
        let attempt = job.attempts.saturating_add(1);
        let (status, lane, error) = if attempt >= policy.max_attempts {
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
    forget_publications(tx, &ids).await?;
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
    Ok(())
}

async fn republish_pending(
    tx: &mut PgConnection,
    policy: RescuePolicy,
    rescued: &mut Rescued,
    messages: &mut Vec<Pending>,
) -> Result<(), JobError> {
    // The publication is forgotten whenever a job is queued again, so a job
    // still waiting in the outbox (e.g. during a Redis outage) is never picked.
    let rows = sqlx::query_as::<_, JobRow>(&format!(
        "{SELECT_JOBS} \
         WHERE j.status = 'PENDING' AND p.published_at < now() - make_interval(secs => $1) \
         ORDER BY p.published_at LIMIT $2 FOR UPDATE OF j SKIP LOCKED"
    ))
    .bind(policy.stuck_after.as_secs_f64())
    .bind(policy.batch_size)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(rows.len());
    for row in rows {
        let job = row.into_job(Vec::new())?;
        tracing::warn!(job_id = %job.id, "job still PENDING long after its message was published; queueing it again");
        ids.push(job.id);
        rescued.republished.push(job.id);
        messages.push(Pending {
            job_id: job.id,
            lane: job.priority.lane(),
            payload: job.message().to_json(),
        });
    }
    forget_publications(tx, &ids).await?;
    Ok(())
}

/// Jobs queued again have not been published since.
pub(crate) async fn forget_publications(
    conn: &mut PgConnection,
    job_ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM job_publications WHERE job_id = ANY($1)")
        .bind(job_ids)
        .execute(conn)
        .await?;
    Ok(())
}
