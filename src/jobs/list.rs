//! Listing jobs, newest first, with keyset pagination.

use sqlx::PgPool;
use tracing::instrument;
use uuid::Uuid;

use super::{
    Job, JobError, JobStatus,
    get::{JobRow, SELECT_JOBS, subtasks_of_many},
};

/// Filters and position of one page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub status: Option<JobStatus>,
    pub novel_id: Option<Uuid>,
    /// Only jobs older than this one (the last job of the previous page).
    pub before: Option<Uuid>,
    pub limit: u32,
}

/// One page and whether more follow.
#[derive(Debug, Clone)]
pub struct Page {
    pub jobs: Vec<Job>,
    pub more: bool,
}

/// Jobs newest first. Job ids are UUIDv7, time-ordered, so `id DESC` is
/// creation order and a page continues strictly after the previous page's
/// last id: jobs created meanwhile appear on earlier pages, never shift
/// later ones.
#[instrument(skip(pool), err(level = "debug"))]
pub async fn list_jobs(pool: &PgPool, query: &ListQuery) -> Result<Page, JobError> {
    let mut conn = pool.acquire().await?;
    let mut rows = sqlx::query_as::<_, JobRow>(&format!(
        "{SELECT_JOBS} \
         WHERE ($1::text IS NULL OR j.status = $1) \
           AND ($2::uuid IS NULL OR j.novel_id = $2) \
           AND ($3::uuid IS NULL OR j.id < $3) \
         ORDER BY j.id DESC LIMIT $4"
    ))
    .bind(query.status.map(JobStatus::as_str))
    .bind(query.novel_id)
    .bind(query.before)
    .bind(i64::from(query.limit) + 1)
    .fetch_all(&mut *conn)
    .await?;
    let more = rows.len() > query.limit as usize;
    rows.truncate(query.limit as usize);

    let ids: Vec<Uuid> = rows.iter().map(JobRow::id).collect();
    let mut subtasks = subtasks_of_many(&mut conn, &ids).await?;
    let jobs = rows
        .into_iter()
        .map(|row| {
            let own = subtasks.remove(&row.id()).unwrap_or_default();
            row.into_job(own)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page { jobs, more })
}
