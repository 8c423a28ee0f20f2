//! Reading jobs back.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use tracing::instrument;
use uuid::Uuid;

use super::{
    Job, JobError, JobStatus, Priority, Subtask,
    scope::{Scope, SubtaskCounts, subtask_counts},
};

/// A job with its publish time: the job table `j` joined to `p`.
pub(crate) const SELECT_JOBS: &str = "SELECT j.id, j.user_id, j.novel_id, j.source_lang, \
     j.target_lang, j.target_fields, j.enable_code_filter, j.output_dir, j.priority, j.status, \
     j.attempts, j.error, j.request_id, j.created_at, j.updated_at, p.published_at, \
     j.scheduled_at, j.max_attempts, j.failures, j.retryable \
     FROM translation_jobs AS j LEFT JOIN job_publications AS p ON p.job_id = j.id";

/// The columns of a [`JobRow`] for `RETURNING` after a change of the job
/// table alone (no publication: a job just queued again has none).
pub(crate) const RETURNING_JOB: &str = "RETURNING id, user_id, novel_id, source_lang, \
     target_lang, target_fields, enable_code_filter, output_dir, priority, status, attempts, \
     error, request_id, created_at, updated_at, NULL::timestamptz AS published_at, \
     scheduled_at, max_attempts, failures, retryable";

/// A row of `translation_jobs`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct JobRow {
    id: Uuid,
    user_id: String,
    novel_id: Uuid,
    source_lang: String,
    target_lang: String,
    target_fields: Vec<String>,
    enable_code_filter: bool,
    output_dir: String,
    priority: String,
    status: String,
    attempts: i32,
    error: Option<String>,
    request_id: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    published_at: Option<DateTime<Utc>>,
    scheduled_at: Option<DateTime<Utc>>,
    max_attempts: i32,
    failures: i32,
    retryable: bool,
}

impl JobRow {
    pub(crate) fn id(&self) -> Uuid {
        self.id
    }

    pub(crate) fn into_job(self, subtasks: Vec<Subtask>) -> Result<Job, JobError> {
        let corrupt = |reason: String| JobError::Corrupt {
            job_id: self.id,
            reason,
        };
        let status = JobStatus::parse(&self.status)
            .ok_or_else(|| corrupt(format!("unknown status {:?}", self.status)))?;
        let priority = Priority::parse(&self.priority)
            .ok_or_else(|| corrupt(format!("unknown priority {:?}", self.priority)))?;
        Ok(Job {
            id: self.id,
            user_id: self.user_id,
            novel_id: self.novel_id,
            source_lang: self.source_lang,
            target_lang: self.target_lang,
            target_fields: self.target_fields,
            enable_code_filter: self.enable_code_filter,
            output_dir: self.output_dir,
            priority,
            status,
            attempts: self.attempts,
            error: self.error,
            request_id: self.request_id,
            created_at: self.created_at,
            updated_at: self.updated_at,
            published_at: self.published_at,
            scheduled_at: self.scheduled_at,
            max_attempts: self.max_attempts,
            failures: self.failures,
            retryable: self.retryable,
            subtasks,
        })
    }
}

/// Subtasks of one job, in creation order (their ids are time-ordered).
pub(crate) async fn subtasks_of(
    conn: &mut PgConnection,
    job_id: Uuid,
) -> Result<Vec<Subtask>, JobError> {
    let rows = sqlx::query_as::<_, Subtask>(
        "SELECT id, entity_type, entity_id, status, attempts, error, updated_at \
         FROM translation_subtasks WHERE job_id = $1 ORDER BY id",
    )
    .bind(job_id)
    .fetch_all(conn)
    .await
    .map_err(|error| match error {
        sqlx::Error::ColumnDecode { source, .. } => JobError::Corrupt {
            job_id,
            reason: source.to_string(),
        },
        other => JobError::Database(other),
    })?;
    Ok(rows)
}

/// One job with its subtasks, or `NotFound` (also when the job is outside
/// `scope`: another caller's job does not exist for this one).
#[instrument(skip(pool), err(level = "debug"))]
pub async fn get_job(pool: &PgPool, id: Uuid, scope: &Scope) -> Result<Job, JobError> {
    let mut conn = pool.acquire().await?;
    read_job_in(&mut conn, id, scope).await
}

/// One job without its subtasks (left empty) but with their counts, or
/// `NotFound` as [`get_job`].
#[instrument(skip(pool), err(level = "debug"))]
pub async fn get_job_basic(
    pool: &PgPool,
    id: Uuid,
    scope: &Scope,
) -> Result<(Job, SubtaskCounts), JobError> {
    let mut conn = pool.acquire().await?;
    let row = read_row(&mut conn, id, scope).await?;
    let counts = subtask_counts(&mut conn, &[id])
        .await?
        .remove(&id)
        .unwrap_or_default();
    Ok((row.into_job(Vec::new())?, counts))
}

/// One job with its subtasks on a given connection (or transaction),
/// whoever created it.
pub(crate) async fn read_job(conn: &mut PgConnection, id: Uuid) -> Result<Job, JobError> {
    read_job_in(conn, id, &Scope::All).await
}

/// One job with its subtasks, when it is inside `scope`.
pub(crate) async fn read_job_in(
    conn: &mut PgConnection,
    id: Uuid,
    scope: &Scope,
) -> Result<Job, JobError> {
    let row = read_row(conn, id, scope).await?;
    let subtasks = subtasks_of(conn, id).await?;
    row.into_job(subtasks)
}

/// The job's row, when it is inside `scope`.
async fn read_row(conn: &mut PgConnection, id: Uuid, scope: &Scope) -> Result<JobRow, JobError> {
    sqlx::query_as::<_, JobRow>(&format!(
        "{SELECT_JOBS} WHERE j.id = $1 AND ($2::text IS NULL OR j.user_id = $2)"
    ))
    .bind(id)
    .bind(scope.owner())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(JobError::NotFound(id))
}

/// The subtasks of several jobs at once, grouped by job.
pub(crate) async fn subtasks_of_many(
    conn: &mut PgConnection,
    job_ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, Vec<Subtask>>, JobError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        job_id: Uuid,
        #[sqlx(flatten)]
        subtask: Subtask,
    }
    let rows = sqlx::query_as::<_, Row>(
        "SELECT job_id, id, entity_type, entity_id, status, attempts, error, updated_at \
         FROM translation_subtasks WHERE job_id = ANY($1) ORDER BY job_id, id",
    )
    .bind(job_ids)
    .fetch_all(conn)
    .await?;
    let mut grouped: std::collections::HashMap<Uuid, Vec<Subtask>> =
        std::collections::HashMap::new();
    for row in rows {
        grouped.entry(row.job_id).or_default().push(row.subtask);
    }
    Ok(grouped)
}

/// The job a caller created with an idempotency key, if any.
pub(crate) async fn find_by_request_id(
    conn: &mut PgConnection,
    user_id: &str,
    request_id: &str,
) -> Result<Option<Job>, JobError> {
    let row = sqlx::query_as::<_, JobRow>(&format!(
        "{SELECT_JOBS} WHERE j.user_id = $1 AND j.request_id = $2"
    ))
    .bind(user_id)
    .bind(request_id)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        None => Ok(None),
        Some(row) => {
            let subtasks = subtasks_of(conn, row.id).await?;
            row.into_job(subtasks).map(Some)
        }
    }
}

/// Which transactions a read saw: PostgreSQL's `pg_current_snapshot()`,
/// `xmin:xmax:xip,...`. A change event whose transaction is visible in the
/// snapshot is already part of what was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxSnapshot {
    xmin: u64,
    xmax: u64,
    in_progress: Vec<u64>,
}

impl TxSnapshot {
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let in_progress = match parts.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?,
        };
        Some(Self {
            xmin,
            xmax,
            in_progress,
        })
    }

    /// Whether transaction `xid` had committed (or aborted) when the
    /// snapshot was taken, i.e. its changes, if committed, are in the read.
    pub fn saw(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.in_progress.contains(&xid))
    }
}

/// One job with its subtasks, read consistently (one repeatable-read
/// transaction), with the snapshot the read saw; `NotFound` outside
/// `scope`.
pub async fn read_job_with_snapshot(
    pool: &PgPool,
    id: Uuid,
    scope: &Scope,
) -> Result<(Job, TxSnapshot), JobError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
        .fetch_one(&mut *tx)
        .await?;
    let job = read_job_in(&mut tx, id, scope).await?;
    tx.commit().await?;
    let snapshot = TxSnapshot::parse(&snapshot).ok_or_else(|| JobError::Corrupt {
        job_id: id,
        reason: format!("unreadable snapshot {snapshot:?}"),
    })?;
    Ok((job, snapshot))
}

#[cfg(test)]
mod tests {
    use super::TxSnapshot;

    #[test]
    fn a_snapshot_saw_what_finished_before_it() {
        let snapshot = TxSnapshot::parse("10:20:12,15").unwrap();
        assert!(snapshot.saw(9));
        assert!(snapshot.saw(11));
        assert!(!snapshot.saw(12));
        assert!(!snapshot.saw(15));
        assert!(snapshot.saw(19));
        assert!(!snapshot.saw(20));
        assert!(!snapshot.saw(25));
        assert_eq!(
            TxSnapshot::parse("5:5:").unwrap(),
            TxSnapshot {
                xmin: 5,
                xmax: 5,
                in_progress: vec![]
            }
        );
        assert_eq!(TxSnapshot::parse("garbage"), None);
    }
}
