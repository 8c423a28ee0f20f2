//! The create transaction: job, subtasks and outbox row in one statement.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use tracing::instrument;
use uuid::Uuid;

use super::{Job, JobError, NewJob, get::find_by_request_id};

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
         enable_code_filter, output_dir, priority, request_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
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
    SELECT job.id, $14, $15 FROM job
)
SELECT created_at FROM job
"#;

/// Stores a new job with its subtasks and queues its message through the
/// outbox, all in one statement. Never touches Redis.
#[instrument(skip_all, fields(novel_id = %new.novel_id), err(level = "debug"))]
pub async fn create_job(pool: &PgPool, new: &NewJob) -> Result<Created, JobError> {
    let mut conn = pool.acquire().await?;
    insert_job(&mut conn, new).await
}

/// Stores several jobs in one transaction: all of them or none. A failure
/// names the index of the job that caused it.
#[instrument(skip_all, fields(count = jobs.len()), err(level = "debug"))]
pub async fn create_jobs(pool: &PgPool, jobs: &[NewJob]) -> Result<Vec<Created>, JobError> {
    let mut tx = pool.begin().await?;
    let mut created = Vec::with_capacity(jobs.len());
    for (index, new) in jobs.iter().enumerate() {
        let one = insert_job(&mut tx, new)
            .await
            .map_err(|error| JobError::InBatch {
                index,
                source: Box::new(error),
            })?;
        created.push(one);
    }
    tx.commit().await?;
    Ok(created)
}

/// The create statement on one connection (or inside a transaction), in a
/// span of its own: the message's `traceparent` names this span, so a worker
/// continues the trace under it and the relay's batch links to it.
#[instrument(
    skip_all,
    name = "INSERT translation_jobs",
    fields(
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = "INSERT",
        db.collection.name = "translation_jobs",
    )
)]
async fn insert_job(conn: &mut PgConnection, new: &NewJob) -> Result<Created, JobError> {
    let id = Uuid::now_v7();
    let subtask_ids: Vec<Uuid> = new.subtasks.iter().map(|_| Uuid::now_v7()).collect();
    let entity_types: Vec<&str> = new
        .subtasks
        .iter()
        .map(|s| s.entity_type.as_str())
        .collect();
    let entity_ids: Vec<&str> = new.subtasks.iter().map(|s| s.entity_id.as_str()).collect();
    // Built before the insert so the outbox row carries the exact message;
    // the timestamps are replaced by the database's below.
    let mut job = job_from_insert(id, new, subtask_ids.clone(), Utc::now());
    let mut message = job.message();
    // With traces exported, this span; otherwise the caller's context as sent.
    message.traceparent = crate::telemetry::traces::current_traceparent()
        .or_else(|| new.traceparent.as_ref().map(|t| t.as_str().to_owned()));

    let created_at: Option<DateTime<Utc>> = sqlx::query_scalar(INSERT_JOB)
        .bind(id)
        .bind(new.user_id.as_str())
        .bind(new.novel_id)
        .bind(new.source_lang.as_ref().map_or("", |l| l.as_str()))
        .bind(new.target_lang.as_str())
        .bind(new.target_fields.as_slice())
        .bind(new.enable_code_filter)
        .bind(new.output_dir.as_str())
        .bind(new.priority.as_str())
        .bind(new.request_id.as_ref().map(|r| r.as_str()))
        .bind(&subtask_ids)
        .bind(&entity_types)
        .bind(&entity_ids)
        .bind(new.priority.lane().as_str())
        .bind(message.to_json())
        .fetch_optional(&mut *conn)
        .await?;

    match created_at {
        Some(created_at) => {
            // Debug, not info: at thousands of creates a second, a line each
            // would cost more than the create.
            tracing::debug!(job_id = %id, subtasks = new.subtasks.len(), "job created");
            job.created_at = created_at;
            job.updated_at = created_at;
            for subtask in &mut job.subtasks {
                subtask.updated_at = created_at;
            }
            Ok(Created {
                job,
                replayed: false,
            })
        }
        None => replay(conn, new).await,
    }
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
        .ok_or_else(|| {
            JobError::Database(sqlx::Error::Protocol(
                "request_id conflicted but no job holds it".into(),
            ))
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

/// Whether a stored job was created from a request equal to `new`.
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
