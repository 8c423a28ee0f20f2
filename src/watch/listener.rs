//! The process's one LISTEN connection. It carries two channels: outbox
//! wake-ups for the relay and job change events for the watchers.

use std::time::Duration;

use sqlx::{PgPool, postgres::PgListener};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{event::Change, hub::WatchHub};
use crate::{
    db::bounded, outbox::OUTBOX_CHANNEL, supervise::Beat, telemetry::error_chain, wake::Wake,
};

/// Channel of the triggers on the job and subtask tables; the payload is a
/// JSON change event (see `watch::Change`).
pub const JOB_EVENTS_CHANNEL: &str = "translation_job_events";

/// Pause before listening again after the connection failed.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// After this long without a notification the connection is tested with a
/// query: a black-holed server would otherwise leave the listener waiting
/// forever.
pub const IDLE_PING: Duration = Duration::from_secs(15);
/// How long connecting or the test query may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Dispatches notifications until cancelled.
pub struct Listener {
    pool: PgPool,
    hub: WatchHub,
    wake: Wake,
}

impl Listener {
    pub fn new(pool: PgPool, hub: WatchHub, wake: Wake) -> Self {
        Self { pool, hub, wake }
    }

    /// Opens the connection and subscribes to both channels.
    pub async fn connect(&self) -> Result<PgListener, sqlx::Error> {
        bounded(CALL_TIMEOUT, async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener
                .listen_all([OUTBOX_CHANNEL, JOB_EVENTS_CHANNEL])
                .await?;
            Ok(listener)
        })
        .await
    }

    /// Runs until `token` is cancelled. While the connection is down the
    /// relay keeps polling; after it comes back every watcher reads its job
    /// again and the relay drains, since notifications may have been missed.
    pub async fn run(self, token: CancellationToken, beat: Beat) {
        let mut listener: Option<PgListener> = None;
        let mut failures: u32 = 0;
        loop {
            beat.beat();
            let current = match listener.as_mut() {
                Some(current) => current,
                None => match self.connect().await {
                    Ok(fresh) => {
                        if failures > 0 {
                            tracing::info!("LISTEN connection back");
                        }
                        failures = 0;
                        self.hub.resync_all();
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
                // try_recv is cancel-safe: a notification half read stays
                // buffered for the next call.
                received = tokio::time::timeout(IDLE_PING, current.try_recv()) => received,
            };
            match received {
                Ok(Ok(Some(notification))) => {
                    self.dispatch(notification.channel(), notification.payload())
                }
                // The connection dropped and sqlx opened a new one.
                Ok(Ok(None)) => {
                    tracing::warn!("LISTEN connection re-opened; watchers read their jobs again");
                    self.hub.resync_all();
                    self.wake.wake();
                }
                Ok(Err(error)) => {
                    tracing::warn!(error = %error_chain(&error), "LISTEN connection failed");
                    listener = None;
                    failures = 1;
                }
                Err(_idle) => {
                    let ping = bounded(CALL_TIMEOUT, async {
                        sqlx::query("SELECT 1").execute(&mut *current).await?;
                        Ok::<(), sqlx::Error>(())
                    })
                    .await;
                    if let Err(error) = ping {
                        tracing::warn!(error = %error_chain(&error), "LISTEN connection does not answer; opening a new one");
                        listener = None;
                        failures = 1;
                    }
                }
            }
        }
        tracing::info!("listener stopped");
    }

    fn dispatch(&self, channel: &str, payload: &str) {
        if channel == OUTBOX_CHANNEL {
            self.wake.wake();
        } else if channel == JOB_EVENTS_CHANNEL {
            if let Some(change) = Change::parse(payload) {
                self.hub.publish(change);
            } else if let Ok(job_id) = Uuid::try_parse(payload) {
                // An older version's trigger: the bare job id.
                self.hub.resync(job_id);
            } else {
                tracing::debug!(payload, "ignoring a malformed job event");
            }
        }
    }
}
