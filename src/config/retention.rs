//! Deleting what is finished: finished jobs past their status's retention
//! (`RETAIN_*`, a pass every `REAPER_INTERVAL`), and the dead lane's age
//! and length (`DEAD_LETTER_MAX_*`).

use std::time::Duration;

use super::{
    ConfigError,
    parse::{duration, duration_or_zero, number},
    reaper::DEFAULT_REAPER_INTERVAL,
};
use crate::{dead_lane::DeadLaneSettings, jobs::RetentionPolicy, retention::RetentionSettings};

/// How long finished jobs are kept after their last update
/// (`RETAIN_COMPLETED`, `RETAIN_FAILED`, `RETAIN_CANCELLED`).
pub const DEFAULT_RETAIN_COMPLETED: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_RETAIN_FAILED: Duration = Duration::from_secs(30 * 24 * 3600);
pub const DEFAULT_RETAIN_CANCELLED: Duration = Duration::from_secs(7 * 24 * 3600);
/// Finished jobs deleted per transaction: short transactions, few round
/// trips per job.
pub const RETENTION_BATCH_SIZE: i64 = 1000;
/// Most batches of one status in one retention pass, so that a pass ends.
pub const RETENTION_MAX_BATCHES: u32 = 100;
/// After each batch that deleted jobs, a pause this many times as long as
/// the batch took: the loop keeps PostgreSQL busy at most a quarter of one
/// connection's time (see `retention`).
pub const RETENTION_PAUSE_RATIO: u32 = 3;

/// Dead letters of jobs that failed longer ago than this leave the dead lane.
pub const DEFAULT_DEAD_LETTER_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The dead lane keeps at most this many messages, the newest.
pub const DEFAULT_DEAD_LETTER_MAX_LENGTH: u64 = 100_000;

/// `RETAIN_COMPLETED`, `RETAIN_FAILED`, `RETAIN_CANCELLED` (`0` keeps that
/// status forever), a pass every `REAPER_INTERVAL`.
pub(super) fn retention_settings(
    get: &impl Fn(&str) -> Option<String>,
    call_timeout: Duration,
) -> Result<RetentionSettings, ConfigError> {
    let keep = |name: &'static str, default: Duration| {
        duration_or_zero(get, name, default).map(|age| (!age.is_zero()).then_some(age))
    };
    Ok(RetentionSettings {
        interval: duration(get, "REAPER_INTERVAL", DEFAULT_REAPER_INTERVAL)?,
        policy: RetentionPolicy {
            completed: keep("RETAIN_COMPLETED", DEFAULT_RETAIN_COMPLETED)?,
            failed: keep("RETAIN_FAILED", DEFAULT_RETAIN_FAILED)?,
            cancelled: keep("RETAIN_CANCELLED", DEFAULT_RETAIN_CANCELLED)?,
            batch_size: RETENTION_BATCH_SIZE,
            max_batches: RETENTION_MAX_BATCHES,
        },
        call_timeout,
        pause_ratio: RETENTION_PAUSE_RATIO,
    })
}

/// `DEAD_LETTER_MAX_AGE` (`0`: no age limit) and `DEAD_LETTER_MAX_LENGTH`.
pub(super) fn dead_lane_settings(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<DeadLaneSettings, ConfigError> {
    Ok(DeadLaneSettings {
        max_age: Some(duration_or_zero(
            get,
            "DEAD_LETTER_MAX_AGE",
            DEFAULT_DEAD_LETTER_MAX_AGE,
        )?)
        .filter(|age| !age.is_zero()),
        max_length: number(
            get,
            "DEAD_LETTER_MAX_LENGTH",
            DEFAULT_DEAD_LETTER_MAX_LENGTH,
            0,
            u64::MAX,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::Settings;

    fn retention(vars: &[(&str, &str)]) -> Result<RetentionSettings, ConfigError> {
        let mut map: HashMap<&str, &str> = vars.iter().copied().collect();
        map.insert("DATABASE_URL", "postgres://db/jobs");
        map.insert("AUTH_MODE", "none");
        Settings::from_lookup(|name| map.get(name).map(|v| (*v).to_owned())).map(|s| s.retention)
    }

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn finished_jobs_are_kept_a_week_failed_ones_a_month_by_default() {
        let r = retention(&[]).unwrap();
        assert_eq!(r.policy.completed, Some(7 * DAY));
        assert_eq!(r.policy.failed, Some(30 * DAY));
        assert_eq!(r.policy.cancelled, Some(7 * DAY));
        assert_eq!(r.interval, DEFAULT_REAPER_INTERVAL);
        assert_eq!(r.policy.batch_size, 1000);
        assert!(r.policy.max_batches >= 1);
    }

    #[test]
    fn retention_takes_humantime_durations_and_zero_keeps_forever() {
        let r = retention(&[
            ("RETAIN_COMPLETED", "12h"),
            ("RETAIN_FAILED", "0"),
            ("RETAIN_CANCELLED", "90d"),
            ("REAPER_INTERVAL", "5s"),
        ])
        .unwrap();
        assert_eq!(r.policy.completed, Some(Duration::from_secs(12 * 3600)));
        assert_eq!(r.policy.failed, None);
        assert_eq!(r.policy.cancelled, Some(90 * DAY));
        assert_eq!(r.interval, Duration::from_secs(5));
        let r = retention(&[
            ("RETAIN_COMPLETED", "0s"),
            ("RETAIN_FAILED", " 0 "),
            ("RETAIN_CANCELLED", "0ms"),
        ])
        .unwrap();
        assert!(r.policy.keeps_everything());
    }

    #[test]
    fn a_bad_retention_names_its_variable() {
        for name in ["RETAIN_COMPLETED", "RETAIN_FAILED", "RETAIN_CANCELLED"] {
            for bad in ["7", "a week", "-1d", "7 fortnights"] {
                let error = retention(&[(name, bad)]).unwrap_err();
                assert_eq!(error.name, name, "{name}={bad}");
                assert!(error.reason.contains(bad), "{error}");
            }
        }
    }
}
