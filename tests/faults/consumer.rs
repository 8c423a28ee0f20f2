//! The test's consumer: moves messages from the lanes into a processing
//! list (a move, never a pop: a reply lost when Redis dies mid-command
//! leaves the message in one of the two lists, so a consumer's own losses
//! are never counted as the service's), and, as a worker, claims each job
//! with the message's attempt and finishes it with guarded updates, as the
//! worker contract says.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use fred::{
    prelude::{Builder, Client, ClientLike, Config, ReconnectPolicy},
    types::scripts::Script,
};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use translation_jobs::queue::{JobMessage, Lane, QueueName};
use uuid::Uuid;

/// Most messages moved per call: many for a mover; few for a worker, which
/// holds what it moved until it claimed each (a message moved but not
/// claimed for `STUCK_JOB_TIMEOUT` is handed out again by the reaper, as
/// for a worker that died after its pop).
const MOVE_BATCH: usize = 500;
const WORK_BATCH: usize = 5;
/// Pause when the lanes were empty or Redis failed.
const IDLE: Duration = Duration::from_millis(20);

/// The processing list of the test consumer (in the queue's slot).
pub fn processing_key(queue: &QueueName) -> String {
    queue.tagged("test:processing")
}

/// A Redis client for tests that reconnects by itself and never waits long.
pub async fn redis_client(url: &str) -> Client {
    let mut config = Config::from_url(url).expect("redis url");
    config.fail_fast = false;
    let client = Builder::from_config(config)
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(3))
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
        })
        .set_policy(ReconnectPolicy::new_constant(0, 100))
        .build()
        .expect("redis client");
    let _connection = client.connect();
    let _ = tokio::time::timeout(Duration::from_secs(10), client.wait_for_connect()).await;
    client
}

/// What the consumer did.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConsumerStats {
    /// Messages moved to the processing list (as far as the replies told).
    pub moved: u64,
    /// Claims that took a job (worker mode).
    pub claimed: u64,
    /// Claims refused: a stale attempt, a cancelled job, or a copy.
    pub refused: u64,
    /// Jobs finished COMPLETED / FAILED (worker mode).
    pub completed: u64,
    pub failed: u64,
}

/// A consumer running until stopped.
pub struct Consumer {
    stop: Arc<AtomicBool>,
    task: JoinHandle<ConsumerStats>,
}

impl Consumer {
    /// Moves messages only (they pile up in the processing list).
    pub async fn mover(redis_url: &str, queue: &QueueName) -> Self {
        Self::start(redis_url, queue, None).await
    }

    /// Moves messages and works them off against `pool` (one claimed job
    /// in ten ends FAILED, so that retries have something to retry).
    pub async fn worker(redis_url: &str, queue: &QueueName, pool: PgPool) -> Self {
        Self::start(redis_url, queue, Some(pool)).await
    }

    async fn start(redis_url: &str, queue: &QueueName, pool: Option<PgPool>) -> Self {
        let client = redis_client(redis_url).await;
        // The load generator's consumer script: the same move, one place.
        let script = Script::from_lua(include_str!("../../src/bin/loadgen/move.lua"));
        let mut keys: Vec<String> = Lane::WAITING.iter().map(|l| queue.key(*l)).collect();
        keys.push(processing_key(queue));
        let batch_size = if pool.is_some() {
            WORK_BATCH
        } else {
            MOVE_BATCH
        };
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut stats = ConsumerStats::default();
                while !stop.load(Ordering::Relaxed) {
                    let reply: Result<Vec<String>, _> = script
                        .evalsha_with_reload(&client, keys.clone(), vec![batch_size.to_string()])
                        .await;
                    let batch = match reply {
                        Ok(batch) if !batch.is_empty() => batch,
                        _ => {
                            tokio::time::sleep(IDLE).await;
                            continue;
                        }
                    };
                    stats.moved += batch.len() as u64;
                    if let Some(pool) = &pool {
                        for payload in &batch {
                            work(pool, payload, &stop, &mut stats).await;
                        }
                    }
                }
                let _ = client.quit().await;
                stats
            })
        };
        Self { stop, task }
    }

    pub async fn stop(self) -> ConsumerStats {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("consumer task")
    }
}

/// Claims and finishes one job as the worker contract says; retries while
/// PostgreSQL is unreachable (until stopped).
async fn work(pool: &PgPool, payload: &str, stop: &AtomicBool, stats: &mut ConsumerStats) {
    let Ok(message) = serde_json::from_str::<JobMessage>(payload) else {
        return;
    };
    let Ok(job_id) = Uuid::parse_str(&message.job_id) else {
        return;
    };
    let attempt = message.attempt;
    let fail = fastrand::u8(0..10) == 0;
    loop {
        match finish(pool, job_id, attempt, fail).await {
            Ok(Some(true)) => {
                stats.claimed += 1;
                if fail {
                    stats.failed += 1;
                } else {
                    stats.completed += 1;
                }
                return;
            }
            Ok(Some(false)) => {
                // Claimed, then cancelled or handed out again meanwhile.
                stats.claimed += 1;
                return;
            }
            Ok(None) => {
                stats.refused += 1;
                return;
            }
            Err(_) if !stop.load(Ordering::Relaxed) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => return,
        }
    }
}

/// Claim (committed at once), subtasks, finish: None when the claim was
/// refused, Some(whether the finish applied) otherwise. A retry after an
/// error re-runs from the claim, which then refuses (IN_PROGRESS) unless
/// the claim had not committed; the guarded updates make that safe.
async fn finish(
    pool: &PgPool,
    job_id: Uuid,
    attempt: i32,
    fail: bool,
) -> Result<Option<bool>, sqlx::Error> {
    let limit = Duration::from_secs(5);
    let bounded = |f| tokio::time::timeout(limit, f);
    let claimed: Option<Uuid> = bounded(
        sqlx::query_scalar(
            "UPDATE translation_jobs SET status = 'IN_PROGRESS' \
             WHERE id = $1 AND status = 'PENDING' AND attempts = $2 RETURNING id",
        )
        .bind(job_id)
        .bind(attempt)
        .fetch_optional(pool),
    )
    .await
    .map_err(|_| sqlx::Error::PoolTimedOut)??;
    if claimed.is_none() {
        return Ok(None);
    }
    let status = if fail { "FAILED" } else { "COMPLETED" };
    // Until the finish applies, a failure is retried from here: the claim
    // is done (the job is IN_PROGRESS under this attempt).
    for _ in 0..50 {
        let done = async {
            sqlx::query(
                "UPDATE translation_subtasks SET status = $3, attempts = attempts + 1 \
                 WHERE job_id = $1 AND job_attempt = $2 AND status IN ('PENDING', 'IN_PROGRESS')",
            )
            .bind(job_id)
            .bind(attempt)
            .bind(status)
            .execute(pool)
            .await?;
            let finished = sqlx::query(
                "UPDATE translation_jobs SET status = $3, \
                     error = CASE WHEN $3 = 'FAILED' THEN 'failed by the test worker' END \
                 WHERE id = $1 AND status = 'IN_PROGRESS' AND attempts = $2",
            )
            .bind(job_id)
            .bind(attempt)
            .bind(status)
            .execute(pool)
            .await?
            .rows_affected();
            Ok::<bool, sqlx::Error>(finished == 1)
        };
        match tokio::time::timeout(limit, done).await {
            Ok(Ok(finished)) => return Ok(Some(finished)),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    // Left IN_PROGRESS: the reaper rescues it after STUCK_JOB_TIMEOUT.
    Ok(Some(false))
}
