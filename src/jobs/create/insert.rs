//! The create statements: one job ([`INSERT_JOB`]) or several at once
//! ([`INSERT_JOBS`]), each storing the jobs, their subtasks and their
//! outbox rows together; the job as it will be stored, its ids drawn
//! before the statement; and the replay of a request_id already used.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::Created;
use crate::jobs::{
    Job, JobError, JobStatus, NewJob, StoredStatus, Subtask, get::find_by_request_id,
};

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

/// A job ready to insert: its ids drawn, its message built.
#[derive(Clone)]
pub(super) struct Prepared {
    pub(super) job: Job,
    pub(super) payload: String,
}

impl Prepared {
    pub(super) fn new(new: &NewJob) -> Self {
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
    pub(super) fn created(self, created_at: DateTime<Utc>) -> Created {
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

/// [`INSERT_JOB`] for one job, [`INSERT_JOBS`] for more: the commit time of
/// each job inserted, by id.
pub(super) async fn insert_prepared(
    conn: &mut PgConnection,
    prepared: &[&Prepared],
) -> Result<HashMap<Uuid, DateTime<Utc>>, sqlx::Error> {
    if let [one] = prepared {
        let inserted = insert_one(conn, one).await?;
        return Ok(inserted.map(|at| (one.job.id, at)).into_iter().collect());
    }
    insert_jobs(conn, prepared).await
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
pub(super) async fn insert_one(
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
pub(super) async fn replay(conn: &mut PgConnection, new: &NewJob) -> Result<Created, JobError> {
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
