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
//! caller told UNAVAILABLE.
//!
//! - `insert`: the statements (one job, several jobs), the job as it will
//!   be stored, and the replay of a request_id already used.
//! - `settle`: settling an unknown outcome on another connection, with the
//!   statements of `insert` run again.
//!
//! Here: the three ways in ([`create_job`], [`create_jobs`] for a batch in
//! one transaction, `create_group` for the group commit).

mod insert;
mod settle;

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tracing::{Instrument, instrument};

use insert::{Prepared, insert_one, replay};
use settle::{
    SETTLE_MARGIN, SETTLE_STATEMENT_TIMEOUT, SETTLE_TIMEOUT, batch_outcome_unknown, insert_settled,
    settle_batch,
};

use super::{Job, JobError, NewJob, fields::TraceParent};
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
