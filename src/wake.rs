//! Waking the relay: in-process after a local commit, and through
//! LISTEN/NOTIFY (see `watch::Listener`) for rows written elsewhere.

use std::sync::Arc;

use tokio::sync::Notify;

/// The channel the relay LISTENs on. Anything that writes outbox rows outside
/// this process (another tool, a manual fix) can `NOTIFY translation_jobs_outbox`
/// to have them published at once instead of at the next poll.
pub const OUTBOX_CHANNEL: &str = "translation_jobs_outbox";

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
