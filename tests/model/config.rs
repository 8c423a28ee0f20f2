//! What the model is allowed to do: the fixes of issue 16 it includes, and
//! the bounds that keep the state space finite.

/// One switch per fix of issue 16; `Fixes::ALL` is the protocol as it is
/// meant to be, and turning one off must let the checker find the hole the
/// fix closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fixes {
    /// 1: the worker's subtask statements check the job's attempt copied
    /// onto the subtask row (`job_attempt = $a`), which PostgreSQL re-checks
    /// after a lock wait, instead of an `EXISTS` over the job row, which it
    /// answers from the statement's snapshot.
    pub guard_on_updated_row: bool,
    /// 3: a push that finds the lane's counter below the highest position
    /// PostgreSQL recorded in this generation (Redis lost writes) pushes
    /// nothing; the relay first queues the jobs above the counter again, so
    /// no later push reuses their positions.
    pub rollback_detection: bool,
    /// 4: a push-once marker outlives every retry of its row (it can expire
    /// only once its row has been committed).
    pub marker_outlives_retries: bool,
    /// 6: a popped, unclaimed message is judged from the time a reaper pass
    /// first saw it popped, not from the time it was published.
    pub judge_pop_from_pop_time: bool,
    /// 7: a new generation rebuilds the dead lane from PostgreSQL's record
    /// of the dead-lettered jobs.
    pub dead_lane_rebuilt: bool,
}

impl Fixes {
    pub const ALL: Fixes = Fixes {
        guard_on_updated_row: true,
        rollback_detection: true,
        marker_outlives_retries: true,
        judge_pop_from_pop_time: true,
        dead_lane_rebuilt: true,
    };
}

/// How many of each actor and fault the checker explores. Every fault is
/// a budget that each occurrence spends, so the state space is finite.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub jobs: usize,
    pub workers: usize,
    pub relays: usize,
    /// The reaper's `MAX_JOB_ATTEMPTS`: rescues before a dead letter.
    pub max_rescues: u8,
    /// States whose job reached this attempt are not expanded further.
    pub max_attempt: u8,
    pub relay_crashes: u8,
    /// Failovers to an asynchronous replica that missed the last writes.
    pub failovers: u8,
    /// Redis restarting empty (no persistence, `FLUSHALL`, empty replica).
    pub data_losses: u8,
    pub marker_expiries: u8,
    /// Workers dying (and coming back empty-handed).
    pub worker_deaths: u8,
    /// Workers failing a subtask (and then the job).
    pub worker_failures: u8,
    pub cancels: u8,
    pub retries: u8,
    pub redrives: u8,
}

impl Bounds {
    /// Nothing goes wrong: the base every check adds its faults to.
    pub const CALM: Bounds = Bounds {
        jobs: 1,
        workers: 2,
        relays: 2,
        max_rescues: 1,
        max_attempt: 3,
        relay_crashes: 0,
        failovers: 0,
        data_losses: 0,
        marker_expiries: 0,
        worker_deaths: 0,
        worker_failures: 0,
        cancels: 0,
        retries: 0,
        redrives: 0,
    };
}
