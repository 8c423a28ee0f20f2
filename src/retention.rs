//! Retention: every `REAPER_INTERVAL` (in the processes that run the
//! reaper) one pass deletes the finished jobs older than their status's
//! `RETAIN_*` setting, with their subtasks, publications and waiting
//! messages (see `jobs::prune_batch`), batch after batch, each its own
//! transaction. A pass ends: each status gets at most
//! `RetentionPolicy::max_batches` batches, the rest waits for the next pass.
//! Nothing here waits for a lock, so any number of replicas share the work.
//!
//! The loop paces itself: after each batch that deleted jobs it pauses
//! `RetentionSettings::pause_ratio` times as long as the batch took, so it
//! keeps PostgreSQL busy a bounded share of the time however large the
//! backlog (with the default 3, a quarter of one connection's time), and
//! creates and the relay keep the rest. A backlog of millions of old jobs
//! then takes hours rather than minutes to clear; steady work (the jobs
//! that age past their retention each interval) takes a few batches.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    db::bounded,
    jobs::{self, JobError, JobStatus, RetentionPolicy},
    metrics::Metrics,
    supervise::Beat,
    telemetry::error_chain,
};

/// Settings of the retention loop.
#[derive(Debug, Clone, Copy)]
pub struct RetentionSettings {
    /// How often a pass runs (`REAPER_INTERVAL`).
    pub interval: Duration,
    pub policy: RetentionPolicy,
    /// Longest one batch may take (see `db::bounded`).
    pub call_timeout: Duration,
    /// After each batch that deleted jobs, a pause this many times as long
    /// as the batch took (0: none).
    pub pause_ratio: u32,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Old enough jobs passed over because another transaction held one of
    /// their rows; a later pass takes them.
    pub held: u64,
    /// Batches this pass ran that found jobs to look at.
    pub batches: u32,
    /// Whether a status reached its batch limit with jobs possibly left.
    pub cut_short: bool,
    /// Time spent in the batches that deleted jobs, and in the pauses after
    /// them.
    pub busy: Duration,
    pub paused: Duration,
}

impl Pruned {
    /// Jobs deleted, every status.
    pub fn total(&self) -> u64 {
        self.completed + self.failed + self.cancelled
    }

    fn add(&mut self, status: JobStatus, deleted: u64) {
        match status {
            JobStatus::Completed => self.completed += deleted,
            JobStatus::Failed => self.failed += deleted,
            JobStatus::Cancelled => self.cancelled += deleted,
            JobStatus::Pending | JobStatus::InProgress => {}
        }
    }
}

/// Deletes finished jobs past their retention.
pub struct Retention {
    pool: PgPool,
    settings: RetentionSettings,
    /// Counts the jobs deleted, by status.
    metrics: Arc<Metrics>,
}

impl Retention {
    pub fn new(pool: PgPool, settings: RetentionSettings) -> Self {
        Self {
            pool,
            settings,
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// Counts what this loop deletes in `metrics` (the app's; by default a
    /// registry nobody reads).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// One pass over every finished status. What a batch deleted is
    /// committed and counted even when a later batch fails.
    pub async fn prune_once(&self) -> Result<Pruned, JobError> {
        self.pass(&Beat::detached("retention")).await
    }

    async fn pass(&self, beat: &Beat) -> Result<Pruned, JobError> {
        let policy = self.settings.policy;
        let now = Utc::now();
        let mut pruned = Pruned::default();
        for (status, age) in policy.ages() {
            let Some(cutoff) = age.and_then(|age| jobs::cutoff(now, age)) else {
                continue;
            };
            let mut after = Uuid::nil();
            for batch_number in 1..=policy.max_batches {
                let started = Instant::now();
                let batch = bounded(
                    self.settings.call_timeout,
                    jobs::prune_batch(&self.pool, status, cutoff, after, policy.batch_size),
                )
                .await?;
                beat.beat();
                let took = started.elapsed();
                let deleted = batch.deleted.len() as u64;
                pruned.add(status, deleted);
                pruned.held += batch.held.len() as u64;
                if batch.scanned > 0 {
                    pruned.batches += 1;
                }
                if deleted > 0 {
                    self.metrics.jobs_pruned(status.as_str(), deleted);
                }
                tracing::debug!(
                    status = status.as_str(),
                    scanned = batch.scanned,
                    deleted,
                    held = batch.held.len(),
                    took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                    "retention batch"
                );
                for job_id in &batch.held {
                    tracing::debug!(%job_id, status = status.as_str(), "finished job held by another transaction; kept for a later pass");
                }
                if deleted > 0 {
                    pruned.busy += took;
                }
                if deleted > 0 && self.settings.pause_ratio > 0 {
                    let pause = took * self.settings.pause_ratio;
                    tokio::time::sleep(pause).await;
                    pruned.paused += pause;
                    beat.beat();
                }
                let full = i64::try_from(batch.scanned).unwrap_or(i64::MAX) >= policy.batch_size;
                match batch.last {
                    Some(last) if full => {
                        after = last;
                        pruned.cut_short |= batch_number == policy.max_batches;
                    }
                    _ => break,
                }
            }
        }
        Ok(pruned)
    }

    /// Runs until `token` is cancelled: a pass every interval. A pass
    /// stopped by shutdown rolls back only its current batch.
    pub async fn run(self, token: CancellationToken, beat: Beat) {
        tracing::info!(
            interval = ?self.settings.interval,
            completed = ?self.settings.policy.completed,
            failed = ?self.settings.policy.failed,
            cancelled = ?self.settings.policy.cancelled,
            "retention started"
        );
        loop {
            beat.beat();
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(self.settings.interval) => {}
            }
            beat.beat();
            let started = Instant::now();
            let outcome = tokio::select! {
                () = token.cancelled() => break,
                outcome = self.pass(&beat) => outcome,
            };
            match outcome {
                Ok(pruned) if pruned.total() > 0 => tracing::info!(
                    completed = pruned.completed,
                    failed = pruned.failed,
                    cancelled = pruned.cancelled,
                    held = pruned.held,
                    batches = pruned.batches,
                    took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    more = pruned.cut_short,
                    "retention deleted finished jobs"
                ),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "retention pass failed");
                }
            }
        }
        tracing::info!("retention stopped");
    }
}
