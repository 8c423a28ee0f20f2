//! The reaper (`REAPER_*`, `STUCK_JOB_TIMEOUT`): how often it runs, when a
//! job IN_PROGRESS counts as stuck, and the sizes of its batches.

use std::time::Duration;

use super::{ConfigError, parse::duration};
use crate::{jobs::RescuePolicy, reaper::ReaperSettings};

pub const DEFAULT_REAPER_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_STUCK_JOB_TIMEOUT: Duration = Duration::from_secs(3600);
/// Stuck jobs rescued per transaction; also the PENDING jobs one batch of
/// the search for lost messages looks at.
pub const REAPER_BATCH_SIZE: i64 = 500;
/// PENDING jobs a pass of the search for lost messages looks at without
/// handing them out again before it stops until the next pass (see
/// `reaper`): one batch, so that a pass is one short transaction; with
/// fewer PENDING jobs than this, each pass looks at all of them.
pub const REAPER_LOST_SCAN: usize = 500;

/// `REAPER_INTERVAL` and `STUCK_JOB_TIMEOUT`.
pub(super) fn reaper_settings(
    get: &impl Fn(&str) -> Option<String>,
    call_timeout: Duration,
) -> Result<ReaperSettings, ConfigError> {
    Ok(ReaperSettings {
        interval: duration(get, "REAPER_INTERVAL", DEFAULT_REAPER_INTERVAL)?,
        policy: RescuePolicy {
            stuck_after: duration(get, "STUCK_JOB_TIMEOUT", DEFAULT_STUCK_JOB_TIMEOUT)?,
            batch_size: REAPER_BATCH_SIZE,
        },
        lost_scan: REAPER_LOST_SCAN,
        call_timeout,
    })
}
