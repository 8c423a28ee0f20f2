//! Failed attempts and schedules: `JOB_MAX_ATTEMPTS`, the backoff between
//! attempts (`RETRY_BACKOFF_*`) and how far ahead a job may be scheduled
//! (`MAX_SCHEDULE_AHEAD`).

use std::time::Duration;

use super::{
    ConfigError,
    parse::{duration, number},
};
use crate::api::convert::MAX_MAX_ATTEMPTS;
pub use crate::api::convert::{DEFAULT_JOB_MAX_ATTEMPTS, DEFAULT_MAX_SCHEDULE_AHEAD};

pub const DEFAULT_RETRY_BACKOFF_BASE: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// How failed attempts are retried, and how far ahead jobs may be scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySettings {
    /// `JOB_MAX_ATTEMPTS`: a job's `max_attempts` when its create request
    /// has none.
    pub default_max_attempts: i32,
    /// `RETRY_BACKOFF_BASE`: the wait after a job's first failure; it
    /// doubles with each failure after that.
    pub backoff_base: Duration,
    /// `RETRY_BACKOFF_MAX`: the longest wait.
    pub backoff_max: Duration,
    /// `MAX_SCHEDULE_AHEAD`: the furthest `schedule_time` accepted.
    pub max_schedule_ahead: Duration,
}

/// `JOB_MAX_ATTEMPTS`, `RETRY_BACKOFF_BASE`, `RETRY_BACKOFF_MAX`,
/// `MAX_SCHEDULE_AHEAD`; the retired `MAX_JOB_ATTEMPTS` is refused, naming
/// its replacement.
pub(super) fn retry_settings(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<RetrySettings, ConfigError> {
    if get("MAX_JOB_ATTEMPTS").is_some() {
        return Err(ConfigError::new(
            "MAX_JOB_ATTEMPTS",
            "is replaced by JOB_MAX_ATTEMPTS, one budget for a job's failed attempts: a worker's \
             FAILED and a rescue of the job found stuck both count (MAX_JOB_ATTEMPTS counted \
             rescues only, default 3). Set JOB_MAX_ATTEMPTS (default 1: a failure is final) \
             and remove MAX_JOB_ATTEMPTS",
        ));
    }
    let backoff_base = duration(get, "RETRY_BACKOFF_BASE", DEFAULT_RETRY_BACKOFF_BASE)?;
    let backoff_max = duration(get, "RETRY_BACKOFF_MAX", DEFAULT_RETRY_BACKOFF_MAX)?;
    if backoff_max < backoff_base {
        return Err(ConfigError::new(
            "RETRY_BACKOFF_MAX",
            format!(
                "must not be below RETRY_BACKOFF_BASE ({})",
                humantime::format_duration(backoff_base)
            ),
        ));
    }
    Ok(RetrySettings {
        default_max_attempts: number(
            get,
            "JOB_MAX_ATTEMPTS",
            DEFAULT_JOB_MAX_ATTEMPTS,
            1,
            MAX_MAX_ATTEMPTS,
        )?,
        backoff_base,
        backoff_max,
        max_schedule_ahead: duration(get, "MAX_SCHEDULE_AHEAD", DEFAULT_MAX_SCHEDULE_AHEAD)?,
    })
}
