//! Waking the relay: in-process after a local commit, and through
//! LISTEN/NOTIFY for rows written elsewhere.

use std::{sync::Arc, time::Duration};

use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::Notify;

/// The channel the relay LISTENs on. Anything that writes outbox rows outside
/// this process (another tool, a manual fix) can `NOTIFY translation_jobs_outbox`
/// to have them published at once instead of at the next poll.
pub const OUTBOX_CHANNEL: &str = "translation_jobs_outbox";

/// Pause before listening again after the LISTEN connection failed.
const LISTEN_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Wakes the relay of this process. Wakes that arrive while it is busy
/// coalesce into one.
#[derive(Debug, Clone, Default)]
pub struct RelayWake(Arc<Notify>);

impl RelayWake {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the relay to drain now.
    pub fn wake(&self) {
        self.0.notify_one();
    }

    /// Resolves at the next wake (or at once if one is pending).
    pub async fn woken(&self) {
        self.0.notified().await;
    }
}

/// A LISTEN connection that never fails: it reconnects by itself and, when
/// the connection was lost, reports a wake since notifications may have been
/// missed. The relay's poll keeps it correct even if NOTIFY never arrives
/// (e.g. behind a transaction-mode pooler).
pub struct OutboxListener {
    pool: PgPool,
    listener: Option<PgListener>,
}

impl OutboxListener {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            listener: None,
        }
    }

    /// Opens the LISTEN connection if it is not open; returns whether it is.
    pub async fn ensure_listening(&mut self) -> bool {
        if self.listener.is_none() {
            self.listener = self.listen().await;
        }
        self.listener.is_some()
    }

    /// Resolves at the next notification (or possible missed one).
    pub async fn notified(&mut self) {
        loop {
            let listener = match self.listener.as_mut() {
                Some(listener) => listener,
                None => match self.listen().await {
                    Some(listener) => self.listener.insert(listener),
                    None => {
                        tokio::time::sleep(LISTEN_RETRY_DELAY).await;
                        continue;
                    }
                },
            };
            match listener.try_recv().await {
                // A notification, or the connection dropped and came back.
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(error = %error, "outbox LISTEN connection failed; polling until it is back");
                    self.listener = None;
                    tokio::time::sleep(LISTEN_RETRY_DELAY).await;
                    // Rows may have arrived unannounced meanwhile.
                    return;
                }
            }
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::debug!(error = %error, "cannot open the outbox LISTEN connection");
                return None;
            }
        };
        match listener.listen(OUTBOX_CHANNEL).await {
            Ok(()) => Some(listener),
            Err(error) => {
                tracing::debug!(error = %error, "cannot LISTEN on the outbox channel");
                None
            }
        }
    }
}
