//! The `watched_jobs` table: which jobs have watch streams, so that the
//! change triggers notify only for those (see the migration
//! `20261209000001_watched_notifications.sql`).
//!
//! Each process is one `watcher` (a random id). It inserts a row when its
//! first stream of a job opens, deletes it when its last stream closes, and
//! renews the lease of the rows it holds every [`HEARTBEAT`]; rows whose
//! lease ran out (their process crashed or lost PostgreSQL for longer) are
//! deleted by any process ([`expire_once`]).

use std::time::Duration;

use sqlx::PgPool;
use tracing::instrument;
use uuid::Uuid;

/// How long a row stays without being renewed: a crashed process's rows
/// make the triggers notify for their jobs at most this long.
pub const LEASE: Duration = Duration::from_secs(60);

/// How often a process renews its rows and deletes expired ones. Several
/// renewals fit in one lease, so a slow one or two never lose a row.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

fn lease_secs() -> f64 {
    LEASE.as_secs_f64()
}

/// Records that `watcher` watches `job_id`, in one statement that first
/// locks the job's row FOR SHARE: it waits for a transaction that is
/// changing the job (whose trigger may have looked for this row before it
/// existed) to commit, and one that changes the job afterwards finds the
/// row. Only a job inside `owner` (the caller's scope, `None` for every
/// job) is locked and recorded; false when there is no such job.
#[instrument(skip(pool), err(level = "debug"))]
pub(crate) async fn register(
    pool: &PgPool,
    watcher: Uuid,
    job_id: Uuid,
    owner: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let registered = sqlx::query_scalar::<_, Uuid>(
        "WITH job AS ( \
             SELECT id FROM translation_jobs \
             WHERE id = $1 AND ($3::text IS NULL OR user_id = $3) FOR SHARE) \
         INSERT INTO watched_jobs (job_id, watcher, expires_at) \
         SELECT id, $2, now() + make_interval(secs => $4) FROM job \
         ON CONFLICT (job_id, watcher) DO UPDATE SET expires_at = excluded.expires_at \
         RETURNING job_id",
    )
    .bind(job_id)
    .bind(watcher)
    .bind(owner)
    .bind(lease_secs())
    .fetch_optional(pool)
    .await?;
    Ok(registered.is_some())
}

/// [`register`] for several jobs at once, within no scope: the rows of
/// jobs registered before that were found missing. Returns the jobs
/// recorded.
#[instrument(skip_all, fields(jobs = job_ids.len()), err(level = "debug"))]
pub(crate) async fn register_again(
    pool: &PgPool,
    watcher: Uuid,
    job_ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH job AS ( \
             SELECT id FROM translation_jobs WHERE id = ANY($1) ORDER BY id FOR SHARE) \
         INSERT INTO watched_jobs (job_id, watcher, expires_at) \
         SELECT id, $2, now() + make_interval(secs => $3) FROM job \
         ON CONFLICT (job_id, watcher) DO UPDATE SET expires_at = excluded.expires_at \
         RETURNING job_id",
    )
    .bind(job_ids)
    .bind(watcher)
    .bind(lease_secs())
    .fetch_all(pool)
    .await
}

/// Deletes `watcher`'s rows of these jobs: their last streams closed.
#[instrument(skip_all, fields(jobs = job_ids.len()), err(level = "debug"))]
pub(crate) async fn unregister(
    pool: &PgPool,
    watcher: Uuid,
    job_ids: &[Uuid],
) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM watched_jobs WHERE job_id = ANY($1) AND watcher = $2")
            .bind(job_ids)
            .bind(watcher)
            .execute(pool)
            .await?
            .rows_affected(),
    )
}

/// Deletes every row of `watcher` (at shutdown).
#[instrument(skip(pool), err(level = "debug"))]
pub(crate) async fn unregister_all(pool: &PgPool, watcher: Uuid) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM watched_jobs WHERE watcher = $1")
        .bind(watcher)
        .execute(pool)
        .await?
        .rows_affected())
}

/// Extends the lease of `watcher`'s rows of these jobs; returns the jobs
/// whose row was found. A row that is missing was deleted by another
/// process that took it for expired.
#[instrument(skip_all, fields(jobs = job_ids.len()), err(level = "debug"))]
pub(crate) async fn renew(
    pool: &PgPool,
    watcher: Uuid,
    job_ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE watched_jobs SET expires_at = now() + make_interval(secs => $3) \
         WHERE job_id = ANY($1) AND watcher = $2 RETURNING job_id",
    )
    .bind(job_ids)
    .bind(watcher)
    .bind(lease_secs())
    .fetch_all(pool)
    .await
}

/// Deletes the rows whose lease ran out: those of processes that stopped
/// without deleting theirs. Returns how many.
#[instrument(skip_all, err(level = "debug"))]
pub async fn expire_once(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let expired = sqlx::query("DELETE FROM watched_jobs WHERE expires_at < now()")
        .execute(pool)
        .await?
        .rows_affected();
    if expired > 0 {
        tracing::info!(
            expired,
            "deleted watched-job rows of processes that stopped renewing them"
        );
    }
    Ok(expired)
}
