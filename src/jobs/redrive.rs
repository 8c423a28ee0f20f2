//! Redriving dead letters: jobs the reaper gave up on go back to PENDING
//! under a new attempt, exactly once, and their messages leave the dead
//! lane.
//!
//! Three steps, each safe to die after:
//! 1. **take**: move up to `limit` messages from `{q}:dead` into the
//!    processing list `{q}:dead:redriving` (atomic in Redis; entries an
//!    earlier redrive left there come first);
//! 2. **commit**: in one PostgreSQL transaction, hand out again every job
//!    that is still FAILED at its message's attempt (a new attempt, a fresh
//!    budget of rescues, a new outbox row);
//! 3. **finish**: remove the handled messages from the processing list.
//!
//! Dying after 1 leaves the messages in the processing list: the next
//! redrive, or the service's start ([`finish_interrupted_redrive`]),
//! commits them. Dying after 2 leaves them too, but their jobs have moved
//! to a new attempt, so step 2 finds nothing to do for them and step 3
//! removes them: no dead letter is lost and none is redriven twice. Two
//! redrives at once may both see a message; the row lock and the attempt
//! check let only one of them hand the job out.

use std::{collections::HashMap, time::Duration};

use sqlx::PgPool;
use tracing::instrument;
use uuid::Uuid;

use super::{
    Job, JobError,
    get::{JobRow, SELECT_JOBS, subtasks_of_many},
    requeue::{Reason, forget_messages, hand_out_again, lock_subtasks},
};
use crate::{
    db::bounded,
    outbox::{Pending, enqueue},
    queue::{Lane, QueueError, RedisQueue},
};

/// Dead letters per redrive when the caller names no limit.
pub const DEFAULT_REDRIVE_LIMIT: usize = 100;
/// Larger limits are reduced to this: one transaction and one script call
/// per redrive stay small.
pub const MAX_REDRIVE_LIMIT: usize = 1000;

/// Why a redrive failed. Whatever it had taken stays in the processing list
/// and is finished by the next redrive.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error("cannot move dead letters in Redis")]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Job(#[from] JobError),
}

/// What one redrive did.
#[derive(Debug, Clone, Default)]
pub struct Redriven {
    /// Jobs queued again, as they are now (PENDING, a new attempt), with
    /// their subtasks.
    pub jobs: Vec<Job>,
    /// Messages whose job had moved on (retried, already redriven, gone):
    /// removed from the dead lane.
    pub stale: usize,
    /// Messages that are not a job message: put back in the dead lane.
    pub unreadable: usize,
    /// The dead lane's length afterwards.
    pub remaining: u64,
}

/// The limit a caller asked for: 0 means the default, larger than the
/// maximum means the maximum.
pub fn redrive_limit(requested: usize) -> usize {
    match requested {
        0 => DEFAULT_REDRIVE_LIMIT,
        n => n.min(MAX_REDRIVE_LIMIT),
    }
}

/// Redrives up to `limit` dead letters, oldest first (see the module doc).
/// PostgreSQL calls are bounded by `call_timeout`.
#[instrument(skip(pool, queue), err)]
pub async fn redrive_dead_letters(
    pool: &PgPool,
    queue: &RedisQueue,
    limit: usize,
    call_timeout: Duration,
) -> Result<Redriven, RedriveError> {
    let taken = queue.take_dead_letters(redrive_limit(limit), true).await?;
    redrive_taken(pool, queue, taken, call_timeout).await
}

/// Finishes what redrives that died left in the processing list, without
/// taking new dead letters. The service runs it at start.
pub async fn finish_interrupted_redrive(
    pool: &PgPool,
    queue: &RedisQueue,
    call_timeout: Duration,
) -> Result<Redriven, RedriveError> {
    let mut total = Redriven::default();
    loop {
        let taken = queue.take_dead_letters(MAX_REDRIVE_LIMIT, false).await?;
        if taken.is_empty() {
            return Ok(total);
        }
        let done = redrive_taken(pool, queue, taken, call_timeout).await?;
        total.jobs.extend(done.jobs);
        total.stale += done.stale;
        total.unreadable += done.unreadable;
        total.remaining = done.remaining;
    }
}

/// One dead letter as read from Redis.
struct DeadLetter {
    raw: String,
    job_id: Uuid,
    /// `None` for a message of a version that did not write `attempt`.
    attempt: Option<i32>,
}

fn parse_dead_letter(raw: String) -> Result<DeadLetter, String> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&raw) else {
        return Err(raw);
    };
    let job_id = value
        .get("job_id")
        .and_then(serde_json::Value::as_str)
        .and_then(|id| Uuid::try_parse(id).ok());
    let attempt = value
        .get("attempt")
        .and_then(serde_json::Value::as_i64)
        .and_then(|attempt| i32::try_from(attempt).ok());
    match job_id {
        Some(job_id) => Ok(DeadLetter {
            raw,
            job_id,
            attempt,
        }),
        None => Err(raw),
    }
}

async fn redrive_taken(
    pool: &PgPool,
    queue: &RedisQueue,
    taken: Vec<String>,
    call_timeout: Duration,
) -> Result<Redriven, RedriveError> {
    let mut letters = Vec::with_capacity(taken.len());
    let mut unreadable = Vec::new();
    for raw in taken {
        match parse_dead_letter(raw) {
            Ok(letter) => letters.push(letter),
            Err(raw) => {
                tracing::warn!(
                    message = %raw.chars().take(200).collect::<String>(),
                    "a dead letter is not a job message; left in the dead lane"
                );
                unreadable.push(raw);
            }
        }
    }
    let jobs = if letters.is_empty() {
        Vec::new()
    } else {
        bounded(call_timeout, hand_out_dead(pool, &letters)).await?
    };
    let handled: Vec<String> = letters.iter().map(|letter| letter.raw.clone()).collect();
    let remaining = queue.finish_dead_letters(&handled, &unreadable).await?;
    for job in &jobs {
        tracing::info!(job_id = %job.id, attempt = job.attempts, "dead letter redriven; job queued again");
    }
    Ok(Redriven {
        stale: letters.len() - jobs.len(),
        unreadable: unreadable.len(),
        jobs,
        remaining,
    })
}

/// The commit: jobs still FAILED at their message's attempt get their
/// unfinished subtasks PENDING again and are handed out under a new attempt,
/// in one transaction. Returns them with their subtasks.
async fn hand_out_dead(pool: &PgPool, letters: &[DeadLetter]) -> Result<Vec<Job>, JobError> {
    let mut ids: Vec<Uuid> = letters.iter().map(|letter| letter.job_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut tx = pool.begin().await?;
    // Subtasks before jobs, the order every writer keeps.
    lock_subtasks(&mut tx, &ids).await?;
    let found: Vec<(Uuid, String, i32)> = sqlx::query_as(
        "SELECT id, status, attempts FROM translation_jobs WHERE id = ANY($1) \
         ORDER BY id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let found: HashMap<Uuid, (String, i32)> = found
        .into_iter()
        .map(|(id, status, attempts)| (id, (status, attempts)))
        .collect();
    let mut due: Vec<Uuid> = Vec::new();
    for letter in letters {
        let Some((status, attempts)) = found.get(&letter.job_id) else {
            continue;
        };
        let current = status == "FAILED" && letter.attempt.is_none_or(|a| a == *attempts);
        if current && !due.contains(&letter.job_id) {
            due.push(letter.job_id);
        }
    }
    if due.is_empty() {
        tx.commit().await?;
        return Ok(Vec::new());
    }
    sqlx::query(
        "UPDATE translation_subtasks SET status = 'PENDING', error = NULL \
         WHERE job_id = ANY($1) AND status <> 'COMPLETED'",
    )
    .bind(&due)
    .execute(&mut *tx)
    .await?;
    let jobs = hand_out_again(&mut tx, &due, Reason::Fresh).await?;
    let mut subtasks = subtasks_of_many(&mut tx, &due).await?;
    tx.commit().await?;
    Ok(jobs
        .into_iter()
        .map(|mut job| {
            job.subtasks = subtasks.remove(&job.id).unwrap_or_default();
            job
        })
        .collect())
}

/// Queues again, for the dead lane, up to `limit` dead letters Redis lost
/// with its data: jobs still FAILED at the attempt whose message went to
/// the dead lane under a generation other than `generation` (the one Redis
/// now holds). Each gets a new outbox row for the dead lane, at the same
/// attempt (nothing about the job changes), so a redrive finds it again.
/// Jobs another transaction holds are left for a later call. Returns the
/// jobs queued.
#[instrument(skip(pool), err)]
pub async fn restore_lost_dead_letters(
    pool: &PgPool,
    generation: i64,
    limit: i64,
) -> Result<Vec<Uuid>, JobError> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query_as::<_, JobRow>(&format!(
        "{SELECT_JOBS} WHERE j.status = 'FAILED' AND p.lane = $1 AND p.attempt = j.attempts \
           AND p.generation <> $2 \
         ORDER BY j.id LIMIT $3 FOR UPDATE OF j SKIP LOCKED"
    ))
    .bind(Lane::Dead.as_str())
    .bind(generation)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let jobs = rows
        .into_iter()
        .map(|row| row.into_job(Vec::new()))
        .collect::<Result<Vec<_>, _>>()?;
    let ids: Vec<Uuid> = jobs.iter().map(|job| job.id).collect();
    if ids.is_empty() {
        return Ok(ids);
    }
    // The old publication goes: the relay records the new one.
    forget_messages(&mut tx, &ids).await?;
    let messages: Vec<Pending> = jobs
        .iter()
        .map(|job| Pending {
            job_id: job.id,
            attempt: job.attempts,
            lane: Lane::Dead,
            payload: job.message().to_json(),
        })
        .collect();
    enqueue(&mut tx, &messages).await?;
    tx.commit().await?;
    for job in &jobs {
        tracing::info!(job_id = %job.id, attempt = job.attempts, "dead letter lost with Redis's data; queued for the dead lane again");
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_and_cap() {
        assert_eq!(redrive_limit(0), DEFAULT_REDRIVE_LIMIT);
        assert_eq!(redrive_limit(7), 7);
        assert_eq!(redrive_limit(1_000_000), MAX_REDRIVE_LIMIT);
    }

    #[test]
    fn dead_letters_are_read_with_or_without_an_attempt() {
        let id = "0b9e8f0e-6b5c-4e6b-8d5e-3f6a2b1c0d9e";
        let letter = parse_dead_letter(format!(r#"{{"job_id":"{id}","attempt":2}}"#))
            .unwrap_or_else(|_| {
                panic!("readable");
            });
        assert_eq!(letter.job_id.to_string(), id);
        assert_eq!(letter.attempt, Some(2));
        let old = parse_dead_letter(format!(r#"{{"job_id":"{id}"}}"#))
            .ok()
            .unwrap();
        assert_eq!(old.attempt, None);
        for bad in ["not json", r#"{"job_id":"nope"}"#, "[]", r#"{"attempt":1}"#] {
            assert!(parse_dead_letter(bad.to_owned()).is_err(), "{bad}");
        }
    }
}
