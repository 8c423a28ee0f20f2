//! The create transaction: job, subtasks and outbox row in one statement.
//!
//! Unknown outcomes: when the connection breaks (or the client stops
//! waiting) after a create's statement or COMMIT may have reached
//! PostgreSQL, the jobs may be committed, and an UNAVAILABLE would make a
//! retrying caller create them twice. The job ids are drawn here, before
//! the statement, so a look-up by id on another connection settles it: the
//! jobs found are answered as stored; the others run again with the same
//! ids, which the primary key makes safe (of two statements with the same
//! ids, at most one commits). Only when that cannot be done in time is the
//! caller told UNAVAILABLE. This file is longer than the house's 600 lines
//! because the settling belongs beside the statements it runs again.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, pool::PoolConnection};
use tracing::{Instrument, instrument};
use uuid::Uuid;

use super::{Job, JobError, NewJob, fields::TraceParent, get::find_by_request_id};
use crate::{
    db::{bounded, call_timeout_of, is_outage},
    telemetry::error_chain,
};

/// What [`create_job`] did.
#[derive(Debug, Clone)]
pub struct Created {
    pub job: Job,
    /// True when the request_id matched an earlier identical request: the
    /// job is that earlier one and nothing new was queued.
    pub replayed: bool,
}

/// The job, its subtasks and its outbox row as one statement: one round
/// trip, atomic by itself. The subtasks go in through UNNEST of arrays, never
/// one INSERT each. With a request_id already used by this caller the job
/// insert does nothing, and neither do the two that depend on it.
const INSERT_JOB: &str = r#"
WITH job AS (
    INSERT INTO translation_jobs
        (id, user_id, novel_id, source_lang, target_lang, target_fields,
         enable_code_filter, output_dir, priority, request_id, max_attempts, scheduled_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $16, $17)
    ON CONFLICT (user_id, request_id) WHERE request_id IS NOT NULL DO NOTHING
    RETURNING id, created_at
),
subtasks AS (
    INSERT INTO translation_subtasks (id, job_id, entity_type, entity_id, created_at, updated_at)
    SELECT s.id, job.id, s.entity_type, s.entity_id, job.created_at, job.created_at
    FROM job, UNNEST($11::uuid[], $12::text[], $13::text[]) AS s (id, entity_type, entity_id)
),
queued AS (
    INSERT INTO outbox (job_id, lane, payload)
    SELECT job.id, $14, $15 FROM job WHERE $17::timestamptz IS NULL
),
scheduled AS (
    INSERT INTO outbox_scheduled (job_id, attempt, lane, payload, due_at)
    SELECT job.id, 0, $14, $15, $17 FROM job WHERE $17::timestamptz IS NOT NULL
)
SELECT created_at FROM job
"#;

/// The create statement for several jobs at once (group commit, see
/// `jobs::group_commit`): the same three inserts as [`INSERT_JOB`], every
/// column an array with one element per job, the subtasks flattened with
/// their job's id. One statement, so one commit for all of them. A job whose
/// request_id is taken inserts nothing, and neither do its subtasks and
/// outbox row: it is missing from the result and answered as a replay. The
/// outbox rows are inserted in the jobs' order, so callers who arrived first
/// are published first. `target_fields` travel as array literals (one text
/// per job), as UNNEST cannot take an array of arrays of different lengths.
const INSERT_JOBS: &str = r#"
WITH input AS (
    SELECT *
    FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                $7::bool[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                $17::int[], $18::timestamptz[])
        WITH ORDINALITY
        AS i (id, user_id, novel_id, source_lang, target_lang, target_fields,
              enable_code_filter, output_dir, priority, request_id, lane, payload,
              max_attempts, scheduled_at, ord)
),
job AS (
    INSERT INTO translation_jobs
        (id, user_id, novel_id, source_lang, target_lang, target_fields,
         enable_code_filter, output_dir, priority, request_id, max_attempts, scheduled_at)
    SELECT id, user_id, novel_id, source_lang, target_lang, target_fields::text[],
           enable_code_filter, output_dir, priority, request_id, max_attempts, scheduled_at
    FROM input ORDER BY ord
    ON CONFLICT (user_id, request_id) WHERE request_id IS NOT NULL DO NOTHING
    RETURNING id, created_at
),
subtasks AS (
    INSERT INTO translation_subtasks (id, job_id, entity_type, entity_id, created_at, updated_at)
    SELECT s.id, job.id, s.entity_type, s.entity_id, job.created_at, job.created_at
    FROM UNNEST($13::uuid[], $14::uuid[], $15::text[], $16::text[])
        AS s (job_id, id, entity_type, entity_id)
    JOIN job ON job.id = s.job_id
),
queued AS (
    INSERT INTO outbox (job_id, lane, payload)
    SELECT i.id, i.lane, i.payload FROM input AS i JOIN job ON job.id = i.id
    WHERE i.scheduled_at IS NULL ORDER BY i.ord
),
scheduled AS (
    INSERT INTO outbox_scheduled (job_id, attempt, lane, payload, due_at)
    SELECT i.id, 0, i.lane, i.payload, i.scheduled_at FROM input AS i JOIN job ON job.id = i.id
    WHERE i.scheduled_at IS NOT NULL
)
SELECT id, created_at FROM job
"#;

/// The span of one job's create statement, a child of the current span (the
/// call's), and the job's message pointed at it: with traces exported the
/// message's `traceparent` names this span, so a worker continues the trace
/// under it and the relay's batch links to it; without, the message keeps
/// the caller's `traceparent` as sent. Made on the caller's task, before the
/// job joins a group commit, which runs elsewhere.
pub fn statement_span(new: &mut NewJob) -> tracing::Span {
    let span = tracing::info_span!(
        "INSERT translation_jobs",
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = "INSERT",
        db.collection.name = "translation_jobs",
    );
    if let Some(traceparent) = span
        .in_scope(crate::telemetry::traces::current_traceparent)
        .and_then(|raw| TraceParent::parse(&raw))
    {
        new.traceparent = Some(traceparent);
    }
    span
}

/// Stores a new job with its subtasks and queues its message through the
/// outbox, all in one statement. Never touches Redis. When the connection
/// fails after the statement may have reached PostgreSQL, the outcome is
/// settled on another connection (see [`settle`]) before answering.
#[instrument(skip_all, fields(novel_id = %new.novel_id), err(level = "debug"))]
pub async fn create_job(pool: &PgPool, new: &NewJob) -> Result<Created, JobError> {
    let mut conn = pool.acquire().await?;
    let prepared = Prepared::new(new);
    let stored = insert_settled(pool, &mut conn, &[&prepared], None).await?;
    match stored.get(&prepared.job.id) {
        Some(at) => Ok(prepared.created(*at)),
        None => replay(&mut conn, new).await,
    }
}

/// One job of a batch: the request, the job as it will be inserted (its
/// ids drawn once, kept for a second try) and the span of its statement.
struct BatchItem {
    new: NewJob,
    prepared: Prepared,
    span: tracing::Span,
}

/// Stores several jobs in one transaction: all of them or none. A failure
/// names the index of the job that caused it. When the connection fails
/// after the COMMIT may have reached PostgreSQL (or before it, on a
/// connection that broke), the batch is settled on another connection:
/// found committed, it is answered; found absent, it runs once more with
/// the same ids.
#[instrument(skip_all, fields(count = jobs.len()), err(level = "debug"))]
pub async fn create_jobs(pool: &PgPool, jobs: &[NewJob]) -> Result<Vec<Created>, JobError> {
    let items: Vec<BatchItem> = jobs
        .iter()
        .map(|new| {
            let mut new = new.clone();
            let span = statement_span(&mut new);
            let prepared = Prepared::new(&new);
            BatchItem {
                new,
                prepared,
                span,
            }
        })
        .collect();
    let mut conn = pool.acquire().await?;
    // The API bounds the whole call by the call timeout; the first try ends
    // early enough to leave the settling its time.
    let first = insert_batch(&mut conn, &items, false);
    let tried = match call_timeout_of(pool) {
        Some(call) => bounded(call.saturating_sub(SETTLE_TIMEOUT + SETTLE_MARGIN), first).await,
        None => first.await,
    };
    let error = match tried {
        Ok(created) => return Ok(created),
        Err(error) if !batch_outcome_unknown(&error) => return Err(error),
        Err(error) => error,
    };
    conn.close_on_drop();
    drop(conn);
    tracing::warn!(error = %error_chain(&error), jobs = items.len(), "a batch create's connection failed; settling it on another connection");
    match bounded(SETTLE_TIMEOUT, settle_batch(pool, &items)).await {
        Ok(created) => Ok(created),
        Err(settling) => {
            tracing::warn!(error = %error_chain(&settling), jobs = items.len(), "could not settle a batch create; answering UNAVAILABLE");
            Err(error)
        }
    }
}

/// The batch's transaction on `conn`; `again` when settling (see
/// [`SETTLE_STATEMENT_TIMEOUT`]).
async fn insert_batch(
    conn: &mut PgConnection,
    items: &[BatchItem],
    again: bool,
) -> Result<Vec<Created>, JobError> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    if again {
        sqlx::query(SETTLE_STATEMENT_TIMEOUT)
            .execute(&mut *tx)
            .await?;
    }
    let mut created = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let in_batch = |error: JobError| JobError::InBatch {
            index,
            source: Box::new(error),
        };
        let inserted = insert_one(&mut tx, &item.prepared)
            .instrument(item.span.clone())
            .await
            .map_err(|error| in_batch(error.into()))?;
        let one = match inserted {
            Some(at) => item.prepared.clone().created(at),
            None => replay(&mut tx, &item.new).await.map_err(in_batch)?,
        };
        created.push(one);
    }
    tx.commit().await?;
    Ok(created)
}

/// Whether a batch failed in a way that leaves its outcome unknown, or that
/// another connection may cure (see [`outcome_unknown`]).
fn batch_outcome_unknown(error: &JobError) -> bool {
    match error {
        JobError::Database(error) => outcome_unknown(error),
        JobError::InBatch { source, .. } => batch_outcome_unknown(source),
        _ => false,
    }
}

/// Settles a batch whose outcome is unknown, on fresh connections: the
/// jobs found by id were committed (a job of the batch not found then had
/// its request_id taken: a replay); none found, the batch was not
/// committed and runs again with the same ids, so that, should the first
/// try still commit, one of the two fails on the primary key.
async fn settle_batch(pool: &PgPool, items: &[BatchItem]) -> Result<Vec<Created>, JobError> {
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

fn batch_id_taken(error: &JobError) -> bool {
    match error {
        JobError::Database(error) => id_taken(error),
        JobError::InBatch { source, .. } => batch_id_taken(source),
        _ => false,
    }
}

/// Stores several jobs, each with its own outcome, in as few statements as
/// possible: one statement (one commit) for all of them; when that fails
/// for a reason other than an outage, each job again on its own, so a job
/// the database refuses fails alone and its neighbours are stored. Every
/// database call is bounded by `limit`, the wait for a connection by `wait`.
/// A statement whose outcome is unknown is settled (see [`settle`]) before
/// anyone is answered. Outcomes in the order of `jobs`.
pub(crate) async fn create_group(
    pool: &PgPool,
    jobs: &[&NewJob],
    wait: Duration,
    limit: Duration,
) -> Vec<Result<Created, JobError>> {
    let mut conn = match tokio::time::timeout(wait.min(limit), pool.acquire()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => return fail_all(jobs.len(), error),
        Err(_) => return fail_all(jobs.len(), sqlx::Error::PoolTimedOut),
    };
    let prepared: Vec<Prepared> = jobs.iter().map(|new| Prepared::new(new)).collect();
    let all: Vec<&Prepared> = prepared.iter().collect();
    match insert_settled(pool, &mut conn, &all, Some(limit)).await {
        Ok(stored) => {
            let mut outcomes = Vec::with_capacity(jobs.len());
            for (new, prepared) in jobs.iter().zip(prepared) {
                let outcome = match stored.get(&prepared.job.id) {
                    Some(at) => Ok(prepared.created(*at)),
                    None => bounded(limit, replay(&mut conn, new)).await,
                };
                outcomes.push(outcome);
            }
            outcomes
        }
        // An outage would fail each job alone just the same: retrying them
        // one by one would only take longer.
        Err(error) if is_outage(&error) => {
            tracing::warn!(error = %error_chain(&error), jobs = jobs.len(), "group commit failed");
            fail_all(jobs.len(), error)
        }
        Err(error) if jobs.len() == 1 => vec![Err(error.into())],
        Err(error) => {
            // The data of one job, a deadlock between two groups over
            // request_ids, ...: each job again on its own, with the ids it
            // has (the group's statement was refused, so none is stored).
            tracing::info!(error = %error_chain(&error), jobs = jobs.len(), "group commit refused; storing its jobs one by one");
            let mut outcomes: Vec<Result<Created, JobError>> = Vec::with_capacity(jobs.len());
            for (new, prepared) in jobs.iter().zip(prepared) {
                let outcome = match outcomes.last() {
                    // PostgreSQL went away meanwhile: the rest would wait for
                    // it one after the other.
                    Some(Err(JobError::Database(error))) if is_outage(error) => {
                        Err(JobError::Database(same_kind(error)))
                    }
                    _ => match insert_settled(pool, &mut conn, &[&prepared], Some(limit)).await {
                        Ok(stored) => match stored.get(&prepared.job.id) {
                            Some(at) => Ok(prepared.created(*at)),
                            None => bounded(limit, replay(&mut conn, new)).await,
                        },
                        Err(error) => Err(error.into()),
                    },
                };
                outcomes.push(outcome);
            }
            outcomes
        }
    }
}

/// Longest a create whose outcome is unknown may spend settling it: a
/// connection, a look-up by id, the statement again for the jobs not found.
/// Short enough that a caller in flight when PostgreSQL went down still
/// gets its UNAVAILABLE well inside a deadline of a few seconds.
const SETTLE_TIMEOUT: Duration = Duration::from_millis(1500);
/// What a batch's first try leaves unused of the call timeout besides
/// [`SETTLE_TIMEOUT`]: the connection's close and the answer.
const SETTLE_MARGIN: Duration = Duration::from_millis(500);
/// Connections tried while settling, each after the previous one broke or
/// could not be had.
const SETTLE_ATTEMPTS: usize = 6;
/// The pause before the second try at a connection, doubled before each
/// further one: a path that was cut a moment ago often works again soon.
const SETTLE_FIRST_PAUSE: Duration = Duration::from_millis(25);
/// The server-side limit on a statement run again while settling, well
/// inside [`SETTLE_TIMEOUT`]: PostgreSQL cancels it before the caller is
/// told UNAVAILABLE, so a second try can never commit after that answer.
const SETTLE_STATEMENT_TIMEOUT: &str = "SET LOCAL statement_timeout = '500ms'";

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

/// Inserts `prepared` on `conn` (within `limit`, when given); the commit
/// time of each job inserted, by id (a job missing had its request_id
/// taken). When the outcome is unknown (see [`outcome_unknown`]) it is
/// settled on a fresh connection, which then replaces `conn`.
async fn insert_settled(
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

/// [`INSERT_JOB`] for one job, [`INSERT_JOBS`] for more: the commit time of
/// each job inserted, by id.
async fn insert_prepared(
    conn: &mut PgConnection,
    prepared: &[&Prepared],
) -> Result<HashMap<Uuid, DateTime<Utc>>, sqlx::Error> {
    if let [one] = prepared {
        let inserted = insert_one(conn, one).await?;
        return Ok(inserted.map(|at| (one.job.id, at)).into_iter().collect());
    }
    insert_jobs(conn, prepared).await
}

/// The outcome of every job of a group that failed as a whole: the first
/// gets the error itself, the others one of the same kind (sqlx's errors
/// cannot be cloned), so each caller is told UNAVAILABLE alike.
fn fail_all(count: usize, error: sqlx::Error) -> Vec<Result<Created, JobError>> {
    let mut outcomes: Vec<Result<Created, JobError>> = (1..count)
        .map(|_| Err(JobError::Database(same_kind(&error))))
        .collect();
    outcomes.insert(0, Err(JobError::Database(error)));
    outcomes
}

fn same_kind(error: &sqlx::Error) -> sqlx::Error {
    match error {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        sqlx::Error::WorkerCrashed => sqlx::Error::WorkerCrashed,
        sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        other => sqlx::Error::Io(std::io::Error::other(format!(
            "the group commit holding this job failed: {}",
            error_chain(other)
        ))),
    }
}

/// A job ready to insert: its ids drawn, its message built.
#[derive(Clone)]
struct Prepared {
    job: Job,
    payload: String,
}

impl Prepared {
    fn new(new: &NewJob) -> Self {
        let id = Uuid::now_v7();
        let subtask_ids: Vec<Uuid> = new.subtasks.iter().map(|_| Uuid::now_v7()).collect();
        // Built before the insert so the outbox row carries the exact
        // message; the timestamps are replaced by the database's.
        let job = job_from_insert(id, new, subtask_ids, Utc::now());
        let mut message = job.message();
        message.traceparent = new.traceparent.as_ref().map(|t| t.as_str().to_owned());
        Self {
            payload: message.to_json(),
            job,
        }
    }

    /// The job as committed at `created_at`.
    fn created(self, created_at: DateTime<Utc>) -> Created {
        let mut job = self.job;
        // Debug, not info: at thousands of creates a second, a line each
        // would cost more than the create.
        tracing::debug!(job_id = %job.id, subtasks = job.subtasks.len(), "job created");
        job.created_at = created_at;
        job.updated_at = created_at;
        for subtask in &mut job.subtasks {
            subtask.updated_at = created_at;
        }
        Created {
            job,
            replayed: false,
        }
    }
}

/// [`INSERT_JOBS`]: the commit time of each job inserted, by id.
async fn insert_jobs(
    conn: &mut PgConnection,
    jobs: &[&Prepared],
) -> Result<HashMap<Uuid, DateTime<Utc>>, sqlx::Error> {
    let count = jobs.len();
    let mut ids = Vec::with_capacity(count);
    let mut user_ids = Vec::with_capacity(count);
    let mut novel_ids = Vec::with_capacity(count);
    let mut source_langs = Vec::with_capacity(count);
    let mut target_langs = Vec::with_capacity(count);
    let mut target_fields = Vec::with_capacity(count);
    let mut code_filters = Vec::with_capacity(count);
    let mut output_dirs = Vec::with_capacity(count);
    let mut priorities = Vec::with_capacity(count);
    let mut request_ids = Vec::with_capacity(count);
    let mut lanes = Vec::with_capacity(count);
    let mut payloads = Vec::with_capacity(count);
    let mut max_attempts = Vec::with_capacity(count);
    let mut scheduled_at = Vec::with_capacity(count);
    let subtask_count = jobs.iter().map(|p| p.job.subtasks.len()).sum();
    let mut subtask_jobs = Vec::with_capacity(subtask_count);
    let mut subtask_ids = Vec::with_capacity(subtask_count);
    let mut entity_types = Vec::with_capacity(subtask_count);
    let mut entity_ids = Vec::with_capacity(subtask_count);
    for Prepared { job, payload } in jobs.iter().copied() {
        ids.push(job.id);
        user_ids.push(job.user_id.as_str());
        novel_ids.push(job.novel_id);
        source_langs.push(job.source_lang.as_str());
        target_langs.push(job.target_lang.as_str());
        target_fields.push(array_literal(&job.target_fields));
        code_filters.push(job.enable_code_filter);
        output_dirs.push(job.output_dir.as_str());
        priorities.push(job.priority.as_str());
        request_ids.push(job.request_id.as_deref());
        lanes.push(job.priority.lane().as_str());
        payloads.push(payload.as_str());
        max_attempts.push(job.max_attempts);
        scheduled_at.push(job.scheduled_at);
        for subtask in &job.subtasks {
            subtask_jobs.push(job.id);
            subtask_ids.push(subtask.id);
            entity_types.push(subtask.entity_type.as_str());
            entity_ids.push(subtask.entity_id.as_str());
        }
    }
    let rows: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(INSERT_JOBS)
        .bind(&ids)
        .bind(&user_ids)
        .bind(&novel_ids)
        .bind(&source_langs)
        .bind(&target_langs)
        .bind(&target_fields)
        .bind(&code_filters)
        .bind(&output_dirs)
        .bind(&priorities)
        .bind(&request_ids)
        .bind(&lanes)
        .bind(&payloads)
        .bind(&subtask_jobs)
        .bind(&subtask_ids)
        .bind(&entity_types)
        .bind(&entity_ids)
        .bind(&max_attempts)
        .bind(&scheduled_at)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().collect())
}

/// A PostgreSQL array literal (`{"a","b"}`) of `items`: every element
/// quoted, `"` and `\` escaped, so any text reads back as itself.
fn array_literal(items: &[String]) -> String {
    let mut literal = String::with_capacity(2 + items.iter().map(|i| i.len() + 3).sum::<usize>());
    literal.push('{');
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            literal.push(',');
        }
        literal.push('"');
        for c in item.chars() {
            if c == '"' || c == '\\' {
                literal.push('\\');
            }
            literal.push(c);
        }
        literal.push('"');
    }
    literal.push('}');
    literal
}

/// [`INSERT_JOB`] on one connection (or inside a transaction): the commit
/// time, or None when the request_id was taken (see [`replay`]).
async fn insert_one(
    conn: &mut PgConnection,
    prepared: &Prepared,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let job = &prepared.job;
    let subtask_ids: Vec<Uuid> = job.subtasks.iter().map(|s| s.id).collect();
    let entity_types: Vec<&str> = job
        .subtasks
        .iter()
        .map(|s| s.entity_type.as_str())
        .collect();
    let entity_ids: Vec<&str> = job.subtasks.iter().map(|s| s.entity_id.as_str()).collect();
    sqlx::query_scalar(INSERT_JOB)
        .bind(job.id)
        .bind(job.user_id.as_str())
        .bind(job.novel_id)
        .bind(job.source_lang.as_str())
        .bind(job.target_lang.as_str())
        .bind(job.target_fields.as_slice())
        .bind(job.enable_code_filter)
        .bind(job.output_dir.as_str())
        .bind(job.priority.as_str())
        .bind(job.request_id.as_deref())
        .bind(&subtask_ids)
        .bind(&entity_types)
        .bind(&entity_ids)
        .bind(job.priority.lane().as_str())
        .bind(prepared.payload.as_str())
        .bind(job.max_attempts)
        .bind(job.scheduled_at)
        .fetch_optional(conn)
        .await
}

/// The request_id was taken: return the earlier job when the request is the
/// same, refuse otherwise.
async fn replay(conn: &mut PgConnection, new: &NewJob) -> Result<Created, JobError> {
    let request_id = new
        .request_id
        .as_ref()
        .map(|r| r.as_str().to_owned())
        .unwrap_or_default();
    // The conflicting row was committed before ON CONFLICT gave up, so it is
    // visible to this new statement.
    let existing = find_by_request_id(conn, new.user_id.as_str(), &request_id)
        .await?
        .ok_or_else(|| JobError::RequestIdVanished {
            request_id: request_id.clone(),
        })?;
    if same_request(&existing, new) {
        tracing::info!(job_id = %existing.id, request_id, "request_id replayed");
        Ok(Created {
            job: existing,
            replayed: true,
        })
    } else {
        Err(JobError::RequestIdReused {
            request_id,
            job_id: existing.id,
        })
    }
}

/// Whether a stored job was created from a request equal to `new`. The
/// schedule is left out: a replay after the scheduled time (when the same
/// request would no longer be scheduled) still finds its job.
fn same_request(job: &Job, new: &NewJob) -> bool {
    let mut stored: Vec<(&str, &str)> = job
        .subtasks
        .iter()
        .map(|s| (s.entity_type.as_str(), s.entity_id.as_str()))
        .collect();
    let mut asked: Vec<(&str, &str)> = new
        .subtasks
        .iter()
        .map(|s| (s.entity_type.as_str(), s.entity_id.as_str()))
        .collect();
    stored.sort_unstable();
    asked.sort_unstable();
    job.novel_id == new.novel_id
        && job.target_lang == new.target_lang.as_str()
        && job.source_lang == new.source_lang.as_ref().map_or("", |l| l.as_str())
        && job.target_fields == new.target_fields.as_slice()
        && job.enable_code_filter == new.enable_code_filter
        && job.output_dir == new.output_dir.as_str()
        && job.priority == new.priority
        && job.max_attempts == new.max_attempts
        && stored == asked
}

/// The job as stored, built from what was inserted rather than read back.
fn job_from_insert(
    id: Uuid,
    new: &NewJob,
    subtask_ids: Vec<Uuid>,
    created_at: DateTime<Utc>,
) -> Job {
    use super::{JobStatus, StoredStatus, Subtask};
    Job {
        id,
        user_id: new.user_id.as_str().to_owned(),
        novel_id: new.novel_id,
        source_lang: new
            .source_lang
            .as_ref()
            .map(|l| l.as_str().to_owned())
            .unwrap_or_default(),
        target_lang: new.target_lang.as_str().to_owned(),
        target_fields: new.target_fields.as_slice().to_vec(),
        enable_code_filter: new.enable_code_filter,
        output_dir: new.output_dir.as_str().to_owned(),
        priority: new.priority,
        status: JobStatus::Pending,
        attempts: 0,
        error: None,
        request_id: new.request_id.as_ref().map(|r| r.as_str().to_owned()),
        created_at,
        updated_at: created_at,
        published_at: None,
        scheduled_at: new.schedule_time,
        max_attempts: new.max_attempts,
        failures: 0,
        retryable: true,
        subtasks: subtask_ids
            .into_iter()
            .zip(&new.subtasks)
            .map(|(id, spec)| Subtask {
                id,
                entity_type: spec.entity_type.clone(),
                entity_id: spec.entity_id.clone(),
                status: StoredStatus(JobStatus::Pending),
                attempts: 0,
                error: None,
                updated_at: created_at,
            })
            .collect(),
    }
}
