//! The state of the abstract system: PostgreSQL's rows, Redis's keys, what
//! each relay and worker holds, the fault budgets left, and a few history
//! variables the properties read.

use crate::config::Bounds;

/// A job's (or a subtask's) `status` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Pending,
    InProgress,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
}

/// A message: the job and the attempt it was queued for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Msg {
    pub job: u8,
    pub attempt: u8,
}

/// Where an outbox row goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    Work,
    Dead,
}

/// An outbox row. Its id doubles as its token: the model does not rewind
/// the identity sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OutboxRow {
    pub id: u8,
    pub msg: Msg,
    pub lane: Lane,
    /// The relay whose open transaction holds the row (`FOR UPDATE`).
    pub claimed_by: Option<u8>,
}

/// How long ago a reaper pass first saw a message popped and unclaimed
/// (fix 6), in units of `STUCK_JOB_TIMEOUT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Seen {
    Never,
    Recently,
    LongAgo,
}

/// A row of `job_publications`: where the latest message of a job went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Publication {
    pub attempt: u8,
    pub seq: u8,
    pub generation: u8,
    /// Published longer than `STUCK_JOB_TIMEOUT` ago.
    pub overdue: bool,
    pub seen_popped: Seen,
}

/// The one subtask each job has in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subtask {
    pub status: Status,
    /// The job's attempt copied at every hand-out, -1 after a cancel or a
    /// dead letter (fix 1's guard column).
    pub job_attempt: i8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Job {
    pub created: bool,
    pub status: Status,
    pub attempts: u8,
    pub rescues: u8,
    /// FAILED by the reaper, its message sent to the dead lane.
    pub dead_lettered: bool,
    /// No update for longer than `STUCK_JOB_TIMEOUT` (no heartbeat).
    pub quiet: bool,
    pub subtask: Subtask,
    pub publication: Option<Publication>,
}

impl Job {
    pub const UNBORN: Job = Job {
        created: false,
        status: Status::Pending,
        attempts: 0,
        rescues: 0,
        dead_lettered: false,
        quiet: false,
        subtask: Subtask {
            status: Status::Pending,
            job_attempt: 0,
        },
        publication: None,
    };
}

/// Redis: one work lane, the dead lane, the state hash (generation and
/// the lane's push counter) and the push-once markers (a bit per outbox id).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Redis {
    pub generation: Option<u8>,
    pub pushed: u8,
    pub lane: Vec<Msg>,
    pub dead: Vec<Msg>,
    pub markers: u32,
}

impl Redis {
    /// How many messages workers popped off the lane: `pushed - LLEN`.
    pub fn popped(&self) -> u8 {
        self.pushed.saturating_sub(self.lane.len() as u8)
    }
}

/// A relay's open round: the rows it claimed, and once pushed, the
/// position each got.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Relay {
    pub claimed: Vec<u8>,
    /// (outbox id, position) for each claimed row, once pushed.
    pub pushed: Option<Vec<(u8, u8)>>,
    /// The generation the push went to (what the commit records).
    pub generation: u8,
}

/// A statement of the worker contract after the claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stmt {
    /// `SET status = 'IN_PROGRESS'` on the subtask.
    Start,
    /// `SET status = 'COMPLETED' WHERE status = 'IN_PROGRESS'`.
    Complete,
    /// `SET status = 'FAILED' WHERE status = 'IN_PROGRESS'`.
    Fail,
}

/// Where a worker is in its loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Worker {
    Idle,
    /// Popped, not claimed yet.
    Holding(Msg),
    /// Claimed `msg.attempt`; `next` is the statement it runs next (`None`:
    /// finish the job), `failed` whether its subtask failed.
    Working {
        msg: Msg,
        next: Option<Stmt>,
        failed: bool,
    },
    /// Inside a statement: its snapshot was taken and answered the
    /// `EXISTS` guard with `snapshot_ok`; the row is not updated yet
    /// (the statement may be waiting for a lock).
    Waiting {
        msg: Msg,
        stmt: Stmt,
        snapshot_ok: bool,
    },
}

/// Faults and caller actions left to spend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Budget {
    pub relay_crashes: u8,
    pub failovers: u8,
    pub data_losses: u8,
    pub marker_expiries: u8,
    pub worker_deaths: u8,
    pub worker_failures: u8,
    pub cancels: u8,
    pub retries: u8,
    pub redrives: u8,
}

/// History the properties need and the rows do not keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Ghost {
    /// A worker's write counted although its attempt was no longer the
    /// job's current `IN_PROGRESS` attempt.
    pub stale_write: bool,
    /// Two claims of the same attempt succeeded.
    pub double_claim: bool,
    /// The reaper re-queued, as popped and never claimed, a message a live
    /// worker held.
    pub requeued_from_live_worker: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub jobs: Vec<Job>,
    pub outbox: Vec<OutboxRow>,
    pub next_outbox_id: u8,
    /// `queue_generations`: the generation PostgreSQL knows.
    pub generation: u8,
    pub redis: Redis,
    /// What an asynchronous replica holds when it lags behind the master
    /// (`None`: caught up). A failover makes it the master.
    pub replica: Option<Redis>,
    pub relays: Vec<Relay>,
    pub workers: Vec<Worker>,
    /// Attempts claimed so far, a bit per attempt, per job (for
    /// `Ghost::double_claim`).
    pub claims: Vec<u16>,
    pub budget: Budget,
    pub ghost: Ghost,
}

impl State {
    pub fn initial(bounds: &Bounds) -> State {
        State {
            jobs: vec![Job::UNBORN; bounds.jobs],
            outbox: Vec::new(),
            next_outbox_id: 0,
            generation: 1,
            redis: Redis {
                generation: Some(1),
                ..Redis::default()
            },
            replica: None,
            relays: vec![Relay::default(); bounds.relays],
            workers: vec![Worker::Idle; bounds.workers],
            claims: vec![0; bounds.jobs],
            budget: Budget {
                relay_crashes: bounds.relay_crashes,
                failovers: bounds.failovers,
                data_losses: bounds.data_losses,
                marker_expiries: bounds.marker_expiries,
                worker_deaths: bounds.worker_deaths,
                worker_failures: bounds.worker_failures,
                cancels: bounds.cancels,
                retries: bounds.retries,
                redrives: bounds.redrives,
            },
            ghost: Ghost::default(),
        }
    }

    /// The current attempt's message is somewhere it will reach a worker
    /// from: an outbox row, the work lane (of the generation PostgreSQL
    /// knows), or a worker's hand.
    pub fn has_live_message(&self, job: u8) -> bool {
        let current = Msg {
            job,
            attempt: self.jobs[job as usize].attempts,
        };
        self.outbox
            .iter()
            .any(|row| row.lane == Lane::Work && row.msg == current)
            || (self.redis.generation == Some(self.generation)
                && self.redis.lane.contains(&current))
            || self.workers.contains(&Worker::Holding(current))
    }

    /// A dead-lettered job's message waits in the dead lane (or on its way
    /// there), where `RedriveDeadLetters` finds it.
    pub fn has_dead_letter(&self, job: u8) -> bool {
        let current = Msg {
            job,
            attempt: self.jobs[job as usize].attempts,
        };
        self.outbox
            .iter()
            .any(|row| row.lane == Lane::Dead && row.msg == current)
            || (self.redis.generation == Some(self.generation)
                && self.redis.dead.contains(&current))
    }
}
