//! Keeps the dead lane bounded: every `REAPER_INTERVAL` the oldest dead
//! letters whose job is gone, moved on, or failed longer ago than
//! `DEAD_LETTER_MAX_AGE` leave it (see `jobs::expired_dead_letters`), and
//! the lane is cut to its newest `DEAD_LETTER_MAX_LENGTH` messages. A
//! message is dropped only while it is still the lane's head (a Lua script
//! compares before it pops), so a redrive taking messages meanwhile never
//! loses one it did not mean to.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    jobs::{self, JobError},
    metrics::Metrics,
    queue::{QueueError, RedisQueue},
    supervise::Beat,
    telemetry::error_chain,
};

/// Messages read from the head per round.
const CHUNK: usize = 500;
/// Rounds per pass at most, so a pass ends.
const MAX_ROUNDS: usize = 20;

/// `DEAD_LETTER_MAX_AGE` and `DEAD_LETTER_MAX_LENGTH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLaneSettings {
    /// Messages of jobs that failed longer ago than this go; None keeps them
    /// while their job stays failed.
    pub max_age: Option<Duration>,
    /// The lane is cut to its newest this many; 0: no cap.
    pub max_length: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TrimError {
    #[error("cannot read the dead letters' jobs")]
    Jobs(#[from] JobError),
    #[error("cannot trim the dead lane")]
    Queue(#[from] QueueError),
    #[error("a call took longer than {0:?}")]
    Timeout(Duration),
}

pub struct DeadLane {
    pool: PgPool,
    queue: RedisQueue,
    settings: DeadLaneSettings,
    call_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl DeadLane {
    pub fn new(
        pool: PgPool,
        queue: RedisQueue,
        settings: DeadLaneSettings,
        call_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            pool,
            queue,
            settings,
            call_timeout,
            metrics,
        }
    }

    pub async fn run(self, interval: Duration, token: CancellationToken, beat: Beat) {
        loop {
            beat.beat();
            match self.trim_once().await {
                Ok(0) => {}
                Ok(dropped) => tracing::info!(dropped, "dead letters trimmed"),
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), redis = self.queue.target(), "cannot trim the dead lane; next pass");
                }
            }
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// One pass: expired messages from the head, then the cap. Returns how
    /// many messages left the lane.
    pub async fn trim_once(&self) -> Result<u64, TrimError> {
        let mut dropped = 0;
        for _ in 0..MAX_ROUNDS {
            let oldest = self.call(self.queue.oldest_dead_letters(CHUNK)).await??;
            let expired = self
                .call(jobs::expired_dead_letters(
                    &self.pool,
                    &oldest,
                    self.settings.max_age,
                ))
                .await??;
            let trimmed = self
                .call(self.queue.trim_dead_letters(&oldest[..expired], 0))
                .await??;
            dropped += trimmed;
            if expired < CHUNK || trimmed < expired as u64 {
                break;
            }
        }
        if self.settings.max_length > 0 {
            dropped += self
                .call(self.queue.trim_dead_letters(&[], self.settings.max_length))
                .await??;
        }
        self.metrics.dead_letters_trimmed(dropped);
        Ok(dropped)
    }

    async fn call<T>(&self, call: impl Future<Output = T>) -> Result<T, TrimError> {
        tokio::time::timeout(self.call_timeout, call)
            .await
            .map_err(|_| TrimError::Timeout(self.call_timeout))
    }
}
