//! Waking a background loop: the relay after a local commit (and through
//! LISTEN/NOTIFY, see `watch::Listener`, for rows written elsewhere), the
//! reaper when the relay finds that Redis lost its data.

use std::sync::Arc;

use tokio::sync::Notify;

/// Wakes one loop of this process. Wakes that arrive while it is busy
/// coalesce into one.
#[derive(Debug, Clone, Default)]
pub struct Wake(Arc<Notify>);

impl Wake {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the loop to run now.
    pub fn wake(&self) {
        self.0.notify_one();
    }

    /// Resolves at the next wake (or at once if one is pending).
    pub async fn woken(&self) {
        self.0.notified().await;
    }
}
