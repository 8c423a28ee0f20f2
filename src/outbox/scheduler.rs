//! The loop that turns scheduled rows into outbox rows when they come due
//! (see `jobs::promote_due`): scheduled creates, retries after their
//! backoff, and a worker's final failures on their way to the dead lane.
//!
//! It sleeps until the earliest due row, but never longer than
//! [`MAX_SLEEP`], so a row another replica or a worker's trigger wrote is
//! seen within about a second; a create of this process with a near
//! `schedule_time` wakes it at once. Its reads use the index on `due_at`
//! only, and the relay's claim never sees a row that is not due: rows
//! waiting for later cost the drain nothing.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    jobs::{self, JobError, Promoted},
    supervise::Beat,
    telemetry::error_chain,
    wake::Wake,
};

/// Longest sleep between two looks at `outbox_scheduled`.
pub const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Rows moved per transaction.
pub const BATCH: i64 = 500;
/// Pause when due rows are all held by other transactions, or after an error.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

pub struct Scheduler {
    pool: PgPool,
    /// Woken after rows were queued, so the relay pushes them now.
    relay: Wake,
    /// Woken by a local create with a schedule.
    wake: Wake,
}

impl Scheduler {
    pub fn new(pool: PgPool, relay: Wake, wake: Wake) -> Self {
        Self { pool, relay, wake }
    }

    pub async fn run(self, token: CancellationToken, beat: Beat) {
        loop {
            beat.beat();
            let pause = match self.round().await {
                Ok(pause) => pause,
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "cannot queue scheduled messages; retrying");
                    RETRY_PAUSE * 10
                }
            };
            if pause.is_zero() {
                continue;
            }
            tokio::select! {
                () = token.cancelled() => return,
                () = self.wake.woken() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Moves what is due; returns how long to sleep before the next look.
    async fn round(&self) -> Result<Duration, JobError> {
        let Promoted {
            queued,
            candidates,
            skipped,
            ..
        } = jobs::promote_due(&self.pool, BATCH).await?;
        if queued > 0 {
            self.relay.wake();
        }
        if candidates as i64 == BATCH && skipped < candidates {
            return Ok(Duration::ZERO);
        }
        let next = jobs::next_due_in(&self.pool).await?;
        Ok(match next {
            None => MAX_SLEEP,
            // Due since the round's read: take it now.
            Some(next) if next.is_zero() && skipped == 0 => Duration::ZERO,
            // Due but held by another transaction: look again soon.
            Some(next) if next.is_zero() => RETRY_PAUSE,
            // A few milliseconds late rather than one round early.
            Some(next) => (next + Duration::from_millis(2)).min(MAX_SLEEP),
        })
    }
}
