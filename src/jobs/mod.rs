//! The domain: what a job is, the statement that creates one (and the group
//! commit that stores concurrent creates together), the status changes
//! callers and the reaper make, the queries that read jobs back, and the
//! deletion of finished jobs once they are old enough. Writes
//! outbox rows in the same transactions; publishing them is the `outbox`
//! module's business.

mod create;
mod dead_letters;
mod due;
mod error;
pub mod fields;
mod get;
mod group_commit;
mod list;
mod model;
mod redrive;
mod requeue;
mod rescue;
mod retention;
mod scope;
mod subtags;
mod transitions;

pub use create::{Created, create_job, create_jobs};
pub use dead_letters::expired_dead_letters;
pub use due::{Promoted, next_due_in, promote_due, write_retry_settings};
pub use error::JobError;
pub use get::{TxSnapshot, get_job, get_job_basic, read_job_with_snapshot};
pub use group_commit::{Collector, GroupCommit, GroupCommitSettings};
pub use list::{ListQuery, MAX_SUBTASKS_PER_PAGE, Page, list_jobs, list_jobs_within};
pub use model::{Job, JobStatus, NewJob, Priority, StoredStatus, Subtask};
pub use redrive::{
    DEFAULT_REDRIVE_LIMIT, MAX_REDRIVE_LIMIT, RedriveError, Redriven, finish_interrupted_redrive,
    redrive_dead_letters, redrive_limit, restore_lost_dead_letters,
};
pub use rescue::{
    LostCandidate, LostSweep, RescuePolicy, Rescued, RolledBack, StuckBatch, lost_candidates,
    lost_sweep_window, move_lost_sweep, note_popped, requeue_lost, requeue_rolled_back,
    rescue_stuck_batch, rescue_stuck_jobs, take_lost_sweep,
};
pub use retention::{PruneBatch, RetentionPolicy, cutoff, first_id_at, prune_batch};
pub use scope::{JobView, Scope, SubtaskCounts};
pub use transitions::{cancel_job, retry_job};
