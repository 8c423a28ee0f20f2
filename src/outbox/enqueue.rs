//! Writing outbox rows for jobs that must be published again (retry,
//! rescue, lost messages, redrive, dead letters). New jobs write theirs
//! inside the create statement.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::queue::Lane;

/// The channel the relay LISTENs on. Anything that writes outbox rows outside
/// this process (another tool, a manual fix) can `NOTIFY translation_jobs_outbox`
/// to have them published at once instead of at the next poll.
pub const OUTBOX_CHANNEL: &str = "translation_jobs_outbox";

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Pending {
    pub job_id: Uuid,
    /// The job's attempt the message is for (its `attempt` key).
    pub attempt: i32,
    pub lane: Lane,
    /// The exact JSON to push.
    pub payload: String,
}

/// Inserts the rows in one statement and notifies the relays of every
/// replica at commit. Runs inside the caller's transaction, so the rows
/// exist exactly when the change that needs them is committed.
pub async fn enqueue(conn: &mut PgConnection, messages: &[Pending]) -> Result<(), sqlx::Error> {
    if messages.is_empty() {
        return Ok(());
    }
    let job_ids: Vec<Uuid> = messages.iter().map(|m| m.job_id).collect();
    let attempts: Vec<i32> = messages.iter().map(|m| m.attempt).collect();
    let lanes: Vec<&str> = messages.iter().map(|m| m.lane.as_str()).collect();
    let payloads: Vec<&str> = messages.iter().map(|m| m.payload.as_str()).collect();
    sqlx::query(
        "WITH queued AS ( \
             INSERT INTO outbox (job_id, attempt, lane, payload) \
             SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::text[], $4::text[]) \
             RETURNING 1) \
         SELECT pg_notify($5, '') FROM (SELECT count(*) FROM queued) AS rows",
    )
    .bind(&job_ids)
    .bind(&attempts)
    .bind(&lanes)
    .bind(&payloads)
    .bind(OUTBOX_CHANNEL)
    .execute(conn)
    .await?;
    Ok(())
}
