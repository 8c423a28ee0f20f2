//! The reaper: every `REAPER_INTERVAL`, rescues jobs stuck IN_PROGRESS (see
//! `jobs::rescue_stuck_jobs`) and wakes the relay to publish them.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    jobs::{JobError, RescuePolicy, Rescued, rescue_stuck_jobs},
    outbox::RelayWake,
    telemetry::error_chain,
};

/// Settings of the reaper.
#[derive(Debug, Clone, Copy)]
pub struct ReaperSettings {
    pub interval: Duration,
    pub policy: RescuePolicy,
}

/// Rescues stuck jobs periodically. Safe with any number of replicas: each
/// pass skips the rows another one holds.
pub struct Reaper {
    pool: PgPool,
    settings: ReaperSettings,
    wake: RelayWake,
}

impl Reaper {
    pub fn new(pool: PgPool, settings: ReaperSettings, wake: RelayWake) -> Self {
        Self {
            pool,
            settings,
            wake,
        }
    }

    /// One pass: rescues batches until none is full. Returns everything it
    /// rescued.
    pub async fn reap_once(&self) -> Result<Rescued, JobError> {
        let mut all = Rescued::default();
        loop {
            let batch = rescue_stuck_jobs(&self.pool, self.settings.policy).await?;
            let full = usize::try_from(self.settings.policy.batch_size).unwrap_or(usize::MAX);
            let more =
                batch.requeued.len() + batch.dead.len() >= full || batch.republished.len() >= full;
            if !batch.is_empty() {
                self.wake.wake();
            }
            all.requeued.extend(batch.requeued);
            all.dead.extend(batch.dead);
            all.republished.extend(batch.republished);
            if !more {
                return Ok(all);
            }
        }
    }

    /// Runs until `token` is cancelled.
    pub async fn run(self, token: CancellationToken) {
        tracing::info!(
            interval = ?self.settings.interval,
            stuck_after = ?self.settings.policy.stuck_after,
            max_attempts = self.settings.policy.max_attempts,
            "reaper started"
        );
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(self.settings.interval) => {}
            }
            match self.reap_once().await {
                Ok(rescued) if !rescued.is_empty() => {
                    tracing::info!(
                        requeued = rescued.requeued.len(),
                        dead = rescued.dead.len(),
                        republished = rescued.republished.len(),
                        "reaper rescued stuck jobs"
                    );
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(error = %error_chain(&error), "reaper pass failed"),
            }
        }
        tracing::info!("reaper stopped");
    }
}
