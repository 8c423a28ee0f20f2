//! What a `/metrics` scrape reads from PostgreSQL and Redis: one reading in
//! flight at a time, shared by every scrape that comes meanwhile, kept for
//! [`FRESH_FOR`], on a connection of its own. Scrapes from several
//! Prometheus servers, or a scraper gone wild, can neither take the API's
//! connections nor pile statements onto PostgreSQL.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::{
    metrics::Gauges,
    outbox::{EXACT_UP_TO, outbox_size},
    queue::{Lane, RedisQueue},
};

/// Longest a reading waits for PostgreSQL and Redis (read side by side)
/// before reporting them down.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a reading answers later scrapes.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// The shared, cached reading.
pub struct Scrape {
    /// A pool of one connection, not the API's (see `db::side_pool`).
    pool: PgPool,
    queue: RedisQueue,
    /// The last reading and when it was taken. Held while a reading runs,
    /// so concurrent scrapes wait for that one instead of starting theirs.
    last: Mutex<Option<(Instant, Gauges)>>,
}

impl Scrape {
    pub fn new(pool: PgPool, queue: RedisQueue) -> Self {
        Self {
            pool,
            queue,
            last: Mutex::new(None),
        }
    }

    /// The current reading: the cached one while fresh, else a new one.
    pub async fn gauges(&self) -> Gauges {
        let mut last = self.last.lock().await;
        if let Some((taken, gauges)) = last.as_ref()
            && taken.elapsed() < FRESH_FOR
        {
            return gauges.clone();
        }
        let gauges = read(&self.pool, &self.queue).await;
        *last = Some((Instant::now(), gauges.clone()));
        gauges
    }
}

/// Reads the outbox backlog (counted up to [`EXACT_UP_TO`], estimated
/// beyond: a scrape never walks a large outbox) and the notification
/// queue's usage from PostgreSQL, and the policy and lane lengths from
/// Redis, side by side, within [`SCRAPE_TIMEOUT`]: a scrape never hangs on a
/// dead peer, it reports it down.
async fn read(pool: &PgPool, queue: &RedisQueue) -> Gauges {
    let mut gauges = Gauges::default();
    let backlog = tokio::time::timeout(SCRAPE_TIMEOUT, outbox_size(pool, EXACT_UP_TO));
    let redis = tokio::time::timeout(SCRAPE_TIMEOUT, redis_readings(queue));
    // After the backlog: a function call, no table.
    let notifications = tokio::time::timeout(
        SCRAPE_TIMEOUT,
        sqlx::query_scalar::<_, f64>("SELECT pg_notification_queue_usage()").fetch_one(pool),
    );
    let (backlog, redis, notifications) = tokio::join!(backlog, redis, notifications);
    if let Ok(Ok(outbox)) = backlog {
        gauges.database_up = true;
        gauges.outbox_backlog = Some(outbox.rows);
        gauges.outbox_backlog_estimated = outbox.estimated;
        gauges.outbox_oldest_age = outbox.oldest_age;
    }
    if let Ok(Ok(usage)) = notifications {
        gauges.notification_queue_usage = Some(usage);
    }
    if let Ok((policy, lanes)) = redis {
        gauges.redis_up = !lanes.is_empty();
        gauges.redis_maxmemory_policy = policy;
        gauges.lane_lengths = lanes;
    }
    gauges
}

/// Redis's `maxmemory-policy` (when `CONFIG GET` is allowed) and the length
/// of each lane, up to the first that cannot be read.
async fn redis_readings(queue: &RedisQueue) -> (Option<String>, Vec<(&'static str, u64)>) {
    let mut lanes = Vec::with_capacity(Lane::ALL.len());
    if !queue.is_connected() {
        return (None, lanes);
    }
    let policy = queue.maxmemory_policy().await.ok();
    for lane in Lane::ALL {
        match queue.queue_length(lane).await {
            Ok(length) => lanes.push((lane.as_str(), length)),
            Err(_) => break,
        }
    }
    (policy, lanes)
}
