//! Deleting finished jobs once they are old enough: the statements of the
//! retention loop (`crate::retention`).
//!
//! A job goes with everything of its own: its subtasks (`ON DELETE
//! CASCADE`), its publication, and any message of it still waiting in
//! `outbox` or `outbox_scheduled` (a dead letter not yet pushed). Nothing
//! here waits for a lock: every row is taken with `FOR UPDATE SKIP LOCKED`,
//! and a job any of whose rows another transaction holds (a worker's
//! statement, a transition, a relay pushing its message) is passed over and
//! left for a later pass.
//!
//! There is no index on `updated_at` (it changes with every heartbeat;
//! indexing it would make every update of a job non-HOT). Job ids are
//! UUIDv7, time-ordered, and a job updated before the cutoff was created
//! before it, so each batch reads a window of the `(status, id DESC)` index
//! (the next `batch_size` ids of the status, below the smallest id of the
//! cutoff's millisecond: an index-only scan, which the planner prefers to
//! the primary key whatever the share of the status) and reads
//! `updated_at` only of the jobs in it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tracing::instrument;
use uuid::Uuid;

use super::{JobError, JobStatus};

/// How long finished jobs are kept, and how much one pass deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Kept this long after their last update; `None`: forever.
    pub completed: Option<Duration>,
    pub failed: Option<Duration>,
    pub cancelled: Option<Duration>,
    /// Jobs deleted per transaction.
    pub batch_size: i64,
    /// Most batches of one status in one pass, so that a pass ends however
    /// much is due; the rest waits for the next pass.
    pub max_batches: u32,
}

impl RetentionPolicy {
    /// Each finished status with how long it is kept.
    pub fn ages(&self) -> [(JobStatus, Option<Duration>); 3] {
        [
            (JobStatus::Completed, self.completed),
            (JobStatus::Failed, self.failed),
            (JobStatus::Cancelled, self.cancelled),
        ]
    }

    /// Whether every finished status is kept forever (nothing to run).
    pub fn keeps_everything(&self) -> bool {
        self.ages().iter().all(|(_, age)| age.is_none())
    }
}

/// The moment before which jobs kept for `age` may go, seen at `now`;
/// `None` when that is before 1970 (nothing is that old).
pub fn cutoff(now: DateTime<Utc>, age: Duration) -> Option<DateTime<Utc>> {
    let age = chrono::Duration::from_std(age).ok()?;
    now.checked_sub_signed(age)
        .filter(|cutoff| cutoff.timestamp_millis() >= 0)
}

/// The smallest UUIDv7 of `at`'s millisecond: every id drawn before that
/// millisecond is below it, every id drawn in it or later is not.
pub fn first_id_at(at: DateTime<Utc>) -> Uuid {
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &[0; 10]).into_uuid()
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneBatch {
    /// Jobs deleted, with their subtasks, publication and messages.
    pub deleted: Vec<Uuid>,
    /// Jobs of the status created before the cutoff that the batch looked
    /// at (at most the batch size): fewer than the batch size means none is
    /// left after `last`.
    pub scanned: usize,
    /// Jobs left alone because another transaction holds one of their
    /// subtasks, messages or publication.
    pub held: Vec<Uuid>,
    /// The highest id looked at: the next batch of the pass starts after
    /// it.
    pub last: Option<Uuid>,
}

/// The window: the next `$5` ids of status `$1` after `$2` and below the
/// cutoff's first id `$3`, from the `(status, id DESC)` index alone. Of
/// those, the jobs still of that status and last updated before the cutoff
/// `$4` are locked, skipping rows other transactions hold. Returns the
/// window's size and last id, and the jobs locked.
const LOCK_JOBS: &str = "\
     WITH window_ids AS MATERIALIZED ( \
              SELECT id FROM translation_jobs \
               WHERE status = $1 AND id > $2 AND id < $3 \
               ORDER BY id LIMIT $5), \
          locked AS MATERIALIZED ( \
              SELECT j.id FROM translation_jobs AS j \
               WHERE j.id IN (SELECT id FROM window_ids) AND j.status = $1 AND j.updated_at < $4 \
               ORDER BY j.id FOR UPDATE OF j SKIP LOCKED) \
     SELECT (SELECT count(*) FROM window_ids), \
            (SELECT id FROM window_ids ORDER BY id DESC LIMIT 1), \
            ARRAY(SELECT id FROM locked ORDER BY id)";

/// Locks, without waiting, the rows of the jobs in `$1` in the other tables,
/// and returns the jobs one of whose rows stayed unlocked (held by another
/// transaction). Each `FOR UPDATE SKIP LOCKED` runs in a CTE the main query
/// joins, so it runs whenever the job has a row there; a row another
/// transaction holds is visible to the main query and missing from the CTE.
const LOCK_REST: &str = "\
     WITH subtasks AS MATERIALIZED ( \
              SELECT id FROM translation_subtasks WHERE job_id = ANY($1) FOR UPDATE SKIP LOCKED), \
          messages AS MATERIALIZED ( \
              SELECT id FROM outbox WHERE job_id = ANY($1) FOR UPDATE SKIP LOCKED), \
          scheduled AS MATERIALIZED ( \
              SELECT id FROM outbox_scheduled WHERE job_id = ANY($1) FOR UPDATE SKIP LOCKED), \
          publications AS MATERIALIZED ( \
              SELECT job_id FROM job_publications WHERE job_id = ANY($1) FOR UPDATE SKIP LOCKED) \
     SELECT s.job_id FROM translation_subtasks AS s LEFT JOIN subtasks AS l USING (id) \
      WHERE s.job_id = ANY($1) AND l.id IS NULL \
     UNION \
     SELECT o.job_id FROM outbox AS o LEFT JOIN messages AS l USING (id) \
      WHERE o.job_id = ANY($1) AND l.id IS NULL \
     UNION \
     SELECT o.job_id FROM outbox_scheduled AS o LEFT JOIN scheduled AS l USING (id) \
      WHERE o.job_id = ANY($1) AND l.id IS NULL \
     UNION \
     SELECT p.job_id FROM job_publications AS p LEFT JOIN publications AS l USING (job_id) \
      WHERE p.job_id = ANY($1) AND l.job_id IS NULL";

/// Deletes the jobs, guarded again by status and age (a job retried or
/// touched since is not deleted), and what of theirs the cascade does not
/// reach. Returns the jobs deleted.
const DELETE_JOBS: &str = "\
     WITH gone AS ( \
              DELETE FROM translation_jobs \
               WHERE id = ANY($1) AND status = $2 AND updated_at < $3 \
              RETURNING id), \
          messages AS (DELETE FROM outbox WHERE job_id IN (SELECT id FROM gone)), \
          scheduled AS (DELETE FROM outbox_scheduled WHERE job_id IN (SELECT id FROM gone)), \
          publications AS (DELETE FROM job_publications WHERE job_id IN (SELECT id FROM gone)) \
     SELECT id FROM gone";

/// One batch, in one transaction: looks at the next `batch_size` jobs of
/// `status` (finished statuses only) created before `cutoff`, oldest first
/// from `after` on, locks those last updated before `cutoff`, then their
/// subtasks, messages and publications, and deletes every job none of whose
/// rows another transaction holds. Never waits for a lock.
#[instrument(skip_all, fields(status = status.as_str()), err)]
pub async fn prune_batch(
    pool: &PgPool,
    status: JobStatus,
    cutoff: DateTime<Utc>,
    after: Uuid,
    batch_size: i64,
) -> Result<PruneBatch, JobError> {
    // Only finished jobs, whatever the caller asks.
    if !status.is_terminal() {
        return Ok(PruneBatch::default());
    }
    let mut tx = pool.begin().await?;
    // `outbox` has no index on `job_id`: its scan carries the cost the
    // pool's `enable_seqscan = off` adds, which passes `jit_above_cost` and
    // made PostgreSQL compile each statement (about 200 ms a batch, against
    // tens of milliseconds for the work itself).
    sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
    let (scanned, last, locked): (i64, Option<Uuid>, Vec<Uuid>) = sqlx::query_as(LOCK_JOBS)
        .bind(status.as_str())
        .bind(after)
        .bind(first_id_at(cutoff))
        .bind(cutoff)
        .bind(batch_size)
        .fetch_one(&mut *tx)
        .await?;
    let scanned = usize::try_from(scanned).unwrap_or(0);
    if locked.is_empty() {
        tx.rollback().await?;
        return Ok(PruneBatch {
            scanned,
            last,
            ..PruneBatch::default()
        });
    }
    let held: Vec<Uuid> = sqlx::query_scalar(LOCK_REST)
        .bind(&locked)
        .fetch_all(&mut *tx)
        .await?;
    let free: Vec<Uuid> = locked
        .iter()
        .filter(|id| !held.contains(id))
        .copied()
        .collect();
    let deleted: Vec<Uuid> = sqlx::query_scalar(DELETE_JOBS)
        .bind(&free)
        .bind(status.as_str())
        .bind(cutoff)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(PruneBatch {
        deleted,
        scanned,
        held,
        last,
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn the_first_id_of_a_millisecond_parts_earlier_ids_from_later_ones() {
        let millis = 1_765_000_000_123;
        let bound = first_id_at(Utc.timestamp_millis_opt(millis).unwrap());
        assert_eq!(bound.get_version_num(), 7);
        let id_at = |millis: i64| {
            let mut random = [0u8; 10];
            fastrand::fill(&mut random);
            uuid::Builder::from_unix_timestamp_millis(millis as u64, &random).into_uuid()
        };
        for _ in 0..1000 {
            let before = id_at(millis - 1);
            let same = id_at(millis);
            assert!(before < bound, "{before} < {bound}");
            assert!(same >= bound, "{same} >= {bound}");
        }
        assert!(Uuid::now_v7() > bound);
    }

    #[test]
    fn a_cutoff_before_1970_is_none() {
        let now = Utc.timestamp_millis_opt(1_765_000_000_000).unwrap();
        assert_eq!(
            cutoff(now, Duration::from_secs(7 * 24 * 3600)),
            Some(now - chrono::Duration::days(7))
        );
        assert_eq!(
            cutoff(now, Duration::from_secs(100 * 365 * 24 * 3600)),
            None
        );
        assert_eq!(cutoff(now, Duration::MAX), None);
    }

    #[test]
    fn a_policy_of_zeros_keeps_everything() {
        let mut policy = RetentionPolicy {
            completed: None,
            failed: None,
            cancelled: None,
            batch_size: 1,
            max_batches: 1,
        };
        assert!(policy.keeps_everything());
        policy.failed = Some(Duration::from_secs(1));
        assert!(!policy.keeps_everything());
        assert_eq!(
            policy.ages().map(|(status, _)| status),
            [
                JobStatus::Completed,
                JobStatus::Failed,
                JobStatus::Cancelled
            ]
        );
    }
}
