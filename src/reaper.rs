//! The reaper: every `REAPER_INTERVAL` (and at once when the relay finds
//! that Redis lost its data) it hands out again the jobs nobody works on:
//! jobs stuck IN_PROGRESS (see `jobs::rescue_stuck_jobs`) and PENDING jobs
//! whose message is gone (see `jobs::lost_candidates`); then it wakes the
//! relay to publish them.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::{
    db::bounded,
    jobs::{self, JobError, RescuePolicy, Rescued},
    metrics::Metrics,
    outbox::generation::{self, GenerationError},
    queue::{QueueError, RedisQueue},
    supervise::Beat,
    telemetry::error_chain,
    wake::Wake,
};

/// Settings of the reaper.
#[derive(Debug, Clone, Copy)]
pub struct ReaperSettings {
    pub interval: Duration,
    pub policy: RescuePolicy,
    /// Longest one batch may take (see `db::bounded`).
    pub call_timeout: Duration,
}

/// What can stop one pass.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Generation(#[from] GenerationError),
    #[error("Redis error while looking for lost messages")]
    Queue(#[from] QueueError),
}

impl From<sqlx::Error> for ReaperError {
    fn from(error: sqlx::Error) -> Self {
        Self::Job(JobError::Database(error))
    }
}

/// Hands out again what nobody works on. Safe with any number of replicas:
/// each batch skips the rows another one holds.
pub struct Reaper {
    pool: PgPool,
    queue: RedisQueue,
    settings: ReaperSettings,
    relay: Wake,
    owner: OnceCell<String>,
    /// Counts what is handed out again.
    metrics: Arc<Metrics>,
}

impl Reaper {
    pub fn new(pool: PgPool, queue: RedisQueue, settings: ReaperSettings, relay: Wake) -> Self {
        Self {
            pool,
            queue,
            settings,
            relay,
            owner: OnceCell::new(),
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// Counts what this reaper hands out in `metrics` (the app's; by default
    /// a registry nobody reads).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// One pass: stuck jobs, then lost messages, batch after batch until a
    /// batch comes back short. Returns everything it handed out again. The
    /// part that needs Redis is skipped while Redis is unreachable.
    pub async fn reap_once(&self) -> Result<Rescued, ReaperError> {
        let full = usize::try_from(self.settings.policy.batch_size).unwrap_or(usize::MAX);
        let mut all = Rescued::default();
        loop {
            let batch = bounded(
                self.settings.call_timeout,
                jobs::rescue_stuck_jobs(&self.pool, self.settings.policy),
            )
            .await?;
            let more = batch.len() >= full;
            self.handed_out(&batch);
            all.extend(batch);
            if !more {
                break;
            }
        }
        if self.queue.is_connected() {
            loop {
                let lost = self.requeue_lost_once().await?;
                let more = lost.len() >= full;
                let batch = Rescued {
                    republished: lost,
                    ..Rescued::default()
                };
                self.handed_out(&batch);
                all.extend(batch);
                if !more {
                    break;
                }
            }
        }
        Ok(all)
    }

    /// One batch of lost messages: settle the generation, read Redis, find
    /// candidates, read Redis again to confirm, hand the lost ones out again.
    async fn requeue_lost_once(&self) -> Result<Vec<uuid::Uuid>, ReaperError> {
        let limit = self.settings.call_timeout;
        let owner = self
            .owner
            .get_or_try_init(|| generation::database_identity(&self.pool, limit))
            .await?;
        let synced = generation::sync(&self.pool, &self.queue, owner, limit).await?;
        let before = self.queue.snapshot().await?;
        if before.generation != Some(synced.generation) {
            // Changed since: the next pass settles it.
            return Ok(Vec::new());
        }
        let mut tx = bounded(limit, self.pool.begin()).await?;
        let candidates = bounded(
            limit,
            jobs::lost_candidates(&mut tx, synced.generation, &before, self.settings.policy),
        )
        .await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let after = self.queue.snapshot().await?;
        if after.generation != Some(synced.generation) {
            return Ok(Vec::new());
        }
        let lost: Vec<uuid::Uuid> = candidates
            .iter()
            .filter(|candidate| candidate.is_lost(synced.generation, &after))
            .map(|candidate| candidate.job_id)
            .collect();
        bounded(limit, jobs::requeue_lost(&mut tx, &lost)).await?;
        bounded(limit, tx.commit()).await?;
        Ok(lost)
    }

    /// After each committed batch: count it and let the relay publish it.
    fn handed_out(&self, rescued: &Rescued) {
        if !rescued.is_empty() {
            self.metrics.reaper_handed_out(
                rescued.requeued.len(),
                rescued.dead.len(),
                rescued.republished.len(),
            );
            self.relay.wake();
        }
    }

    /// Runs until `token` is cancelled: a pass every interval, or at once
    /// when `lost_data` is woken.
    pub async fn run(self, token: CancellationToken, lost_data: Wake, beat: Beat) {
        tracing::info!(
            interval = ?self.settings.interval,
            stuck_after = ?self.settings.policy.stuck_after,
            max_attempts = self.settings.policy.max_attempts,
            "reaper started"
        );
        loop {
            beat.beat();
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(self.settings.interval) => {}
                () = lost_data.woken() => {}
            }
            beat.beat();
            match self.reap_once().await {
                Ok(rescued) if !rescued.is_empty() => {
                    tracing::info!(
                        requeued = rescued.requeued.len(),
                        dead = rescued.dead.len(),
                        republished = rescued.republished.len(),
                        "reaper handed out jobs again"
                    );
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(error = %error_chain(&error), "reaper pass failed"),
            }
        }
        tracing::info!("reaper stopped");
    }
}
