//! Rescuing jobs nobody works on: IN_PROGRESS with no heartbeat for too long
//! (the worker died), and PENDING whose message is gone (a worker popped it
//! and died before claiming, or Redis lost it).

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tracing::instrument;
use uuid::Uuid;

use super::{
    JobError,
    get::{JobRow, RETURNING_JOB},
    requeue::{Reason, forget_messages, guard_subtasks, hand_out_again, try_lock_subtasks},
};
use crate::{
    db::IDLE_IN_TRANSACTION_TIMEOUT,
    outbox::{Pending, enqueue},
    queue::{Lane, Snapshot},
};

/// What one rescue did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rescued {
    /// Stuck IN_PROGRESS, back to PENDING and queued again.
    pub requeued: Vec<Uuid>,
    /// Out of attempts: FAILED, message sent to the dead lane.
    pub dead: Vec<Uuid>,
    /// PENDING with their message lost, queued again.
    pub republished: Vec<Uuid>,
}

impl Rescued {
    pub fn is_empty(&self) -> bool {
        self.requeued.is_empty() && self.dead.is_empty() && self.republished.is_empty()
    }

    pub fn len(&self) -> usize {
        self.requeued.len() + self.dead.len() + self.republished.len()
    }

    pub fn extend(&mut self, other: Rescued) {
        self.requeued.extend(other.requeued);
        self.dead.extend(other.dead);
        self.republished.extend(other.republished);
    }
}

/// Rules of the rescue.
#[derive(Debug, Clone, Copy)]
pub struct RescuePolicy {
    /// A job IN_PROGRESS whose `updated_at` is older than this is stuck; so
    /// is a job PENDING whose message a worker popped longer ago than this
    /// without claiming it.
    pub stuck_after: Duration,
    /// Jobs handled per transaction.
    pub batch_size: i64,
}

/// One pass over at most `batch_size` jobs stuck IN_PROGRESS, in one
/// transaction: each gets a failed attempt (and a rescue) counted; if its
/// failed attempts reach its `max_attempts` it becomes FAILED with the
/// reason and its message goes to the dead lane; otherwise its unfinished subtasks and itself go back to
/// PENDING under a new attempt, queued again. Safe with several replicas.
/// Never waits for a lock: a job another transaction holds is left for a
/// later pass (see [`rescue_stuck_batch`]).
#[instrument(skip_all, err)]
pub async fn rescue_stuck_jobs(pool: &PgPool, policy: RescuePolicy) -> Result<Rescued, JobError> {
    Ok(rescue_stuck_batch(pool, policy, &[]).await?.rescued)
}

/// What one batch of the stuck-job rescue did.
#[derive(Debug, Clone, Default)]
pub struct StuckBatch {
    pub rescued: Rescued,
    /// Jobs looked at (at most the batch size): fewer than the batch size
    /// means there are no more.
    pub candidates: usize,
    /// Stuck jobs left alone because another transaction holds their row or
    /// one of their subtasks' (a worker's statement, or a session that
    /// keeps a transaction open).
    pub skipped: Vec<Uuid>,
}

/// One batch of [`rescue_stuck_jobs`], passing over `passed_over` (the jobs
/// earlier batches of the same pass skipped, so that a pass ends).
///
/// Locks with `SKIP LOCKED`, subtasks first and then the job (the order a
/// worker's subtask update takes them in, see `lock_subtasks`), so that one
/// transaction holding one job's rows never stops the rescue of the others.
#[instrument(skip_all, err)]
pub async fn rescue_stuck_batch(
    pool: &PgPool,
    policy: RescuePolicy,
    passed_over: &[Uuid],
) -> Result<StuckBatch, JobError> {
    let mut tx = pool.begin().await?;
    let batch = rescue_in_progress(&mut tx, policy, passed_over).await?;
    tx.commit().await?;
    Ok(batch)
}

async fn rescue_in_progress(
    tx: &mut PgConnection,
    policy: RescuePolicy,
    passed_over: &[Uuid],
) -> Result<StuckBatch, JobError> {
    let stuck_secs = policy.stuck_after.as_secs_f64();
    let candidates: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM translation_jobs \
         WHERE status = 'IN_PROGRESS' AND updated_at < now() - make_interval(secs => $1) \
           AND NOT (id = ANY($3)) \
         ORDER BY updated_at LIMIT $2",
    )
    .bind(stuck_secs)
    .bind(policy.batch_size)
    .bind(passed_over)
    .fetch_all(&mut *tx)
    .await?;
    if candidates.is_empty() {
        return Ok(StuckBatch::default());
    }
    // Subtasks first, then jobs, neither waiting. Then check again: a worker
    // may have made progress since the candidates were read.
    let free = try_lock_subtasks(tx, &candidates).await?;
    let locked: Vec<(Uuid, bool, bool)> = sqlx::query_as(
        "SELECT id, failures + 1 >= max_attempts, \
                status = 'IN_PROGRESS' AND updated_at < now() - make_interval(secs => $2) \
         FROM translation_jobs WHERE id = ANY($1) \
         ORDER BY id FOR UPDATE SKIP LOCKED",
    )
    .bind(&free)
    .bind(stuck_secs)
    .fetch_all(&mut *tx)
    .await?;
    let skipped: Vec<Uuid> = candidates
        .iter()
        .filter(|id| !locked.iter().any(|(locked, _, _)| locked == *id))
        .copied()
        .collect();
    let stuck: Vec<(Uuid, bool)> = locked
        .into_iter()
        .filter(|(_, _, still_stuck)| *still_stuck)
        .map(|(id, last_attempt, _)| (id, last_attempt))
        .collect();
    let mut batch = StuckBatch {
        rescued: Rescued::default(),
        candidates: candidates.len(),
        skipped,
    };
    if stuck.is_empty() {
        return Ok(batch);
    }
    let dead: Vec<Uuid> = stuck
        .iter()
        .filter(|(_, last_attempt)| *last_attempt)
        .map(|(id, _)| *id)
        .collect();
    let requeued: Vec<Uuid> = stuck
        .iter()
        .filter(|(_, last_attempt)| !*last_attempt)
        .map(|(id, _)| *id)
        .collect();
    let stuck: Vec<Uuid> = dead.iter().chain(&requeued).copied().collect();

    // Subtasks a vanished worker left half done: redo them, or fail them
    // with the job.
    sqlx::query(
        "UPDATE translation_subtasks \
         SET status = CASE WHEN job_id = ANY($2) THEN 'FAILED' ELSE 'PENDING' END, \
             error = CASE WHEN job_id = ANY($2) THEN 'job given up after being stuck' ELSE error END \
         WHERE job_id = ANY($1) AND status = 'IN_PROGRESS'",
    )
    .bind(&stuck)
    .bind(&dead)
    .execute(&mut *tx)
    .await?;

    for job in hand_out_again(tx, &requeued, Reason::Stuck).await? {
        tracing::warn!(job_id = %job.id, attempt = job.attempts, "rescued a job stuck IN_PROGRESS; queued again");
    }
    dead_letter(tx, &dead, policy).await?;
    batch.rescued = Rescued {
        requeued,
        dead,
        republished: Vec::new(),
    };
    Ok(batch)
}

/// Fails jobs stuck on their last attempt and sends their message to the
/// dead lane (for inspection or a redrive). The attempt stays: a worker
/// that was only slow finds the job FAILED and stops. Counting the failure
/// here (`failures + 1`) is what tells the retry trigger that this FAILED
/// is the service's, not a worker's.
async fn dead_letter(
    tx: &mut PgConnection,
    job_ids: &[Uuid],
    policy: RescuePolicy,
) -> Result<(), JobError> {
    if job_ids.is_empty() {
        return Ok(());
    }
    let reason = format!(
        "stuck in IN_PROGRESS for more than {} on its last attempt (max_attempts); giving up",
        humantime::format_duration(policy.stuck_after),
    );
    let rows = sqlx::query_as::<_, JobRow>(&format!(
        "UPDATE translation_jobs SET status = 'FAILED', rescues = rescues + 1, \
             failures = failures + 1, scheduled_at = NULL, error = $2 \
         WHERE id = ANY($1) {RETURNING_JOB}"
    ))
    .bind(job_ids)
    .bind(&reason)
    .fetch_all(&mut *tx)
    .await?;
    // A worker that was only slow can no longer start or finish a subtask.
    guard_subtasks(tx, job_ids).await?;
    // What an earlier attempt left in the outbox is stale now.
    forget_messages(tx, job_ids).await?;
    let mut messages = Vec::with_capacity(rows.len());
    for row in rows {
        let job = row.into_job(Vec::new())?;
        tracing::warn!(job_id = %job.id, attempt = job.attempts, "job stuck on every attempt; FAILED and dead-lettered");
        messages.push(Pending {
            job_id: job.id,
            attempt: job.attempts,
            lane: Lane::Dead,
            payload: job.message().to_json(),
        });
    }
    enqueue(tx, &messages).await?;
    Ok(())
}

/// A PENDING job whose current message may be gone, with where the message
/// went.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LostCandidate {
    pub job_id: Uuid,
    lane: Option<String>,
    seq: Option<i64>,
    generation: Option<i64>,
    /// Published longer ago than the policy's `stuck_after`.
    overdue: bool,
}

impl LostCandidate {
    /// Whether its message is gone, judged against a snapshot of Redis taken
    /// after the candidates were read (so every candidate's push is in it,
    /// unless Redis lost it).
    pub fn is_lost(&self, generation: i64, after: &Snapshot) -> bool {
        let (Some(pushed_under), Some(seq), Some(lane)) = (
            self.generation,
            self.seq,
            self.lane.as_deref().and_then(Lane::parse),
        ) else {
            // Published by a version that kept no position: the old rule.
            return self.overdue;
        };
        if pushed_under != generation {
            return true;
        }
        let Some(count) = after.lane(lane) else {
            return false;
        };
        // Rolled back with a failover, or popped and never claimed.
        seq > count.pushed || (self.overdue && seq <= count.popped())
    }
}

/// The reaper's place in its search for lost messages of one queue (the
/// `lost_message_sweeps` row), taken for one transaction: the search looks
/// at the PENDING jobs after `after` in id order, a window at a time, and
/// the next window, in this pass or the next, whichever replica runs it,
/// starts where this one ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostSweep {
    /// The last job id looked at; `None` at the start of a round.
    pub after: Option<Uuid>,
}

/// Takes the lost-message search of `queue` for the transaction `tx`, or
/// `None` when another reaper holds it (its pass is under way: this one
/// leaves the search to it). Never waits.
pub async fn take_lost_sweep(
    tx: &mut PgConnection,
    queue: &str,
) -> Result<Option<LostSweep>, JobError> {
    sqlx::query(
        "INSERT INTO lost_message_sweeps (queue) VALUES ($1) ON CONFLICT (queue) DO NOTHING",
    )
    .bind(queue)
    .execute(&mut *tx)
    .await?;
    let after: Option<Option<Uuid>> = sqlx::query_scalar(
        "SELECT after_id FROM lost_message_sweeps WHERE queue = $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(queue)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(after.map(|after| LostSweep { after }))
}

/// The next `limit` PENDING jobs after the search's place, in id order:
/// through the status index, reading only these.
pub async fn lost_sweep_window(
    tx: &mut PgConnection,
    sweep: LostSweep,
    limit: i64,
) -> Result<Vec<Uuid>, JobError> {
    let window = sqlx::query_scalar(
        "SELECT id FROM translation_jobs WHERE status = 'PENDING' AND id > $1 \
         ORDER BY id LIMIT $2",
    )
    .bind(sweep.after.unwrap_or(Uuid::nil()))
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    Ok(window)
}

/// Moves the search of `queue` on to after `after` (`None`: back to the
/// start), in the transaction that holds it.
pub async fn move_lost_sweep(
    tx: &mut PgConnection,
    queue: &str,
    after: Option<Uuid>,
) -> Result<(), JobError> {
    sqlx::query("UPDATE lost_message_sweeps SET after_id = $2 WHERE queue = $1")
        .bind(queue)
        .bind(after)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Notes when a reaper first saw the current message of a job of `window`
/// popped (its position at or below its lane's popped count in
/// `snapshot`): a message counts as popped and never claimed only once it
/// has been seen popped for the policy's `stuck_after`, however long it
/// waited before the pop. Rows another transaction holds are noted when the
/// search comes by again.
pub async fn note_popped(
    tx: &mut PgConnection,
    window: &[Uuid],
    generation: i64,
    snapshot: &Snapshot,
) -> Result<u64, JobError> {
    let lanes: Vec<&str> = snapshot.lanes.iter().map(|c| c.lane.as_str()).collect();
    let popped: Vec<i64> = snapshot.lanes.iter().map(|c| c.popped()).collect();
    let noted = sqlx::query(
        "UPDATE job_publications SET popped_seen_at = now() \
         WHERE job_id IN ( \
             SELECT p.job_id FROM translation_jobs AS j \
             JOIN job_publications AS p ON p.job_id = j.id AND p.attempt = j.attempts \
             JOIN UNNEST($2::text[], $3::int8[]) AS l (lane, popped) ON l.lane = p.lane \
             WHERE j.id = ANY($4) AND j.status = 'PENDING' AND p.generation = $1 \
               AND p.seq <= l.popped AND p.popped_seen_at IS NULL \
             FOR UPDATE OF p SKIP LOCKED)",
    )
    .bind(generation)
    .bind(&lanes)
    .bind(&popped)
    .bind(window)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(noted)
}

/// The jobs of `window` still PENDING whose current attempt's message may
/// be gone, judged by a snapshot of Redis taken before (`before`): pushed
/// under another generation, at a position beyond the lane's counter, or at
/// a position workers popped, seen popped (see [`note_popped`]) longer than
/// `stuck_after` ago. Locks them (skipping locked ones); the caller
/// confirms with a second snapshot ([`LostCandidate::is_lost`]) and hands
/// the lost ones out again with [`requeue_lost`] in the same transaction.
pub async fn lost_candidates(
    tx: &mut PgConnection,
    window: &[Uuid],
    generation: i64,
    before: &Snapshot,
    policy: RescuePolicy,
) -> Result<Vec<LostCandidate>, JobError> {
    let lanes: Vec<&str> = before.lanes.iter().map(|c| c.lane.as_str()).collect();
    let pushed: Vec<i64> = before.lanes.iter().map(|c| c.pushed).collect();
    let popped: Vec<i64> = before.lanes.iter().map(|c| c.popped()).collect();
    // A publication without a position (an older version's) is judged by
    // its age, as that version did.
    let candidates = sqlx::query_as::<_, LostCandidate>(
        "SELECT j.id AS job_id, p.lane, p.seq, p.generation, \
                CASE WHEN p.generation IS NULL \
                     THEN p.published_at < now() - make_interval(secs => $5) \
                     ELSE coalesce(p.popped_seen_at < now() - make_interval(secs => $5), false) \
                END AS overdue \
         FROM translation_jobs AS j \
         JOIN job_publications AS p ON p.job_id = j.id AND p.attempt = j.attempts \
         LEFT JOIN UNNEST($2::text[], $3::int8[], $4::int8[]) AS l (lane, pushed, popped) \
                ON l.lane = p.lane \
         WHERE j.id = ANY($6) AND j.status = 'PENDING' \
           AND ((p.generation IS NULL AND p.published_at < now() - make_interval(secs => $5)) \
                OR p.generation <> $1 \
                OR p.seq > l.pushed \
                OR (p.seq <= l.popped \
                    AND p.popped_seen_at < now() - make_interval(secs => $5))) \
         ORDER BY j.id \
         FOR UPDATE OF j SKIP LOCKED",
    )
    .bind(generation)
    .bind(&lanes)
    .bind(&pushed)
    .bind(&popped)
    .bind(policy.stuck_after.as_secs_f64())
    .bind(window)
    .fetch_all(&mut *tx)
    .await?;
    Ok(candidates)
}

/// How long a rollback the relay found is kept after it was worked off: a
/// round pushed before the rollback may still commit (its publications
/// then show lost jobs) until PostgreSQL ends its transaction, which it
/// does to a session idle in a transaction after
/// [`IDLE_IN_TRANSACTION_TIMEOUT`].
pub const ROLLBACK_KEPT_FOR: Duration = IDLE_IN_TRANSACTION_TIMEOUT.saturating_mul(2);

/// Works off the oldest rollback the relay found (see the `lane_rollbacks`
/// table) that no other reaper holds: hands out again, as new attempts, up
/// to `limit` PENDING jobs whose current message was recorded at a position
/// above the lane's counter before the push that found it, other than that
/// push's own jobs, and either at or below the counter after that push
/// (only that push took those positions since the rollback) or recorded
/// before that push (later pushes were recorded after it). The messages at
/// or below the counter are still in Redis and are left alone; so are the
/// messages pushed after the rollback, which reuse the lost positions. The
/// rollback is deleted once none of its jobs is left and it is older than
/// [`ROLLBACK_KEPT_FOR`] (a job another transaction holds is taken by a
/// later pass), or at once when it belongs to another generation (the new
/// generation queues everything again). Only rollbacks with an id above
/// `after` are looked at; returns `None` when none is waiting.
#[instrument(skip_all, err)]
pub async fn requeue_rolled_back(
    pool: &PgPool,
    queue: &str,
    generation: i64,
    limit: i64,
    after: i64,
) -> Result<Option<RolledBack>, JobError> {
    let mut tx = pool.begin().await?;
    let rollback: Option<(i64, i64, bool)> = sqlx::query_as(
        "SELECT id, generation, found_at < now() - make_interval(secs => $3) \
         FROM lane_rollbacks \
         WHERE queue = $1 AND id > $2 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .bind(queue)
    .bind(after)
    .bind(ROLLBACK_KEPT_FOR.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, pushed_under, expired)) = rollback else {
        return Ok(None);
    };
    let lost: Vec<Uuid> = if pushed_under == generation {
        sqlx::query_scalar(&format!(
            "SELECT j.id {ROLLED_BACK} ORDER BY j.id LIMIT $2 FOR UPDATE OF j SKIP LOCKED"
        ))
        .bind(id)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?
    } else {
        Vec::new()
    };
    requeue_lost(&mut tx, &lost).await?;
    let left = pushed_under == generation
        && sqlx::query_scalar::<_, bool>(&format!("SELECT EXISTS (SELECT 1 {ROLLED_BACK})"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    if !left && (expired || pushed_under != generation) {
        sqlx::query("DELETE FROM lane_rollbacks WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    if !lost.is_empty() {
        tracing::warn!(
            rollback = id,
            jobs = lost.len(),
            "Redis lost pushes in a failover (the lane's counter went back); their jobs are queued again"
        );
    }
    let more = left && i64::try_from(lost.len()).unwrap_or(i64::MAX) >= limit;
    Ok(Some(RolledBack {
        id,
        job_ids: lost,
        more,
    }))
}

/// The PENDING jobs a rollback (`$1`) lost, as a `FROM` clause.
const ROLLED_BACK: &str = "FROM lane_rollbacks AS r \
     JOIN job_publications AS p \
       ON p.generation = r.generation AND p.lane = r.lane AND p.seq > r.after_seq \
      AND (p.seq <= r.own_up_to OR p.published_at < r.pushed_before) \
      AND NOT (p.job_id = ANY(r.own_jobs)) \
     JOIN translation_jobs AS j ON j.id = p.job_id AND j.attempts = p.attempt \
     WHERE r.id = $1 AND j.status = 'PENDING'";

/// What one call of [`requeue_rolled_back`] did.
#[derive(Debug, Clone)]
pub struct RolledBack {
    /// The rollback worked on.
    pub id: i64,
    /// Its jobs handed out again.
    pub job_ids: Vec<Uuid>,
    /// A full batch and more of its jobs left: call again for the same
    /// rollback. False when it is done, or when only jobs another
    /// transaction holds are left (a later pass takes them).
    pub more: bool,
}

/// Hands jobs whose message was lost out again (a new attempt, a new
/// message), in the caller's transaction.
pub async fn requeue_lost(tx: &mut PgConnection, job_ids: &[Uuid]) -> Result<(), JobError> {
    for job in hand_out_again(tx, job_ids, Reason::Lost).await? {
        tracing::warn!(job_id = %job.id, attempt = job.attempts, "the message of a PENDING job was lost; queued again");
    }
    Ok(())
}
