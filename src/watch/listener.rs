//! The process's one LISTEN connection. It carries two channels: outbox
//! wake-ups for the relay and job change events for the watchers.

use std::time::Duration;

use sqlx::{PgPool, postgres::PgListener};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::hub::WatchHub;
use crate::{
    outbox::{OUTBOX_CHANNEL, RelayWake},
    telemetry::error_chain,
};

/// Channel of the triggers on the job and subtask tables; the payload is the
/// job id.
pub const JOB_EVENTS_CHANNEL: &str = "translation_job_events";

/// Pause before listening again after the connection failed.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Dispatches notifications until cancelled.
pub struct Listener {
    pool: PgPool,
    hub: WatchHub,
    wake: RelayWake,
}

impl Listener {
    pub fn new(pool: PgPool, hub: WatchHub, wake: RelayWake) -> Self {
        Self { pool, hub, wake }
    }

    /// Opens the connection and subscribes to both channels.
    pub async fn connect(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener
            .listen_all([OUTBOX_CHANNEL, JOB_EVENTS_CHANNEL])
            .await?;
        Ok(listener)
    }

    /// Runs until `token` is cancelled. While the connection is down the
    /// relay keeps polling; after it comes back every watcher re-reads its
    /// job and the relay drains, since notifications may have been missed.
    pub async fn run(self, token: CancellationToken) {
        let mut listener: Option<PgListener> = None;
        let mut failures: u32 = 0;
        loop {
            let current = match listener.as_mut() {
                Some(current) => current,
                None => match self.connect().await {
                    Ok(fresh) => {
                        if failures > 0 {
                            tracing::info!("LISTEN connection back");
                        }
                        failures = 0;
                        self.hub.all_changed();
                        self.wake.wake();
                        listener.insert(fresh)
                    }
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        if failures == 1 {
                            tracing::warn!(error = %error_chain(&error), "cannot LISTEN; relay polls, watchers wait");
                        }
                        tokio::select! {
                            () = token.cancelled() => break,
                            () = tokio::time::sleep(RETRY_DELAY) => continue,
                        }
                    }
                },
            };
            let received = tokio::select! {
                () = token.cancelled() => break,
                received = current.try_recv() => received,
            };
            match received {
                Ok(Some(notification)) => {
                    self.dispatch(notification.channel(), notification.payload())
                }
                // The connection dropped and was re-established by sqlx.
                Ok(None) => {
                    self.hub.all_changed();
                    self.wake.wake();
                }
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "LISTEN connection failed");
                    listener = None;
                    failures = 1;
                }
            }
        }
        tracing::info!("listener stopped");
    }

    fn dispatch(&self, channel: &str, payload: &str) {
        if channel == OUTBOX_CHANNEL {
            self.wake.wake();
        } else if channel == JOB_EVENTS_CHANNEL {
            match Uuid::try_parse(payload) {
                Ok(job_id) => self.hub.changed(job_id),
                Err(_) => tracing::debug!(payload, "ignoring a malformed job event"),
            }
        }
    }
}
