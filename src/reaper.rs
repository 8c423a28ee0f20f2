//! The reaper: every `REAPER_INTERVAL` it hands out again the jobs nobody
//! works on, in two parts that run independently of each other: jobs stuck
//! IN_PROGRESS (see `jobs::rescue_stuck_batch`), and PENDING jobs whose
//! message is gone (see `jobs::lost_candidates` and
//! `jobs::requeue_rolled_back`; this part also runs at once when the relay
//! finds that Redis lost data), with the dead letters Redis lost (see
//! `jobs::restore_lost_dead_letters`). Then it wakes the relay to publish
//! them. Neither part waits for a row another transaction holds.
//!
//! The search for lost messages never reads every PENDING job: each pass
//! looks at the PENDING jobs in id order from where the last pass (of any
//! replica) stopped, a batch at a time, and stops after
//! `ReaperSettings::lost_scan` jobs that needed nothing (jobs it hands out
//! again do not count: after Redis lost its data every batch is work), or
//! at the last PENDING job, from where the next pass starts over. One
//! replica searches at a time (see `jobs::take_lost_sweep`). By default a
//! pass is one transaction of 500 jobs (`REAPER_LOST_SCAN`), so that no pass
//! holds the search long; while the search has not reached the last PENDING
//! job, the next pass comes after a tenth of the interval
//! (`LOST_PASSES_PER_INTERVAL`), so that the search still looks at 5,000
//! jobs per interval, and a lost message among a million PENDING jobs is
//! found within 200 intervals at most.

use std::{
    collections::HashSet,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

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

/// Passes of the search for lost messages per `ReaperSettings::interval`
/// while the search has not reached the last PENDING job (one per interval
/// once it has).
pub const LOST_PASSES_PER_INTERVAL: u32 = 10;

/// Settings of the reaper.
#[derive(Debug, Clone, Copy)]
pub struct ReaperSettings {
    pub interval: Duration,
    pub policy: RescuePolicy,
    /// PENDING jobs one pass of the lost-message search may look at without
    /// handing them out again, before it stops until the next pass.
    pub lost_scan: usize,
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

/// What one batch of the search for lost messages did.
struct Searched {
    /// PENDING jobs it looked at.
    looked_at: usize,
    /// Those it handed out again.
    lost: Vec<uuid::Uuid>,
    /// The pass ends here: the search reached the last PENDING job, another
    /// replica is searching, or Redis's generation changed meanwhile.
    stop: bool,
}

impl Searched {
    fn stopped() -> Self {
        Self {
            looked_at: 0,
            lost: Vec::new(),
            stop: true,
        }
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
    /// Stuck jobs the last pass skipped (held by another transaction), so
    /// that each is logged once while it stays held.
    held: Mutex<HashSet<uuid::Uuid>>,
    /// The generation whose lost dead letters this reaper has restored (0:
    /// none yet, so the first pass after start looks).
    dead_letters_of: AtomicI64,
    /// The last pass of the search for lost messages stopped before the last
    /// PENDING job: the next one comes sooner.
    search_goes_on: AtomicBool,
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
            held: Mutex::new(HashSet::new()),
            dead_letters_of: AtomicI64::new(0),
            search_goes_on: AtomicBool::new(false),
        }
    }

    /// Counts what this reaper hands out in `metrics` (the app's; by default
    /// a registry nobody reads).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// One pass of both parts, stuck jobs and lost messages, run side by side:
    /// each runs to its end whatever the other does (neither waits for a
    /// lock another transaction holds, and a failure of one does not stop
    /// the other). Returns everything handed out again, or the first error
    /// once both ended (what the other part did is committed and counted
    /// all the same).
    pub async fn reap_once(&self) -> Result<Rescued, ReaperError> {
        let (stuck, lost) = tokio::join!(self.reap_stuck_once(), self.reap_lost_once());
        let mut all = stuck?;
        all.extend(lost?);
        Ok(all)
    }

    /// Stuck jobs, batch after batch until a batch comes back short. A job
    /// whose rows another transaction holds is skipped for this pass (and
    /// logged once per pass; again at debug level while it stays held).
    pub async fn reap_stuck_once(&self) -> Result<Rescued, ReaperError> {
        let full = usize::try_from(self.settings.policy.batch_size).unwrap_or(usize::MAX);
        let mut all = Rescued::default();
        let mut passed_over: Vec<uuid::Uuid> = Vec::new();
        let outcome = loop {
            let batch = match bounded(
                self.settings.call_timeout,
                jobs::rescue_stuck_batch(&self.pool, self.settings.policy, &passed_over),
            )
            .await
            {
                Ok(batch) => batch,
                Err(error) => break Err(error.into()),
            };
            self.handed_out(&batch.rescued);
            all.extend(batch.rescued);
            passed_over.extend(batch.skipped);
            if batch.candidates < full {
                break Ok(());
            }
        };
        self.log_skipped(passed_over);
        outcome.map(|()| all)
    }

    /// Logs each stuck job this pass skipped: at WARN the first pass it is
    /// held, at DEBUG while it stays held.
    fn log_skipped(&self, skipped: Vec<uuid::Uuid>) {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for job_id in &skipped {
            if held.contains(job_id) {
                tracing::debug!(%job_id, "stuck job still held by another transaction; skipped again");
            } else {
                tracing::warn!(
                    %job_id,
                    "stuck job skipped this pass: another transaction holds its row or a subtask's"
                );
            }
        }
        *held = skipped.into_iter().collect();
    }

    /// Lost messages: dead letters Redis lost (once per generation), jobs
    /// whose messages a Redis failover dropped (as the relay found), then
    /// batch after batch of PENDING jobs whose message is gone, until a
    /// batch comes back short. Each of the three runs even when one before
    /// it failed; the first error is returned at the end. Nothing while
    /// Redis is unreachable.
    pub async fn reap_lost_once(&self) -> Result<Rescued, ReaperError> {
        if !self.queue.is_connected() {
            return Ok(Rescued::default());
        }
        let limit = self.settings.call_timeout;
        let owner = self
            .owner
            .get_or_try_init(|| generation::database_identity(&self.pool, limit))
            .await?;
        let synced = generation::sync(&self.pool, &self.queue, owner, limit).await?;
        let mut all = Rescued::default();
        let restored = self.restore_dead_letters(synced.generation).await;
        let rolled_back = self.requeue_rolled_back(synced.generation, &mut all).await;
        let lost = self.requeue_lost(&mut all).await;
        restored.and(rolled_back).and(lost).map(|()| all)
    }

    /// The rollbacks the relay found, each until done (or until only jobs
    /// another transaction holds are left), oldest first.
    async fn requeue_rolled_back(
        &self,
        generation: i64,
        all: &mut Rescued,
    ) -> Result<(), ReaperError> {
        let mut after = 0;
        loop {
            let found = bounded(
                self.settings.call_timeout,
                jobs::requeue_rolled_back(
                    &self.pool,
                    self.queue.queue().as_str(),
                    generation,
                    self.settings.policy.batch_size,
                    after,
                ),
            )
            .await?;
            let Some(rolled_back) = found else {
                return Ok(());
            };
            if !rolled_back.more {
                after = rolled_back.id;
            }
            let batch = Rescued {
                republished: rolled_back.job_ids,
                ..Rescued::default()
            };
            self.handed_out(&batch);
            all.extend(batch);
        }
    }

    /// PENDING jobs whose message is gone, judged by Redis's counters and
    /// lengths, batch after batch of the search (see the module's doc)
    /// until it has looked at `lost_scan` jobs that needed nothing, reached
    /// the last PENDING job, or found another replica searching.
    async fn requeue_lost(&self, all: &mut Rescued) -> Result<(), ReaperError> {
        let mut idle = 0usize;
        self.search_goes_on.store(false, Ordering::Release);
        loop {
            let started = std::time::Instant::now();
            let searched = self.requeue_lost_once().await;
            self.metrics.reaper_pass("lost_batch", started.elapsed());
            let searched = searched?;
            idle += searched.looked_at - searched.lost.len();
            let batch = Rescued {
                republished: searched.lost,
                ..Rescued::default()
            };
            self.handed_out(&batch);
            all.extend(batch);
            if searched.stop {
                return Ok(());
            }
            if idle >= self.settings.lost_scan {
                self.search_goes_on.store(true, Ordering::Release);
                return Ok(());
            }
        }
    }

    /// Once per generation (and once after the process starts): queues
    /// again, for the dead lane, the dead letters pushed under an older
    /// generation, which Redis lost with its data.
    async fn restore_dead_letters(&self, generation: i64) -> Result<(), ReaperError> {
        if self.dead_letters_of.load(Ordering::Acquire) == generation {
            return Ok(());
        }
        let mut restored = 0;
        loop {
            let batch = bounded(
                self.settings.call_timeout,
                jobs::restore_lost_dead_letters(
                    &self.pool,
                    generation,
                    self.settings.policy.batch_size,
                ),
            )
            .await?;
            restored += batch.len();
            if !batch.is_empty() {
                self.relay.wake();
            }
            if batch.len() < usize::try_from(self.settings.policy.batch_size).unwrap_or(usize::MAX)
            {
                break;
            }
        }
        if restored > 0 {
            tracing::warn!(
                restored,
                generation,
                "dead letters lost with Redis's data are queued for the dead lane again"
            );
        }
        self.dead_letters_of.store(generation, Ordering::Release);
        Ok(())
    }

    /// One batch of the search for lost messages: settle the generation,
    /// read Redis, take the search's place, note the messages of the next
    /// window of PENDING jobs seen popped, find candidates among them, read
    /// Redis again to confirm, hand the lost ones out again, move the place
    /// on; all but the reads of Redis in one transaction.
    async fn requeue_lost_once(&self) -> Result<Searched, ReaperError> {
        let limit = self.settings.call_timeout;
        let owner = self
            .owner
            .get_or_try_init(|| generation::database_identity(&self.pool, limit))
            .await?;
        let synced = generation::sync(&self.pool, &self.queue, owner, limit).await?;
        let before = self.queue.snapshot().await?;
        if before.generation != Some(synced.generation) {
            // Changed since: the next pass settles it.
            return Ok(Searched::stopped());
        }
        let queue = self.queue.queue().as_str();
        let mut tx = bounded(limit, self.pool.begin()).await?;
        let Some(sweep) = bounded(limit, jobs::take_lost_sweep(&mut tx, queue)).await? else {
            // Another replica is searching.
            return Ok(Searched::stopped());
        };
        let batch = self.settings.policy.batch_size;
        let window = bounded(limit, jobs::lost_sweep_window(&mut tx, sweep, batch)).await?;
        let at_end = i64::try_from(window.len()).unwrap_or(i64::MAX) < batch;
        let next = if at_end { None } else { window.last().copied() };
        bounded(
            limit,
            jobs::note_popped(&mut tx, &window, synced.generation, &before),
        )
        .await?;
        let candidates = bounded(
            limit,
            jobs::lost_candidates(
                &mut tx,
                &window,
                synced.generation,
                &before,
                self.settings.policy,
            ),
        )
        .await?;
        let mut lost = Vec::new();
        if !candidates.is_empty() {
            let after = self.queue.snapshot().await?;
            if after.generation != Some(synced.generation) {
                return Ok(Searched::stopped());
            }
            lost = candidates
                .iter()
                .filter(|candidate| candidate.is_lost(synced.generation, &after))
                .map(|candidate| candidate.job_id)
                .collect();
            bounded(limit, jobs::requeue_lost(&mut tx, &lost)).await?;
        }
        bounded(limit, jobs::move_lost_sweep(&mut tx, queue, next)).await?;
        bounded(limit, tx.commit()).await?;
        Ok(Searched {
            looked_at: window.len(),
            lost,
            stop: at_end,
        })
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

    /// Runs until `token` is cancelled: each part, stuck jobs and lost
    /// messages, in a loop of its own, a pass every interval; the lost-message
    /// part also at once when `lost_data` is woken. A part that waits or
    /// fails delays only its own next pass.
    pub async fn run(self, token: CancellationToken, lost_data: Wake, beat: Beat) {
        tracing::info!(
            interval = ?self.settings.interval,
            stuck_after = ?self.settings.policy.stuck_after,
            "reaper started"
        );
        let interval = self.settings.interval;
        let sooner = interval / LOST_PASSES_PER_INTERVAL;
        let stuck = self.run_part(
            &token,
            None,
            &beat,
            Part::STUCK,
            || interval,
            || self.reap_stuck_once(),
        );
        let lost = self.run_part(
            &token,
            Some(&lost_data),
            &beat,
            Part::LOST,
            || {
                if self.search_goes_on.load(Ordering::Acquire) {
                    sooner
                } else {
                    interval
                }
            },
            || self.reap_lost_once(),
        );
        tokio::join!(stuck, lost);
        tracing::info!("reaper stopped");
    }

    /// One part's loop: waits `wait()` (or until `woken_by`), runs `pass`,
    /// times and logs it.
    async fn run_part<'a, F, P, W>(
        &'a self,
        token: &CancellationToken,
        woken_by: Option<&Wake>,
        beat: &Beat,
        part: Part,
        wait: W,
        pass: P,
    ) where
        W: Fn() -> Duration,
        P: Fn() -> F,
        F: Future<Output = Result<Rescued, ReaperError>> + 'a,
    {
        loop {
            beat.beat();
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(wait()) => {}
                () = async {
                    match woken_by {
                        Some(wake) => wake.woken().await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
            beat.beat();
            let started = std::time::Instant::now();
            let outcome = pass().await;
            self.metrics.reaper_pass(part.label, started.elapsed());
            let part = part.name;
            match outcome {
                Ok(rescued) if !rescued.is_empty() => {
                    tracing::info!(
                        part,
                        requeued = rescued.requeued.len(),
                        dead = rescued.dead.len(),
                        republished = rescued.republished.len(),
                        "reaper handed out jobs again"
                    );
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(part, error = %error_chain(&error), "reaper pass failed");
                }
            }
        }
    }
}

/// One of the reaper's two loops: its name in the log and its label in
/// `translation_reaper_pass_duration_seconds`.
#[derive(Debug, Clone, Copy)]
struct Part {
    name: &'static str,
    label: &'static str,
}

impl Part {
    const STUCK: Part = Part {
        name: "stuck jobs",
        label: "stuck",
    };
    const LOST: Part = Part {
        name: "lost messages",
        label: "lost",
    };
}
