//! Which dead letters may go: the dead lane holds the message of every job
//! that failed for good, and without a bound it would grow with every final
//! failure. A message may leave once its job is gone (retention deleted it),
//! has moved on (retried or redriven since: a redrive would drop the message
//! as stale anyway), or failed longer ago than the lane's age limit. The job
//! itself stays findable in PostgreSQL (`FAILED`, retried by hand) until
//! retention deletes it.

use std::{collections::HashSet, time::Duration};

use sqlx::PgPool;
use uuid::Uuid;

use super::JobError;
use crate::queue::JobMessage;

/// How many of `messages` (the oldest of the dead lane, oldest first), from
/// the first on, may go: the run stops at the first one that must stay, or
/// that is not a job message (a redrive moves those to the tail).
/// `max_age` None keeps messages of jobs still failed at their attempt.
pub async fn expired_dead_letters(
    pool: &PgPool,
    messages: &[String],
    max_age: Option<Duration>,
) -> Result<usize, JobError> {
    let parsed: Vec<Option<(Uuid, i32)>> = messages
        .iter()
        .map(|raw| {
            let message: JobMessage = serde_json::from_str(raw).ok()?;
            Some((Uuid::parse_str(&message.job_id).ok()?, message.attempt))
        })
        .collect();
    let ids: Vec<Uuid> = parsed.iter().flatten().map(|(id, _)| *id).collect();
    let age_secs = max_age.map_or(-1.0, |age| age.as_secs_f64());
    // Per job: whether its dead letter at `attempt` still stands and is young.
    let kept: HashSet<(Uuid, i32)> = sqlx::query_as::<_, (Uuid, i32)>(
        "SELECT id, attempts FROM translation_jobs \
         WHERE id = ANY($1) AND status = 'FAILED' \
           AND ($2 < 0 OR updated_at >= now() - make_interval(secs => $2))",
    )
    .bind(&ids)
    .bind(age_secs)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let expired = parsed
        .iter()
        .take_while(|message| match message {
            None => false,
            Some(job) => !kept.contains(job),
        })
        .count();
    Ok(expired)
}
