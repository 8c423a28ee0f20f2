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

/// Most subtasks one [`JobView::Full`] page carries (about 1 MB): a page
/// stops before the job that would pass it (and says more follow), so a
/// page's size is bounded in bytes, not only in jobs. A job with more
/// subtasks than this comes alone on its page.
pub const MAX_SUBTASKS_PER_PAGE: i64 = 10_000;

/// Jobs newest first, those inside `scope` only. Job ids are UUIDv7,
/// time-ordered, so `id DESC` is creation order and a page continues
/// strictly after the previous page's last id: jobs created meanwhile
/// appear on earlier pages, never shift later ones.
pub async fn list_jobs(pool: &PgPool, query: &ListQuery, scope: &Scope) -> Result<Page, JobError> {
    list_jobs_within(pool, query, scope, MAX_SUBTASKS_PER_PAGE).await
}

/// [`list_jobs`] with a budget of subtasks per full page of its own.
#[instrument(skip(pool), err(level = "debug"))]
pub async fn list_jobs_within(
    pool: &PgPool,
    query: &ListQuery,
    scope: &Scope,
    max_subtasks: i64,
) -> Result<Page, JobError> {
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
    let mut more = rows.len() > query.limit as usize;
    rows.truncate(query.limit as usize);

    let mut ids: Vec<Uuid> = rows.iter().map(JobRow::id).collect();
    let (jobs, counts) = match query.view {
        JobView::Full => {
            // Counted first: the page stops where its subtasks would pass
            // the budget, before any of them is read.
            let counts = subtask_counts(&mut conn, &ids).await?;
            let mut carried = 0i64;
            let fit = ids
                .iter()
                .take_while(|id| {
                    let own = counts.get(id).map_or(0, |c| c.total);
                    let first = carried == 0;
                    carried = carried.saturating_add(own);
                    first || carried <= max_subtasks
                })
                .count()
                .max(1)
                .min(ids.len());
            if fit < ids.len() {
                more = true;
                rows.truncate(fit);
                ids.truncate(fit);
            }
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
