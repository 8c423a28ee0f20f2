//! Group commit of creates: the creates of concurrent callers go into one
//! statement and one commit.
//!
//! A create on its own is one statement and one durable commit, and the
//! commits per second PostgreSQL can flush bound the creates per second. Here
//! callers hand their job to a collector task: when a commit slot is free,
//! the collector takes every job waiting (up to a limit) and stores them
//! with one statement (`create::create_group`); whoever arrives while all
//! slots are busy waits for the next group. A lone caller finds a slot free
//! and goes at once, as a statement of its own, so it waits no longer than
//! without grouping.
//!
//! Each caller is answered after the commit that holds its job, with its
//! own outcome: a request_id seen before is a replay (or ALREADY_EXISTS) for
//! that caller only; a group the database refuses for another reason is
//! stored again job by job, so one bad job fails alone; an outage fails the
//! whole group (every caller gets UNAVAILABLE). A connection that breaks
//! after the group's statement may have reached PostgreSQL leaves the
//! commit's outcome unknown: the group's jobs are then looked up by id on
//! another connection, and those not committed stored with the same ids,
//! before anyone is answered (see `create`). The commits run on tasks of
//! the collector, not on the callers', so a caller that goes away (its
//! client disconnected) neither cancels nor duplicates its neighbours'
//! jobs; a caller gone before its group was formed is left out of it.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use sqlx::PgPool;
use tokio::{
    sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    Created, JobError, NewJob,
    create::{create_group, statement_span},
};
use crate::{db::timed_out, supervise::Beat};

/// Most subtasks in one group: a group stops growing before it would pass
/// this (a single job may still be larger), so one statement stays short.
const MAX_GROUP_SUBTASKS: usize = 10_000;
/// Jobs that may wait for the collector before callers wait to hand theirs
/// over.
const QUEUE_CAPACITY: usize = 4096;
/// An idle collector beats this often.
const IDLE_BEAT: Duration = Duration::from_secs(5);

/// Tunables of the group commit.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitSettings {
    /// Most jobs in one statement; 1 turns grouping off (every create is
    /// its own statement, on the caller's task).
    pub max_jobs: usize,
    /// Group statements running at once (each on its own connection). A new
    /// group starts as soon as one of these is free.
    pub max_in_flight: usize,
    /// Longest a caller waits for its job to reach the database: for a
    /// commit slot and a connection together (`DATABASE_ACQUIRE_TIMEOUT`).
    /// A caller queued behind groups that wait for an unreachable
    /// PostgreSQL fails after this, not after their wait and its own.
    pub acquire_timeout: Duration,
    /// Longest any one database call may take (see `db::bounded`).
    pub call_timeout: Duration,
}

/// One caller's job and where its outcome goes.
struct Request {
    new: NewJob,
    reply: oneshot::Sender<Result<Created, JobError>>,
    /// When the caller handed it over: its wait for a connection counts
    /// from here.
    queued: Instant,
}

/// Where callers create jobs. Cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    pool: PgPool,
    /// None when grouping is off.
    queue: Option<mpsc::Sender<Request>>,
    /// With grouping off, each caller's wait for a connection.
    acquire_timeout: Duration,
    call_timeout: Duration,
}

impl GroupCommit {
    /// The handle callers use and, when grouping is on, the collector that
    /// must run (see [`Collector::run`]) for creates to be answered.
    pub fn new(pool: PgPool, settings: GroupCommitSettings) -> (Self, Option<Collector>) {
        if settings.max_jobs <= 1 {
            let direct = Self {
                pool,
                queue: None,
                acquire_timeout: settings.acquire_timeout,
                call_timeout: settings.call_timeout,
            };
            return (direct, None);
        }
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let handle = Self {
            pool: pool.clone(),
            queue: Some(sender),
            acquire_timeout: settings.acquire_timeout,
            call_timeout: settings.call_timeout,
        };
        let collector = Collector {
            pool,
            receiver: Arc::new(Mutex::new(receiver)),
            settings,
        };
        (handle, Some(collector))
    }

    /// Stores a new job with its subtasks and outbox row (see
    /// [`create_job`](super::create_job)), in the next group commit. Answers
    /// after the commit, or, when the connection failed with the commit's
    /// outcome unknown, after looking the job up (see `create::settle`).
    pub async fn create(&self, mut new: NewJob) -> Result<Created, JobError> {
        let span = statement_span(&mut new);
        self.store(new).instrument(span).await
    }

    async fn store(&self, new: NewJob) -> Result<Created, JobError> {
        let Some(queue) = &self.queue else {
            // A group of one, on the caller's task. Boxed, so that the
            // grouped path's future stays small.
            let outcomes = Box::pin(create_group(
                &self.pool,
                &[&new],
                self.acquire_timeout,
                self.call_timeout,
            ))
            .await;
            return outcomes
                .into_iter()
                .next()
                .unwrap_or_else(|| Err(stopped()));
        };
        let (reply, outcome) = oneshot::channel();
        queue
            .send(Request {
                new,
                reply,
                queued: Instant::now(),
            })
            .await
            .map_err(|_| stopped())?;
        // Each call of the group is bounded already; this is a safety net
        // for a caller queued behind a slow group.
        match tokio::time::timeout(self.call_timeout * 2, outcome).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(stopped()),
            Err(_) => Err(timed_out(self.call_timeout * 2).into()),
        }
    }

    /// Jobs handed over and not yet taken into a group.
    pub fn waiting(&self) -> usize {
        self.queue
            .as_ref()
            .map_or(0, |queue| queue.max_capacity() - queue.capacity())
    }
}

/// The collector is not running (shutting down): the caller should retry,
/// against this replica later or another one now.
fn stopped() -> JobError {
    JobError::Database(sqlx::Error::PoolClosed)
}

/// Forms groups from the waiting jobs and commits them.
pub struct Collector {
    pool: PgPool,
    /// Shared so that a restarted collector takes over the same queue.
    receiver: Arc<Mutex<mpsc::Receiver<Request>>>,
    settings: GroupCommitSettings,
}

impl Collector {
    /// A collector on the same queue, for a restart by the supervisor.
    pub fn again(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            receiver: self.receiver.clone(),
            settings: self.settings,
        }
    }

    /// Runs until `token` is cancelled; then takes no new jobs, commits
    /// those already handed over and waits for the commits in flight, so
    /// every caller that got its job in is answered.
    pub async fn run(self, token: CancellationToken, beat: Beat) {
        let mut receiver = self.receiver.lock().await;
        let slots = Arc::new(Semaphore::new(self.settings.max_in_flight.max(1)));
        let mut commits = JoinSet::new();
        let mut carried: Option<Request> = None;
        loop {
            beat.beat();
            while commits.try_join_next().is_some() {}
            let first = match carried.take() {
                Some(request) => request,
                None => tokio::select! {
                    biased;
                    () = token.cancelled() => break,
                    request = receiver.recv() => match request {
                        Some(request) => request,
                        None => break,
                    },
                    () = tokio::time::sleep(IDLE_BEAT) => continue,
                },
            };
            // Whoever arrives while every slot is busy joins this group. A
            // caller whose wait for a connection runs out meanwhile fails
            // now, without a slot.
            let gives_up = first.queued + self.settings.acquire_timeout;
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot,
                () = tokio::time::sleep_until(gives_up.into()) => {
                    let _ = first.reply.send(Err(sqlx::Error::PoolTimedOut.into()));
                    continue;
                }
            };
            let Ok(slot) = slot else {
                break;
            };
            let (group, rest) = self.take_group(first, &mut receiver);
            carried = rest;
            if !group.is_empty() {
                commits.spawn(commit(self.pool.clone(), group, self.settings, slot));
            }
        }
        receiver.close();
        let mut left: Vec<Request> = carried.into_iter().collect();
        while let Ok(request) = receiver.try_recv() {
            left.push(request);
        }
        if !left.is_empty() {
            tracing::info!(
                jobs = left.len(),
                "committing the creates handed over before shutdown"
            );
        }
        left.retain(|request| !request.reply.is_closed());
        while !left.is_empty() {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let take = left.len().min(self.settings.max_jobs.max(1));
            let group: Vec<Request> = left.drain(..take).collect();
            commits.spawn(commit(self.pool.clone(), group, self.settings, slot));
        }
        while commits.join_next().await.is_some() {}
        // The API let go of its end first (its servers stopped): the loop
        // has nothing left to do, but ends with the others, not as a loop
        // that stopped by itself.
        token.cancelled().await;
    }

    /// `first` and every job waiting behind it, up to the limits; callers
    /// already gone are left out. A job that would push the group over the
    /// subtask limit comes back to start the next group.
    fn take_group(
        &self,
        first: Request,
        receiver: &mut mpsc::Receiver<Request>,
    ) -> (Vec<Request>, Option<Request>) {
        let mut subtasks = first.new.subtasks.len();
        let mut group = Vec::with_capacity(self.settings.max_jobs.min(64));
        if !first.reply.is_closed() {
            group.push(first);
        }
        while group.len() < self.settings.max_jobs {
            let Ok(request) = receiver.try_recv() else {
                break;
            };
            if request.reply.is_closed() {
                continue;
            }
            let more = request.new.subtasks.len();
            if !group.is_empty() && subtasks + more > MAX_GROUP_SUBTASKS {
                return (group, Some(request));
            }
            subtasks += more;
            group.push(request);
        }
        (group, None)
    }
}

/// Commits one group and answers each of its callers. The group waits for a
/// connection only as long as its longest-waiting caller still may.
async fn commit(
    pool: PgPool,
    group: Vec<Request>,
    settings: GroupCommitSettings,
    _slot: OwnedSemaphorePermit,
) {
    let outcomes = {
        let jobs: Vec<&NewJob> = group.iter().map(|request| &request.new).collect();
        let wait = group
            .iter()
            .map(|request| request.queued)
            .min()
            .map_or(settings.acquire_timeout, |oldest| {
                (oldest + settings.acquire_timeout).saturating_duration_since(Instant::now())
            });
        create_group(&pool, &jobs, wait, settings.call_timeout).await
    };
    tracing::debug!(jobs = group.len(), "group committed");
    for (request, outcome) in group.into_iter().zip(outcomes) {
        // A caller that went away is not waiting for its answer.
        let _ = request.reply.send(outcome);
    }
}
