//! The relay: moves committed outbox rows to the Redis lists.
//!
//! Each [`Relay::drain_once`] claims the oldest rows with `FOR UPDATE SKIP
//! LOCKED` (so any number of replicas can drain one outbox), deletes them,
//! pushes them with one script call per lane, records the publish time on
//! their jobs and commits. The push is idempotent per outbox id, so a relay
//! that dies after the push and before the commit leaves rows that the next
//! attempt re-sends without a duplicate reaching the workers.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use tracing::instrument;
use uuid::Uuid;

use super::wake::RelayWake;
use crate::{
    metrics::Metrics,
    queue::{Lane, OutboxMessage, QueueError, RedisQueue},
    telemetry::error_chain,
};

/// The relay lingers after a wake-up only when its last batch had at least
/// this many rows, i.e. when commits arrive faster than it drains them.
const LINGER_FROM_BATCH: usize = 16;

/// Shortest pause after a failed drain; doubles up to the configured maximum.
const MIN_BACKOFF: Duration = Duration::from_millis(50);

/// Errors of one drain.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox database error")]
    Database(#[from] sqlx::Error),
    #[error("publishing to Redis failed")]
    Queue(#[from] QueueError),
}

/// Tunables of the relay.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows claimed per transaction.
    pub batch_size: u32,
    /// Drain at least this often even when nothing woke the relay.
    pub poll_interval: Duration,
    /// Longest pause between attempts while Redis or PostgreSQL is down.
    pub max_backoff: Duration,
    /// Under load (the last batch was not tiny), wait this long after a
    /// wake-up before draining so that the rows of concurrent commits go out
    /// in one batch (one transaction, one script call) instead of a few
    /// each. Zero always drains at once.
    pub linger: Duration,
    /// How long Redis remembers that an outbox id was pushed. Must cover the
    /// longest time a claimed batch can stay uncommitted and be retried.
    pub marker_ttl: Duration,
}

/// One claimed outbox row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub job_id: Uuid,
    pub lane: String,
    pub payload: String,
    pub created_at: DateTime<Utc>,
}

/// What one drain did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Rows taken out of the outbox.
    pub claimed: usize,
    /// Messages that reached a list; the rest had been pushed by an earlier
    /// attempt that did not commit.
    pub pushed: u64,
}

/// Moves outbox rows to Redis.
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    queue: RedisQueue,
    settings: RelaySettings,
    metrics: Arc<Metrics>,
    /// Separates this database's push markers from any other's.
    marker_namespace: String,
}

impl Relay {
    /// Reads the marker namespace of this database.
    pub async fn new(
        pool: PgPool,
        queue: RedisQueue,
        settings: RelaySettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RelayError> {
        let namespace: Uuid = sqlx::query_scalar("SELECT marker_namespace FROM relay_identity")
            .fetch_one(&pool)
            .await?;
        Ok(Self {
            pool,
            queue,
            settings,
            metrics,
            marker_namespace: namespace.simple().to_string(),
        })
    }

    pub fn marker_namespace(&self) -> &str {
        &self.marker_namespace
    }

    /// Claims one batch, publishes it and commits. Returns what it did; an
    /// empty outbox gives `claimed == 0`.
    #[instrument(skip_all)]
    pub async fn drain_once(&self) -> Result<Drained, RelayError> {
        if !self.queue.is_connected() {
            // Do not hold rows locked while the client is known to be down.
            return Err(QueueError::NotConnected.into());
        }
        let (tx, rows) = self.claim_batch().await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(Drained::default());
        }
        let pushed = self.push(&rows).await?;
        tx.commit().await?;
        self.record(&rows, pushed);
        Ok(Drained {
            claimed: rows.len(),
            pushed,
        })
    }

    /// Claims a batch and pushes it, then drops the transaction without
    /// committing: what a relay killed between the push and the commit
    /// leaves behind. For tests of the idempotent push.
    #[doc(hidden)]
    pub async fn push_then_crash(&self) -> Result<usize, RelayError> {
        let (tx, rows) = self.claim_batch().await?;
        self.push(&rows).await?;
        tx.rollback().await?;
        Ok(rows.len())
    }

    /// Pushes rows lane by lane, each lane in id order.
    async fn push(&self, rows: &[OutboxRow]) -> Result<u64, RelayError> {
        let mut by_lane: BTreeMap<Lane, Vec<OutboxMessage<'_>>> = BTreeMap::new();
        for row in rows {
            let lane = Lane::parse(&row.lane).unwrap_or_else(|| {
                tracing::warn!(outbox_id = row.id, lane = %row.lane, "unknown lane; using the normal one");
                Lane::Normal
            });
            by_lane.entry(lane).or_default().push(OutboxMessage {
                outbox_id: row.id,
                payload: &row.payload,
            });
        }
        let mut pushed = 0;
        for (lane, messages) in &by_lane {
            pushed += self
                .queue
                .push_once(
                    *lane,
                    &self.marker_namespace,
                    self.settings.marker_ttl,
                    messages,
                )
                .await?;
        }
        Ok(pushed)
    }

    fn record(&self, rows: &[OutboxRow], pushed: u64) {
        let claimed = rows.len() as u64;
        self.metrics
            .relay_published(pushed, claimed.saturating_sub(pushed));
        if let Some(oldest) = rows.iter().map(|r| r.created_at).min() {
            let lag = (Utc::now() - oldest).to_std().unwrap_or_default();
            self.metrics.relay_lag(lag);
        }
        for row in rows {
            tracing::debug!(job_id = %row.job_id, outbox_id = row.id, lane = %row.lane, "published");
        }
    }

    /// Begins a transaction and claims a batch in it.
    async fn claim_batch(
        &self,
    ) -> Result<(Transaction<'static, Postgres>, Vec<OutboxRow>), RelayError> {
        let mut tx = self.pool.begin().await?;
        let rows = claim(&mut tx, self.settings.batch_size).await?;
        Ok((tx, rows))
    }

    /// Drains until a batch comes back short; returns the size of the last.
    ///
    /// A pipeline of [`drain_once`](Self::drain_once)s: while one batch is
    /// being pushed and committed, the next is claimed on a second
    /// connection (SKIP LOCKED hands it the following rows). Pushes still
    /// happen one batch after the other, each after the previous batch
    /// committed, so order is kept.
    async fn drain_until_idle(&self, token: &CancellationToken) -> Result<usize, RelayError> {
        if !self.queue.is_connected() {
            return Err(QueueError::NotConnected.into());
        }
        let full = self.settings.batch_size as usize;
        let (mut tx, mut rows) = self.claim_batch().await?;
        loop {
            if rows.is_empty() {
                tx.commit().await?;
                return Ok(0);
            }
            let more = rows.len() >= full && !token.is_cancelled();
            let publish = async {
                let pushed = self.push(&rows).await?;
                tx.commit().await?;
                Ok::<u64, RelayError>(pushed)
            };
            let (pushed, next) = if more {
                let (pushed, next) = tokio::join!(publish, self.claim_batch());
                (pushed, Some(next))
            } else {
                (publish.await, None)
            };
            // On any error both transactions roll back when dropped; their
            // rows are claimed again later and pushed at most once more.
            let pushed = pushed?;
            self.record(&rows, pushed);
            match next {
                None => return Ok(rows.len()),
                Some(next) => (tx, rows) = next?,
            }
        }
    }

    /// Runs until `token` is cancelled: drains on every wake (a local commit
    /// or a NOTIFY relayed by `watch::Listener`) and poll tick, and backs off
    /// with jitter while a drain fails.
    pub async fn run(self, token: CancellationToken, wake: RelayWake) {
        let mut failures: u32 = 0;
        let mut last_batch;
        // Give a fresh Redis connection a moment before the first drain, so
        // start-up does not log a failure for nothing.
        let _ = self.queue.wait_connected(self.settings.max_backoff).await;
        tracing::info!(
            batch_size = self.settings.batch_size,
            poll_interval = ?self.settings.poll_interval,
            "relay started"
        );
        loop {
            match self.drain_until_idle(&token).await {
                Ok(claimed) => {
                    last_batch = claimed;
                    if failures > 0 {
                        tracing::info!(failures, "relay recovered");
                    }
                    failures = 0;
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    self.metrics.relay_failed();
                    let delay = backoff(failures, self.settings.max_backoff);
                    // Log the first failure and then one in fifty, not every retry.
                    if failures == 1 || failures.is_multiple_of(50) {
                        tracing::warn!(error = %error_chain(&error), failures, ?delay, "relay drain failed; retrying");
                    }
                    tokio::select! {
                        () = token.cancelled() => break,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            }
            tokio::select! {
                () = token.cancelled() => break,
                () = wake.woken() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
            // Linger only when busy: a light load drains at once.
            if !self.settings.linger.is_zero() && last_batch >= LINGER_FROM_BATCH {
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(self.settings.linger) => {}
                }
            }
        }
        tracing::info!("relay stopped");
    }
}

/// Claims the oldest unclaimed rows, deletes them and stamps their jobs'
/// publish time (in `job_publications`), in one statement. A job queued
/// again has its stamp removed in that transaction, so a stamp that already
/// exists belongs to a copy of the same message still in flight: keeping the
/// first is right.
///
/// The transaction commits asynchronously (`synchronous_commit = off`, for
/// this transaction only): the relay's commit need not wait for the WAL
/// flush. If PostgreSQL crashes before the flush, the deleted rows come back
/// and are pushed again, and the push-once markers drop the copies. The
/// outbox rows themselves were written by synchronous commits. Both only become permanent when the
/// transaction commits after the push, so the stamp (taken just before the
/// push) never claims a publish that did not happen.
async fn claim(
    tx: &mut Transaction<'_, Postgres>,
    batch_size: u32,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    let mut rows = sqlx::query_as::<_, OutboxRow>(
        "WITH claimed AS ( \
             DELETE FROM outbox WHERE id IN ( \
                 SELECT id FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING id, job_id, lane, payload, created_at), \
         stamped AS ( \
             INSERT INTO job_publications (job_id, published_at) \
             SELECT DISTINCT job_id, clock_timestamp() FROM claimed \
             ON CONFLICT (job_id) DO NOTHING), \
         async_commit AS ( \
             SELECT set_config('synchronous_commit', 'off', true)) \
         SELECT c.id, c.job_id, c.lane, c.payload, c.created_at \
         FROM claimed AS c, async_commit",
    )
    .bind(i64::from(batch_size))
    .fetch_all(&mut **tx)
    .await?;
    // RETURNING does not promise an order.
    rows.sort_unstable_by_key(|row| row.id);
    Ok(rows)
}

/// Exponential backoff with full jitter: a random pause up to
/// `MIN_BACKOFF * 2^(failures-1)`, capped at `max`.
fn backoff(failures: u32, max: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let ceiling = MIN_BACKOFF.saturating_mul(1 << exponent).min(max);
    let millis = u64::try_from(ceiling.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(fastrand::u64(millis / 2..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let max = Duration::from_secs(1);
        for failures in 1..100 {
            let delay = backoff(failures, max);
            assert!(delay <= max, "{failures}: {delay:?}");
            assert!(delay >= Duration::from_millis(1));
        }
        assert!(backoff(1, max) <= MIN_BACKOFF);
    }
}
