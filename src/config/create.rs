//! What a create may hold and how creates reach the database: subtasks per
//! job, jobs per batch, the grouping of concurrent creates into commits
//! (`CREATE_GROUP_*`), and the backlog above which creates are refused
//! (`QUEUE_MAX_BACKLOG`).

use std::time::Duration;

use super::{ConfigError, parse::number};
use crate::jobs::GroupCommitSettings;

pub const DEFAULT_MAX_SUBTASKS_PER_JOB: usize = 1000;
/// Most jobs in one BatchCreateTranslationJobs call.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 100;
/// Most concurrent creates stored by one statement and one commit.
pub const DEFAULT_CREATE_GROUP_MAX_JOBS: usize = 64;
/// Group commits running at once; more callers wait for the next group.
pub const DEFAULT_CREATE_GROUP_COMMITS: usize = 2;
/// Waiting jobs (Redis lanes plus outbox) above which creates are refused;
/// the old service's figure. 0 turns backpressure off.
pub const DEFAULT_QUEUE_MAX_BACKLOG: u64 = 1000;

/// `MAX_SUBTASKS_PER_JOB`.
pub(super) fn max_subtasks_per_job(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<usize, ConfigError> {
    number(
        get,
        "MAX_SUBTASKS_PER_JOB",
        DEFAULT_MAX_SUBTASKS_PER_JOB,
        1,
        100_000,
    )
}

/// `MAX_BATCH_SIZE`.
pub(super) fn max_batch_size(get: &impl Fn(&str) -> Option<String>) -> Result<usize, ConfigError> {
    number(get, "MAX_BATCH_SIZE", DEFAULT_MAX_BATCH_SIZE, 1, 10_000)
}

/// `CREATE_GROUP_MAX_JOBS` and `CREATE_GROUP_COMMITS`, with the database's
/// time limits.
pub(super) fn create_group(
    get: &impl Fn(&str) -> Option<String>,
    acquire_timeout: Duration,
    call_timeout: Duration,
) -> Result<GroupCommitSettings, ConfigError> {
    Ok(GroupCommitSettings {
        max_jobs: number(
            get,
            "CREATE_GROUP_MAX_JOBS",
            DEFAULT_CREATE_GROUP_MAX_JOBS,
            1,
            10_000,
        )?,
        max_in_flight: number(
            get,
            "CREATE_GROUP_COMMITS",
            DEFAULT_CREATE_GROUP_COMMITS,
            1,
            1000,
        )?,
        acquire_timeout,
        call_timeout,
    })
}

/// `QUEUE_MAX_BACKLOG` (0: no backpressure).
pub(super) fn queue_max_backlog(get: &impl Fn(&str) -> Option<String>) -> Result<u64, ConfigError> {
    number(
        get,
        "QUEUE_MAX_BACKLOG",
        DEFAULT_QUEUE_MAX_BACKLOG,
        0,
        u64::MAX,
    )
}
