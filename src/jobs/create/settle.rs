//! Settling a create whose outcome is unknown: the connection broke, or
//! the client stopped waiting, after the statement or its COMMIT may have
//! reached PostgreSQL. On a fresh connection the jobs are looked up by id;
//! those found were committed, the others' statement runs again with the
//! same ids (the primary key lets at most one of the two commit).

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, pool::PoolConnection};
use uuid::Uuid;

use super::{
    BatchItem, Created,
    insert::{Prepared, insert_prepared, replay},
    insert_batch,
};
use crate::{
    db::{bounded, is_outage},
    jobs::JobError,
    telemetry::error_chain,
};

/// Longest a create whose outcome is unknown may spend settling it: a
/// connection, a look-up by id, the statement again for the jobs not found.
/// Short enough that a caller in flight when PostgreSQL went down still
/// gets its UNAVAILABLE well inside a deadline of a few seconds.
pub(super) const SETTLE_TIMEOUT: Duration = Duration::from_millis(1500);
/// What a batch's first try leaves unused of the call timeout besides
/// [`SETTLE_TIMEOUT`]: the connection's close and the answer.
pub(super) const SETTLE_MARGIN: Duration = Duration::from_millis(500);
/// Connections tried while settling, each after the previous one broke or
/// could not be had.
const SETTLE_ATTEMPTS: usize = 6;
/// The pause before the second try at a connection, doubled before each
/// further one: a path that was cut a moment ago often works again soon.
const SETTLE_FIRST_PAUSE: Duration = Duration::from_millis(25);
/// The server-side limit on a statement run again while settling, well
/// inside [`SETTLE_TIMEOUT`]: PostgreSQL cancels it before the caller is
/// told UNAVAILABLE, so a second try can never commit after that answer.
pub(super) const SETTLE_STATEMENT_TIMEOUT: &str = "SET LOCAL statement_timeout = '500ms'";

/// Whether a failed statement may have been committed all the same, or may
/// succeed on another connection: the connection broke (I/O, TLS, a
/// protocol error, SQLSTATE class 08, or the session was ended: 57P01 admin
/// shutdown, as `pg_terminate_backend` or a pooler restart does, 57P02 crash
/// shutdown) or the client stopped waiting (`bounded`'s limit: an I/O
/// timeout) after the statement may have reached PostgreSQL. Everything
/// else is PostgreSQL's own answer: the statement did not commit.
fn outcome_unknown(error: &sqlx::Error) -> bool {
    crate::db::connection_lost(error)
}

/// Whether a statement failed because a job's or subtask's id is taken:
/// the same statement with the same ids committed first.
fn id_taken(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(database)
    if database.code().as_deref() == Some("23505")
        && matches!(
            database.constraint(),
            Some("translation_jobs_pkey" | "translation_subtasks_pkey")
        ))
}

/// Whether a batch failed in a way that leaves its outcome unknown, or that
/// another connection may cure (see [`outcome_unknown`]).
pub(super) fn batch_outcome_unknown(error: &JobError) -> bool {
    match error {
        JobError::Database(error) => outcome_unknown(error),
        JobError::InBatch { source, .. } => batch_outcome_unknown(source),
        _ => false,
    }
}

fn batch_id_taken(error: &JobError) -> bool {
    match error {
        JobError::Database(error) => id_taken(error),
        JobError::InBatch { source, .. } => batch_id_taken(source),
        _ => false,
    }
}

/// Inserts `prepared` on `conn` (within `limit`, when given); the commit
/// time of each job inserted, by id (a job missing had its request_id
/// taken). When the outcome is unknown (see [`outcome_unknown`]) it is
/// settled on a fresh connection, which then replaces `conn`.
pub(super) async fn insert_settled(
    pool: &PgPool,
    conn: &mut PoolConnection<Postgres>,
    prepared: &[&Prepared],
    limit: Option<Duration>,
) -> Result<HashMap<Uuid, DateTime<Utc>>, sqlx::Error> {
    let inserted = match limit {
        Some(limit) => bounded(limit, insert_prepared(conn, prepared)).await,
        None => insert_prepared(conn, prepared).await,
    };
    let error = match inserted {
        Ok(stored) => return Ok(stored),
        Err(error) if !outcome_unknown(&error) => return Err(error),
        Err(error) => error,
    };
    conn.close_on_drop();
    tracing::warn!(error = %error_chain(&error), jobs = prepared.len(), "a create's connection failed; settling it on another connection");
    match bounded(SETTLE_TIMEOUT, settle(pool, prepared)).await {
        Ok((fresh, stored)) => {
            *conn = fresh;
            Ok(stored)
        }
        Err(settling) => {
            tracing::warn!(error = %error_chain(&settling), jobs = prepared.len(), "could not settle a create; answering UNAVAILABLE");
            Err(error)
        }
    }
}

/// Settles creates whose statement may or may not have committed, on a
/// fresh connection: the jobs found by id were committed; the others were
/// not (or not yet), and their statement runs again with the same ids. The
/// ids make the second try safe: should the first still commit, one of the
/// two fails on the primary key, never both stored; when the second fails
/// so, the look-up finds the first's jobs. A connection that breaks too is
/// replaced, up to [`SETTLE_ATTEMPTS`] times. The connection it ends on
/// and, by id, the commit time of every job stored (a job missing had its
/// request_id taken: a replay).
async fn settle(
    pool: &PgPool,
    prepared: &[&Prepared],
) -> Result<(PoolConnection<Postgres>, HashMap<Uuid, DateTime<Utc>>), sqlx::Error> {
    let ids: Vec<Uuid> = prepared.iter().map(|p| p.job.id).collect();
    let mut last = sqlx::Error::PoolTimedOut;
    let mut pause = SETTLE_FIRST_PAUSE;
    for attempt in 0..SETTLE_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        let mut conn = match pool.acquire().await {
            Ok(conn) => conn,
            Err(error) if is_outage(&error) => {
                last = error;
                continue;
            }
            Err(error) => return Err(error),
        };
        match settle_on(&mut conn, prepared, &ids).await {
            Ok(stored) => return Ok((conn, stored)),
            Err(error) if outcome_unknown(&error) || id_taken(&error) => {
                if outcome_unknown(&error) {
                    conn.close_on_drop();
                }
                last = error;
            }
            Err(error) => return Err(error),
        }
    }
    Err(last)
}

async fn settle_on(
    conn: &mut PgConnection,
    prepared: &[&Prepared],
    ids: &[Uuid],
) -> Result<HashMap<Uuid, DateTime<Utc>>, sqlx::Error> {
    let mut stored = find_stored(conn, ids).await?;
    let missing: Vec<&Prepared> = prepared
        .iter()
        .copied()
        .filter(|p| !stored.contains_key(&p.job.id))
        .collect();
    if missing.is_empty() {
        tracing::info!(
            jobs = ids.len(),
            "a create whose reply was lost was found committed"
        );
        return Ok(stored);
    }
    // In a transaction of its own, under a short server-side limit.
    let mut tx = sqlx::Connection::begin(conn).await?;
    sqlx::query(SETTLE_STATEMENT_TIMEOUT)
        .execute(&mut *tx)
        .await?;
    let inserted = insert_prepared(&mut tx, &missing).await?;
    tx.commit().await?;
    tracing::info!(
        found = stored.len(),
        stored_again = inserted.len(),
        "a create not committed was stored on another connection"
    );
    stored.extend(inserted);
    Ok(stored)
}

/// The commit time of each of `ids` stored, by id.
async fn find_stored(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, DateTime<Utc>>, sqlx::Error> {
    let rows: Vec<(Uuid, DateTime<Utc>)> =
        sqlx::query_as("SELECT id, created_at FROM translation_jobs WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Settles a batch whose outcome is unknown, on fresh connections: the
/// jobs found by id were committed (a job of the batch not found then had
/// its request_id taken: a replay); none found, the batch was not
/// committed and runs again with the same ids, so that, should the first
/// try still commit, one of the two fails on the primary key.
pub(super) async fn settle_batch(
    pool: &PgPool,
    items: &[BatchItem],
) -> Result<Vec<Created>, JobError> {
    let ids: Vec<Uuid> = items.iter().map(|item| item.prepared.job.id).collect();
    let mut last = JobError::Database(sqlx::Error::PoolTimedOut);
    let mut pause = SETTLE_FIRST_PAUSE;
    for attempt in 0..SETTLE_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        let mut conn = match pool.acquire().await {
            Ok(conn) => conn,
            Err(error) if is_outage(&error) => {
                last = error.into();
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let stored = match find_stored(&mut conn, &ids).await {
            Ok(stored) => stored,
            Err(error) if outcome_unknown(&error) => {
                conn.close_on_drop();
                last = error.into();
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        if stored.is_empty() {
            match insert_batch(&mut conn, items, true).await {
                Ok(created) => {
                    tracing::info!(
                        jobs = items.len(),
                        "a batch create not committed was stored on another connection"
                    );
                    return Ok(created);
                }
                // The first try committed meanwhile: found next time.
                Err(error) if batch_id_taken(&error) => last = error,
                Err(error) if batch_outcome_unknown(&error) => {
                    conn.close_on_drop();
                    last = error;
                }
                Err(error) => return Err(error),
            }
            continue;
        }
        let mut created = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let one = match stored.get(&item.prepared.job.id) {
                Some(at) => item.prepared.clone().created(*at),
                None => replay(&mut conn, &item.new)
                    .await
                    .map_err(|error| JobError::InBatch {
                        index,
                        source: Box::new(error),
                    })?,
            };
            created.push(one);
        }
        tracing::info!(
            jobs = items.len(),
            "a batch create whose reply was lost was found committed"
        );
        return Ok(created);
    }
    Err(last)
}
