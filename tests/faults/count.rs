//! Counting what the service delivered, lost and duplicated.
//!
//! What is counted, precisely: once the outbox is empty and the consumer
//! has moved everything, every message Redis holds (the processing list,
//! the lanes, the dead lane) is read and keyed by (job_id, attempt).
//! - duplicated: copies beyond the first of one (job_id, attempt);
//! - delivered: jobs with a message for their current attempt
//!   (`translation_jobs.attempts`);
//! - lost: an acknowledged job missing from the database, or with no
//!   message for its current attempt while it is not CANCELLED (a cancel
//!   may drop a message still in the outbox);
//! - stale: messages of an earlier attempt of their job (a retry, a rescue
//!   or a re-queue happened since; the claim refuses them). Allowed where a
//!   test makes such hand-outs, else counted as spurious re-queues;
//! - phantom: messages for no job, or for an attempt the job never had;
//! - incomplete: a job (acknowledged or not) without the subtasks it was
//!   created with, or an unacknowledged create that exists but has no
//!   message.
//!
//! Exactly once means: lost = duplicated = phantom = incomplete = 0.

use std::{
    collections::{HashMap, HashSet},
    io::Write as _,
    time::{Duration, Instant},
};

use fred::prelude::{Client, ListInterface};
use sqlx::PgPool;
use translation_jobs::queue::{JobMessage, Lane, QueueName};
use uuid::Uuid;

use crate::{consumer::processing_key, load::Ledger};

/// How long a test waits for the outbox and the lanes to drain.
pub const DRAIN_PATIENCE: Duration = Duration::from_secs(90);

/// Jobs a test wrote straight into the database (bulk backlogs): they count
/// as acknowledged, with this many subtasks.
#[derive(Debug, Default, Clone)]
pub struct Bulk {
    pub job_ids: Vec<Uuid>,
}

/// The tally of one test.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Create calls made (and bulk jobs written).
    pub created: usize,
    pub acknowledged: usize,
    /// Creates without an answer or with an error, found in the database
    /// (complete) or absent.
    pub unacknowledged_present: usize,
    pub unacknowledged_absent: usize,
    pub delivered: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub stale: usize,
    pub phantom: usize,
    pub incomplete: usize,
    /// Messages read from Redis.
    pub messages: usize,
}

impl Counts {
    /// One line for the test's output.
    pub fn line(&self) -> String {
        format!(
            "created={} acknowledged={} unacknowledged={} (in the database {}, absent {}) \
             delivered={} lost={} duplicated={} stale={} phantom={} incomplete={} messages={}",
            self.created,
            self.acknowledged,
            self.unacknowledged_present + self.unacknowledged_absent,
            self.unacknowledged_present,
            self.unacknowledged_absent,
            self.delivered,
            self.lost,
            self.duplicated,
            self.stale,
            self.phantom,
            self.incomplete,
            self.messages
        )
    }

    /// Fails the test on any loss, duplicate, phantom or half-made job;
    /// also on stale copies unless the test hands jobs out again on purpose.
    pub fn assert_exactly_once(&self, stale_allowed: bool) {
        assert_eq!(self.lost, 0, "acknowledged jobs lost: {}", self.line());
        assert_eq!(self.duplicated, 0, "duplicated messages: {}", self.line());
        assert_eq!(self.phantom, 0, "phantom messages: {}", self.line());
        assert_eq!(self.incomplete, 0, "half-made jobs: {}", self.line());
        if !stale_allowed {
            assert_eq!(
                self.stale,
                0,
                "stale copies where nothing was handed out again (a spurious re-queue): {}",
                self.line()
            );
        }
    }
}

/// Prints a line past the test harness's capture, so that the counts show
/// in the test command's output for passing tests too.
pub fn report(test: &str, line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "faults: {test}: {line}");
}

/// Waits until the outbox is empty and the lanes stay empty (the consumer
/// moved everything); panics after [`DRAIN_PATIENCE`].
pub async fn wait_drained(pool: &PgPool, redis: &Client, queue: &QueueName) {
    let deadline = Instant::now() + DRAIN_PATIENCE;
    let mut quiet = 0;
    loop {
        let outbox: Result<i64, _> = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(pool)
            .await;
        let mut waiting = 0;
        for lane in Lane::WAITING {
            waiting += redis.llen::<i64, _>(queue.key(lane)).await.unwrap_or(1);
        }
        if outbox.as_ref().is_ok_and(|n| *n == 0) && waiting == 0 {
            quiet += 1;
            // Twice in a row, a reaper interval apart: nothing in flight.
            if quiet >= 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1200)).await;
            continue;
        }
        quiet = 0;
        assert!(
            Instant::now() < deadline,
            "not drained after {DRAIN_PATIENCE:?}: outbox {outbox:?}, lanes {waiting}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every message Redis holds for the queue (the processing list, the lanes
/// and the dead lane), each with whether it is in the dead lane.
async fn messages_by_lane(redis: &Client, queue: &QueueName) -> Vec<(JobMessage, bool)> {
    let mut keys = vec![(processing_key(queue), false)];
    keys.extend(
        Lane::ALL
            .iter()
            .map(|lane| (queue.key(*lane), *lane == Lane::Dead)),
    );
    let mut found = Vec::new();
    for (key, dead) in keys {
        let raw: Vec<String> = redis.lrange(&key, 0, -1).await.expect("LRANGE");
        found.extend(raw.iter().map(|m| {
            (
                serde_json::from_str::<JobMessage>(m).expect("a message is JSON"),
                dead,
            )
        }));
    }
    found
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    novel_id: Uuid,
    status: String,
    attempts: i32,
    subtasks: i64,
}

/// Reconciles what the callers saw, what the database holds and what Redis
/// holds. Call after [`wait_drained`].
pub async fn reconcile(
    pool: &PgPool,
    redis: &Client,
    queue: &QueueName,
    ledger: &Ledger,
    bulk: &Bulk,
) -> Counts {
    let jobs: Vec<JobRow> = sqlx::query_as(
        "SELECT j.id, j.novel_id, j.status, j.attempts, \
                (SELECT count(*) FROM translation_subtasks s WHERE s.job_id = j.id) AS subtasks \
         FROM translation_jobs j",
    )
    .fetch_all(pool)
    .await
    .expect("read the jobs");
    let by_id: HashMap<Uuid, &JobRow> = jobs.iter().map(|j| (j.id, j)).collect();
    let by_novel: HashMap<Uuid, &JobRow> = jobs.iter().map(|j| (j.novel_id, j)).collect();

    let messages = messages_by_lane(redis, queue).await;
    // A job that failed for good has its attempt's message twice, once
    // delivered and once as its dead letter: they are counted apart.
    let mut copies: HashMap<(Uuid, i32, bool), usize> = HashMap::new();
    let mut counts = Counts {
        created: ledger.outcomes.len() + bulk.job_ids.len(),
        messages: messages.len(),
        ..Counts::default()
    };
    for (message, dead) in &messages {
        let Ok(job_id) = Uuid::parse_str(&message.job_id) else {
            counts.phantom += 1;
            continue;
        };
        *copies.entry((job_id, message.attempt, *dead)).or_default() += 1;
    }
    for (&(job_id, attempt, _), &count) in &copies {
        counts.duplicated += count - 1;
        match by_id.get(&job_id) {
            None => counts.phantom += count,
            Some(job) if attempt > job.attempts => counts.phantom += count,
            Some(job) if attempt < job.attempts => counts.stale += 1,
            Some(_) => {}
        }
    }
    let has_current = |job: &JobRow| {
        copies.contains_key(&(job.id, job.attempts, false))
            || copies.contains_key(&(job.id, job.attempts, true))
    };
    let mut accounted: HashSet<Uuid> = HashSet::new();

    let acknowledged = ledger
        .acknowledged()
        .map(|o| (o.result.expect("acknowledged"), Some(o.subtasks)))
        .chain(bulk.job_ids.iter().map(|id| (*id, None)));
    for (job_id, subtasks) in acknowledged {
        counts.acknowledged += 1;
        accounted.insert(job_id);
        let Some(job) = by_id.get(&job_id) else {
            counts.lost += 1;
            continue;
        };
        if subtasks.is_some_and(|n| job.subtasks != n as i64) {
            counts.incomplete += 1;
        }
        if has_current(job) {
            counts.delivered += 1;
        } else if job.status != "CANCELLED" {
            counts.lost += 1;
        }
    }
    for outcome in ledger.unacknowledged() {
        match by_novel.get(&outcome.novel_id) {
            None => counts.unacknowledged_absent += 1,
            Some(job) => {
                counts.unacknowledged_present += 1;
                accounted.insert(job.id);
                if job.subtasks != outcome.subtasks as i64 {
                    counts.incomplete += 1;
                }
                if has_current(job) {
                    counts.delivered += 1;
                } else if job.status != "CANCELLED" {
                    counts.incomplete += 1;
                }
            }
        }
    }
    // A job nobody asked for.
    counts.phantom += jobs.iter().filter(|j| !accounted.contains(&j.id)).count();
    counts
}
