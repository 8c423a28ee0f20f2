//! Listing jobs, newest first, with keyset pagination.

use std::collections::HashMap;

use sqlx::PgPool;
use tracing::instrument;
use uuid::Uuid;

use super::{
    Job, JobError, JobStatus,
    get::{JobRow, SELECT_JOBS, subtasks_of_many},
    scope::{JobView, Scope, SubtaskCounts, subtask_counts},
};

/// Filters and position of one page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub status: Option<JobStatus>,
    pub novel_id: Option<Uuid>,
    /// Only jobs older than this one (the last job of the previous page).
    pub before: Option<Uuid>,
    pub limit: u32,
    /// Whether the jobs come with their subtasks. A page of 500 jobs of
    /// 1,000 subtasks each is about 50 MB with them.
    pub view: JobView,
}

/// One page and whether more follow.
#[derive(Debug, Clone)]
pub struct Page {
    /// With their subtasks in [`JobView::Full`], with none in
    /// [`JobView::Basic`].
    pub jobs: Vec<Job>,
    /// Subtask counts of every job of the page, in both views.
    pub counts: HashMap<Uuid, SubtaskCounts>,
    pub more: bool,
}

/// Jobs newest first, those inside `scope` only. Job ids are UUIDv7,
/// time-ordered, so `id DESC` is creation order and a page continues
/// strictly after the previous page's last id: jobs created meanwhile
/// appear on earlier pages, never shift later ones.
#[instrument(skip(pool), err(level = "debug"))]
pub async fn list_jobs(pool: &PgPool, query: &ListQuery, scope: &Scope) -> Result<Page, JobError> {
    let mut conn = pool.acquire().await?;
    let mut rows = sqlx::query_as::<_, JobRow>(&format!(
        "{SELECT_JOBS} \
         WHERE ($1::text IS NULL OR j.status = $1) \
           AND ($2::uuid IS NULL OR j.novel_id = $2) \
           AND ($3::uuid IS NULL OR j.id < $3) \
           AND ($5::text IS NULL OR j.user_id = $5) \
         ORDER BY j.id DESC LIMIT $4"
    ))
    .bind(query.status.map(JobStatus::as_str))
    .bind(query.novel_id)
    .bind(query.before)
    .bind(i64::from(query.limit) + 1)
    .bind(scope.owner())
    .fetch_all(&mut *conn)
    .await?;
    let more = rows.len() > query.limit as usize;
    rows.truncate(query.limit as usize);

    let ids: Vec<Uuid> = rows.iter().map(JobRow::id).collect();
    let (jobs, counts) = match query.view {
        JobView::Full => {
            let mut subtasks = subtasks_of_many(&mut conn, &ids).await?;
            let jobs = rows
                .into_iter()
                .map(|row| {
                    let own = subtasks.remove(&row.id()).unwrap_or_default();
                    row.into_job(own)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let counts = jobs
                .iter()
                .map(|job| (job.id, SubtaskCounts::of(job)))
                .collect();
            (jobs, counts)
        }
        JobView::Basic => {
            let counts = subtask_counts(&mut conn, &ids).await?;
            let jobs = rows
                .into_iter()
                .map(|row| row.into_job(Vec::new()))
                .collect::<Result<Vec<_>, _>>()?;
            (jobs, counts)
        }
    };
    Ok(Page { jobs, counts, more })
}
