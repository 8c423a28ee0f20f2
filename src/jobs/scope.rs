//! Whose jobs a query may see, and how much of each job it reads.

use std::collections::HashMap;

use sqlx::PgConnection;
use uuid::Uuid;

use super::{Job, JobError, JobStatus, fields::UserId};

/// Whose jobs a caller may see and change. Every read and every change a
/// caller asks for takes one, so a job of another caller is simply not
/// there (NOT_FOUND), never "there but forbidden".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every job: an administrator, or a service running without
    /// authentication.
    All,
    /// Only the jobs this caller created (`translation_jobs.user_id`).
    Owner(UserId),
}

impl Scope {
    /// The `user_id` a query must match, bound as `$n::text`: NULL for
    /// every job.
    pub(crate) fn owner(&self) -> Option<&str> {
        match self {
            Scope::All => None,
            Scope::Owner(user_id) => Some(user_id.as_str()),
        }
    }
}

/// How much of a job a read returns (AIP-157 partial responses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JobView {
    /// The job and its subtask counts, without the subtasks themselves.
    Basic,
    /// The job with every subtask.
    #[default]
    Full,
}

/// How many subtasks a job has and how many of them are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubtaskCounts {
    pub completed: i64,
    pub total: i64,
}

impl SubtaskCounts {
    /// The counts of a job read with its subtasks.
    pub fn of(job: &Job) -> Self {
        Self {
            completed: i64::try_from(job.completed_subtasks()).unwrap_or(i64::MAX),
            total: i64::try_from(job.subtasks.len()).unwrap_or(i64::MAX),
        }
    }
}

/// The subtask counts of several jobs, counted by PostgreSQL (no subtask
/// row leaves the server). Jobs without subtasks are absent.
pub(crate) async fn subtask_counts(
    conn: &mut PgConnection,
    job_ids: &[Uuid],
) -> Result<HashMap<Uuid, SubtaskCounts>, JobError> {
    let rows: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "SELECT job_id, count(*) FILTER (WHERE status = $2), count(*) \
         FROM translation_subtasks WHERE job_id = ANY($1) GROUP BY job_id",
    )
    .bind(job_ids)
    .bind(JobStatus::Completed.as_str())
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(job_id, completed, total)| (job_id, SubtaskCounts { completed, total }))
        .collect())
}
