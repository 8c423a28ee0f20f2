//! Fan-out of job changes to the streams watching them, and this process's
//! record of the jobs it watches.
//!
//! Each watched job has one broadcast channel. The listener sends each
//! change once; every stream of that job receives every change, in order,
//! without touching the database. A stream that falls more than
//! [`EVENTS_PER_JOB`] changes behind is told so (it then reads a fresh
//! snapshot of the job); nothing is skipped silently.
//!
//! The triggers notify only changes of jobs listed in `watched_jobs`
//! (see `registry`), so [`WatchHub::subscribe`] is where every stream,
//! gRPC or HTTP, starts: the first stream of a job in this process records
//! the job there before anything reads it, the last one to close deletes
//! the row (through [`WatchHub::release_closed`], which the hub's loop runs),
//! and [`WatchHub::heartbeat`] keeps the rows' lease.
//!
//! Re-reads of jobs are capped at [`REREADS_AT_ONCE`]: when the LISTEN
//! connection reopens, every stream must read its job again, and they queue
//! for a place (when there are more streams than places, after a random
//! pause of up to [`RESYNC_SPREAD`]) instead of taking every connection of
//! the pool at once.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sqlx::PgPool;
use tokio::sync::{OwnedMutexGuard, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{event::Change, registry};
use crate::{
    db::{bounded, call_timeout_of},
    jobs::{self, Job, JobError, Scope, TxSnapshot},
    supervise::Beat,
    telemetry::error_chain,
    wake::Wake,
};

/// Changes buffered per watched job for its slowest stream. The channel
/// allocates them all when the job's first stream opens (about 48 bytes
/// each); a stream that falls further behind reads its job once instead.
pub const EVENTS_PER_JOB: usize = 16;

/// Streams reading their job again at the same time, at most: the rest wait
/// for a place.
pub const REREADS_AT_ONCE: usize = 16;

/// After the LISTEN connection reopened, each stream waits a random part of
/// this before it queues to read its job again, so the reads are spread out
/// instead of arriving together; unless there are no more streams than
/// [`REREADS_AT_ONCE`], which then read at once.
pub const RESYNC_SPREAD: Duration = Duration::from_millis(500);

/// Bound on the hub's own database calls when the pool carries no statement
/// timeout to derive one from.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What a stream receives.
#[derive(Debug, Clone)]
pub enum HubEvent {
    /// One change of the job or of a subtask.
    Change(Arc<Change>),
    /// Changes may have been missed (the LISTEN connection was re-opened,
    /// or this process's `watched_jobs` row had been deleted): read the job
    /// again.
    Resync,
}

/// Whether this process's row of a job is in `watched_jobs`. The lock
/// orders the row's insert and its delete: a stream that opens while the
/// job's last one closes waits for the delete, then inserts again.
type Registration = Arc<tokio::sync::Mutex<bool>>;

struct Entry {
    sender: broadcast::Sender<HubEvent>,
    watchers: usize,
    registration: Registration,
}

/// Registry of watched jobs. Cheap to clone.
#[derive(Clone)]
pub struct WatchHub {
    inner: Arc<Inner>,
}

struct Inner {
    /// The service's pool: `watched_jobs` and the re-reads.
    pool: PgPool,
    /// This process in `watched_jobs`.
    watcher: Uuid,
    jobs: Mutex<HashMap<Uuid, Entry>>,
    /// Streams open, all jobs together.
    streams: AtomicUsize,
    /// Jobs whose last stream closed, for [`WatchHub::release_closed`].
    closed: Mutex<Vec<Uuid>>,
    /// Wakes the hub's loop when `closed` gets a job.
    closed_wake: Wake,
    rereads: Semaphore,
}

/// A stream's handle; its job is released when the last one is dropped.
pub struct Subscription {
    hub: WatchHub,
    job_id: Uuid,
    pub events: broadcast::Receiver<HubEvent>,
}

impl WatchHub {
    /// A hub recording its jobs through `pool`, as a new watcher.
    pub fn new(pool: PgPool) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                watcher: Uuid::new_v4(),
                jobs: Mutex::new(HashMap::new()),
                streams: AtomicUsize::new(0),
                closed: Mutex::new(Vec::new()),
                closed_wake: Wake::new(),
                rereads: Semaphore::new(REREADS_AT_ONCE),
            }),
        }
    }

    /// This process's id in `watched_jobs`.
    pub fn watcher(&self) -> Uuid {
        self.inner.watcher
    }

    /// Opens a stream of a job: [`subscribe`](Self::subscribe), then reads
    /// the job, in that order, so that no change between the read and the
    /// subscription is missed (and one the read already holds is
    /// recognised by its transaction id and skipped). `NotFound` outside
    /// `scope`.
    pub async fn open(
        &self,
        job_id: Uuid,
        scope: &Scope,
    ) -> Result<(Subscription, Job, TxSnapshot), JobError> {
        let subscription = self.subscribe(job_id, scope).await?;
        let (job, snapshot) = jobs::read_job_with_snapshot(&self.inner.pool, job_id, scope).await?;
        Ok((subscription, job, snapshot))
    }

    /// Starts watching a job. Subscribe before reading the job's state. The
    /// first stream of the job in this process records it in
    /// `watched_jobs` (a job outside `scope` is not recorded; the read that
    /// follows finds it missing), and returns once the row is committed:
    /// from then on every change of the job is notified.
    pub async fn subscribe(&self, job_id: Uuid, scope: &Scope) -> Result<Subscription, JobError> {
        let (subscription, registration) = self.join(job_id);
        let mut registered = registration.lock().await;
        if !*registered {
            *registered =
                registry::register(&self.inner.pool, self.inner.watcher, job_id, scope.owner())
                    .await?;
        }
        Ok(subscription)
    }

    /// The in-memory half of [`subscribe`](Self::subscribe): a receiver of
    /// the job's channel, counted among its watchers.
    fn join(&self, job_id: Uuid) -> (Subscription, Registration) {
        let mut jobs = self.lock_jobs();
        let entry = jobs.entry(job_id).or_insert_with(|| Entry {
            sender: broadcast::channel(EVENTS_PER_JOB).0,
            watchers: 0,
            registration: Registration::default(),
        });
        entry.watchers += 1;
        self.inner.streams.fetch_add(1, Ordering::Relaxed);
        let subscription = Subscription {
            hub: self.clone(),
            job_id,
            events: entry.sender.subscribe(),
        };
        (subscription, entry.registration.clone())
    }

    /// Whether a stream of this process watches the job: the listener
    /// parses only the events of those.
    pub fn is_watched(&self, job_id: Uuid) -> bool {
        self.lock_jobs()
            .get(&job_id)
            .is_some_and(|entry| entry.watchers > 0)
    }

    /// Hands a change to the streams of its job, if any.
    pub fn publish(&self, change: Change) {
        let jobs = self.lock_jobs();
        if let Some(entry) = jobs.get(&change.job_id()) {
            let _ = entry.sender.send(HubEvent::Change(Arc::new(change)));
        }
    }

    /// Tells the streams of one job to read it again.
    pub fn resync(&self, job_id: Uuid) {
        let jobs = self.lock_jobs();
        if let Some(entry) = jobs.get(&job_id) {
            let _ = entry.sender.send(HubEvent::Resync);
        }
    }

    /// Tells every stream to read its job again.
    pub fn resync_all(&self) {
        let jobs = self.lock_jobs();
        for entry in jobs.values() {
            let _ = entry.sender.send(HubEvent::Resync);
        }
    }

    /// How many jobs are watched.
    pub fn watched_jobs(&self) -> usize {
        self.lock_jobs()
            .values()
            .filter(|entry| entry.watchers > 0)
            .count()
    }

    /// How many streams are open.
    pub fn open_streams(&self) -> usize {
        self.inner.streams.load(Ordering::Relaxed)
    }

    /// Reads a watched job again for one of its streams, when a place among
    /// [`REREADS_AT_ONCE`] is free, bounded in time. `staggered`: every
    /// stream was told to read again at once; when they are more than the
    /// places, first a random pause of up to [`RESYNC_SPREAD`].
    pub(super) async fn read_again(
        &self,
        job_id: Uuid,
        staggered: bool,
    ) -> Result<(Job, TxSnapshot), JobError> {
        if staggered && self.open_streams() > REREADS_AT_ONCE {
            tokio::time::sleep(RESYNC_SPREAD.mul_f64(fastrand::f64())).await;
        }
        let _place = self
            .inner
            .rereads
            .acquire()
            .await
            .expect("the semaphore is never closed");
        // The stream was opened inside the caller's scope, and a job's
        // owner never changes.
        bounded(
            self.call_timeout(),
            jobs::read_job_with_snapshot(&self.inner.pool, job_id, &Scope::All),
        )
        .await
    }

    /// One step of the hub's loop: deletes the `watched_jobs` rows of the
    /// jobs whose last stream closed (unless one opened again meanwhile)
    /// and forgets them. A row whose delete fails expires with its lease.
    /// Returns how many jobs were released.
    pub async fn release_closed(&self) -> usize {
        let closed = std::mem::take(
            &mut *self
                .inner
                .closed
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if closed.is_empty() {
            return 0;
        }
        let mut released: Vec<(Uuid, OwnedMutexGuard<bool>)> = Vec::new();
        let mut busy = Vec::new();
        {
            let jobs = self.lock_jobs();
            let mut seen = HashSet::new();
            for job_id in closed {
                if !seen.insert(job_id) {
                    continue;
                }
                let Some(entry) = jobs.get(&job_id) else {
                    continue;
                };
                if entry.watchers > 0 {
                    continue;
                }
                match entry.registration.clone().try_lock_owned() {
                    Ok(guard) => released.push((job_id, guard)),
                    // The heartbeat is registering it again: next time.
                    Err(_) => busy.push(job_id),
                }
            }
        }
        if !busy.is_empty() {
            self.inner
                .closed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(busy);
        }
        let registered: Vec<Uuid> = released
            .iter()
            .filter(|(_, registered)| **registered)
            .map(|(job_id, _)| *job_id)
            .collect();
        if !registered.is_empty() {
            let deleted = bounded(
                self.call_timeout(),
                registry::unregister(&self.inner.pool, self.inner.watcher, &registered),
            )
            .await;
            if let Err(error) = deleted {
                tracing::warn!(
                    error = %error_chain(&error),
                    jobs = registered.len(),
                    "cannot delete watched-job rows; they expire with their lease"
                );
            }
        }
        let count = released.len();
        let mut jobs = self.lock_jobs();
        for (job_id, mut registered) in released {
            *registered = false;
            if jobs.get(&job_id).is_some_and(|entry| {
                entry.watchers == 0
                    && Arc::ptr_eq(&entry.registration, OwnedMutexGuard::mutex(&registered))
            }) {
                jobs.remove(&job_id);
            }
        }
        count
    }

    /// One step of the hub's loop, every [`registry::HEARTBEAT`]: releases
    /// what closed, renews the lease of this process's rows, records again
    /// (and has their streams read again) the jobs whose row another process
    /// deleted as expired, and deletes the rows whose lease ran out.
    pub async fn heartbeat(&self) -> Result<(), sqlx::Error> {
        self.release_closed().await;
        let held = self.registered();
        if !held.is_empty() {
            let renewed: HashSet<Uuid> = bounded(
                self.call_timeout(),
                registry::renew(&self.inner.pool, self.inner.watcher, &held),
            )
            .await?
            .into_iter()
            .collect();
            let missing: Vec<Uuid> = held
                .into_iter()
                .filter(|job_id| !renewed.contains(job_id))
                .collect();
            if !missing.is_empty() {
                self.register_again(&missing).await?;
            }
        }
        bounded(self.call_timeout(), registry::expire_once(&self.inner.pool)).await?;
        Ok(())
    }

    /// Records again jobs whose row was found missing (deleted as expired:
    /// this process could not renew it in time), then has their streams
    /// read them, since changes may have gone unnotified meanwhile.
    async fn register_again(&self, missing: &[Uuid]) -> Result<(), sqlx::Error> {
        let mut guards: Vec<(Uuid, OwnedMutexGuard<bool>)> = Vec::new();
        {
            let jobs = self.lock_jobs();
            for job_id in missing {
                let Some(entry) = jobs.get(job_id) else {
                    continue;
                };
                if entry.watchers == 0 {
                    continue;
                }
                if let Ok(guard) = entry.registration.clone().try_lock_owned()
                    && *guard
                {
                    guards.push((*job_id, guard));
                }
            }
        }
        if guards.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = guards.iter().map(|(job_id, _)| *job_id).collect();
        let recorded: HashSet<Uuid> = bounded(
            self.call_timeout(),
            registry::register_again(&self.inner.pool, self.inner.watcher, &ids),
        )
        .await?
        .into_iter()
        .collect();
        for (job_id, registered) in &mut guards {
            // A job that is gone: its streams find it so when they read.
            **registered = recorded.contains(job_id);
        }
        drop(guards);
        tracing::warn!(
            jobs = ids.len(),
            "watched-job rows of this process had expired; recorded again, their streams read their jobs again"
        );
        for job_id in ids {
            self.resync(job_id);
        }
        Ok(())
    }

    /// Jobs with streams whose row this process recorded (and is not
    /// recording or deleting right now).
    fn registered(&self) -> Vec<Uuid> {
        self.lock_jobs()
            .iter()
            .filter(|(_, entry)| {
                entry.watchers > 0
                    && entry
                        .registration
                        .try_lock()
                        .is_ok_and(|registered| *registered)
            })
            .map(|(job_id, _)| *job_id)
            .collect()
    }

    /// The hub's loop: releases jobs as their last streams close, and beats
    /// every [`registry::HEARTBEAT`], until `token` is cancelled; then
    /// deletes every row of this process.
    pub async fn run(self, token: CancellationToken, beat: Beat) {
        let mut next = tokio::time::Instant::now();
        loop {
            beat.beat();
            tokio::select! {
                () = token.cancelled() => break,
                () = self.inner.closed_wake.woken() => {
                    self.release_closed().await;
                }
                () = tokio::time::sleep_until(next) => {
                    if let Err(error) = self.heartbeat().await {
                        tracing::warn!(error = %error_chain(&error), "cannot renew the watched-job rows; retrying");
                    }
                    next = tokio::time::Instant::now() + registry::HEARTBEAT;
                }
            }
        }
        let released = bounded(
            self.call_timeout(),
            registry::unregister_all(&self.inner.pool, self.inner.watcher),
        )
        .await;
        if let Err(error) = released {
            tracing::warn!(error = %error_chain(&error), "cannot delete this process's watched-job rows; they expire with their lease");
        }
    }

    fn call_timeout(&self) -> Duration {
        call_timeout_of(&self.inner.pool).unwrap_or(CALL_TIMEOUT)
    }

    fn lock_jobs(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Subscription {
    /// The hub the stream belongs to.
    pub(super) fn hub(&self) -> &WatchHub {
        &self.hub
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.inner.streams.fetch_sub(1, Ordering::Relaxed);
        let mut jobs = self.hub.lock_jobs();
        if let Some(entry) = jobs.get_mut(&self.job_id) {
            entry.watchers = entry.watchers.saturating_sub(1);
            if entry.watchers == 0 {
                drop(jobs);
                self.hub
                    .inner
                    .closed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(self.job_id);
                self.hub.inner.closed_wake.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

    use super::*;
    use crate::watch::event::JobChange;

    /// A hub whose pool never connects: these tests stay in memory.
    fn hub() -> WatchHub {
        WatchHub::new(PgPoolOptions::new().connect_lazy_with(PgConnectOptions::new()))
    }

    fn change(job_id: Uuid, attempts: i32) -> Change {
        Change::Job(JobChange {
            job_id,
            xid: 1,
            status: "PENDING".into(),
            attempts,
            error: None,
            reread: false,
            updated_at: 0,
        })
    }

    #[tokio::test]
    async fn every_change_reaches_every_watcher_of_that_job_only_in_order() {
        let hub = hub();
        let job = Uuid::new_v4();
        let other = Uuid::new_v4();
        let (mut first, _) = hub.join(job);
        let (mut second, _) = hub.join(job);
        let (mut elsewhere, _) = hub.join(other);
        for attempts in 0..3 {
            hub.publish(change(job, attempts));
        }
        for subscription in [&mut first, &mut second] {
            for attempts in 0..3 {
                match subscription.events.recv().await.unwrap() {
                    HubEvent::Change(c) => assert_eq!(*c, change(job, attempts)),
                    HubEvent::Resync => panic!("a change"),
                }
            }
        }
        assert!(elsewhere.events.try_recv().is_err());
        hub.resync_all();
        assert!(matches!(
            elsewhere.events.recv().await,
            Ok(HubEvent::Resync)
        ));
        assert_eq!(hub.open_streams(), 3);
        assert!(hub.is_watched(job));
        assert!(!hub.is_watched(Uuid::new_v4()));
    }

    #[tokio::test]
    async fn the_last_watcher_leaving_releases_the_job() {
        let hub = hub();
        let job = Uuid::new_v4();
        let (first, _) = hub.join(job);
        let (second, _) = hub.join(job);
        assert_eq!(hub.watched_jobs(), 1);
        drop(first);
        assert_eq!(hub.release_closed().await, 0);
        assert_eq!(hub.watched_jobs(), 1);
        drop(second);
        assert!(!hub.is_watched(job));
        assert_eq!(hub.watched_jobs(), 0);
        // Never recorded in watched_jobs, so nothing to delete there.
        assert_eq!(hub.release_closed().await, 1);
        assert!(hub.lock_jobs().is_empty());
    }

    #[tokio::test]
    async fn a_stream_that_opens_while_the_last_one_closes_keeps_the_job() {
        let hub = hub();
        let job = Uuid::new_v4();
        let (first, _) = hub.join(job);
        drop(first);
        let (_again, _) = hub.join(job);
        assert_eq!(hub.release_closed().await, 0);
        assert!(hub.is_watched(job));
        assert_eq!(hub.lock_jobs().len(), 1);
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_told_so() {
        let hub = hub();
        let job = Uuid::new_v4();
        let (mut slow, _) = hub.join(job);
        for attempts in 0..(EVENTS_PER_JOB as i32 + 10) {
            hub.publish(change(job, attempts));
        }
        assert!(matches!(
            slow.events.recv().await,
            Err(broadcast::error::RecvError::Lagged(10))
        ));
    }
}
