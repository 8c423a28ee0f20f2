//! Listing jobs, newest first, with keyset pagination.

use std::collections::HashMap;

use sqlx::{PgPool, Postgres, QueryBuilder};
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
    let mut rows = page_statement(query, scope)
        .build_query_as::<JobRow>()
        // Planned afresh with each page's values (see `page_statement`).
        .persistent(false)
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

/// The statement of one page, with only the predicates its filters need,
/// run unprepared (sqlx's unnamed statement, parsed and planned with the
/// values of each page): its plan uses the index of its filters however
/// often it runs.
///
/// A prepared statement gets a generic plan after five executions on a
/// connection when PostgreSQL finds it no dearer than the custom ones (it
/// did after large pages: an unknown LIMIT is priced as a tenth of the
/// rows). One text for every combination, with optional predicates
/// (`$1::text IS NULL OR j.status = $1`), then gets a plan that must also
/// hold for NULL, which can use none of the filters' indexes and walks the
/// primary key over every job. A prepared text per combination is not
/// enough either: a generic plan prices each value at its column's average
/// share, and eleven of the sixteen combinations switched to walking the
/// primary key, which read every job newer than the ones a page of rare
/// values wanted (`tests/api/plans.rs`). Planning each page afresh costs
/// about a tenth of a millisecond and one round trip more.
///
/// The page's ids come first, alone (`page`), then their rows. The
/// planner prices a walk of the primary key from the newest job, filtering,
/// at the rows a page wants divided by the filter's share; when the newest
/// jobs do not match (a status common in the table but not among the last
/// million jobs, say FAILED behind a backlog of PENDING ones) that walk
/// reads all of them. For the ids alone, the filter's index answers
/// without visiting the table (an index-only scan), which no walk of the
/// table can undercut: at 10 million jobs the first page of FAILED jobs
/// took 0.44 s before (bench/statements.sh).
fn page_statement<'q>(query: &'q ListQuery, scope: &'q Scope) -> QueryBuilder<'q, Postgres> {
    let mut statement =
        QueryBuilder::new("WITH page AS MATERIALIZED (SELECT j.id FROM translation_jobs AS j");
    let mut joiner = " WHERE ";
    if let Some(status) = query.status {
        statement
            .push(joiner)
            .push("j.status = ")
            .push_bind(status.as_str());
        joiner = " AND ";
    }
    if let Some(novel_id) = query.novel_id {
        statement
            .push(joiner)
            .push("j.novel_id = ")
            .push_bind(novel_id);
        joiner = " AND ";
    }
    if let Some(owner) = scope.owner() {
        statement.push(joiner).push("j.user_id = ").push_bind(owner);
        joiner = " AND ";
    }
    if let Some(before) = query.before {
        statement.push(joiner).push("j.id < ").push_bind(before);
    }
    statement.push(" ORDER BY j.id DESC LIMIT ");
    statement.push_bind(i64::from(query.limit) + 1);
    statement
        .push(") ")
        .push(SELECT_JOBS)
        .push(" WHERE j.id IN (SELECT id FROM page) ORDER BY j.id DESC");
    statement
}

#[cfg(test)]
mod tests {
    use sqlx::Execute;

    use super::*;
    use crate::jobs::fields::UserId;

    fn sql(query: &ListQuery, scope: &Scope) -> String {
        page_statement(query, scope).build().sql().to_owned()
    }

    #[test]
    fn each_combination_of_filters_has_only_its_own_predicates() {
        let all = ListQuery {
            limit: 20,
            ..ListQuery::default()
        };
        assert!(
            sql(&all, &Scope::All).starts_with(
                "WITH page AS MATERIALIZED (SELECT j.id FROM translation_jobs AS j \
                 ORDER BY j.id DESC LIMIT $1) SELECT"
            ),
            "{}",
            sql(&all, &Scope::All)
        );
        let every = ListQuery {
            status: Some(JobStatus::Failed),
            novel_id: Some(Uuid::nil()),
            before: Some(Uuid::max()),
            ..all.clone()
        };
        let owner = Scope::Owner(UserId::parse("user_id", "alice").unwrap());
        assert!(sql(&every, &owner).contains(
            "WHERE j.status = $1 AND j.novel_id = $2 AND j.user_id = $3 AND j.id < $4 \
             ORDER BY j.id DESC LIMIT $5) SELECT"
        ));
        assert!(
            sql(&every, &owner).ends_with("WHERE j.id IN (SELECT id FROM page) ORDER BY j.id DESC")
        );
        assert!(!sql(&every, &owner).contains("IS NULL"));
    }
}
