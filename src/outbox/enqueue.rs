//! Writing outbox rows for jobs that must be published again (retry,
//! rescue, dead letters). New jobs write theirs inside the create statement.

use sqlx::PgConnection;
use uuid::Uuid;

use super::wake::OUTBOX_CHANNEL;
use crate::queue::Lane;

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Pending {
    pub job_id: Uuid,
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
    let lanes: Vec<&str> = messages.iter().map(|m| m.lane.as_str()).collect();
    let payloads: Vec<&str> = messages.iter().map(|m| m.payload.as_str()).collect();
    sqlx::query(
        "WITH queued AS ( \
             INSERT INTO outbox (job_id, lane, payload) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[]) \
             RETURNING 1) \
         SELECT pg_notify($4, '') FROM (SELECT count(*) FROM queued) AS rows",
    )
    .bind(&job_ids)
    .bind(&lanes)
    .bind(&payloads)
    .bind(OUTBOX_CHANNEL)
    .execute(conn)
    .await?;
    Ok(())
}
