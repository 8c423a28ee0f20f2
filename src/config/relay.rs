//! The relay (`RELAY_*`): rows per round, claiming transactions, how often
//! it polls, lingers and backs off, and how long Redis remembers a push.

use std::time::Duration;

use super::{
    ConfigError,
    parse::{duration, duration_or_zero, number},
};
use crate::{db::IDLE_IN_TRANSACTION_TIMEOUT, outbox::RelaySettings};

pub const DEFAULT_RELAY_BATCH_SIZE: u32 = 500;
/// Transactions that claim one round at once while a backlog lasts.
pub const DEFAULT_RELAY_CLAIMERS: usize = 1;
/// Largest batch accepted; bigger batches only hold locks longer.
pub const MAX_RELAY_BATCH_SIZE: u32 = 10_000;
pub const DEFAULT_RELAY_POLL_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_RELAY_MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Short enough to keep commit-to-Redis in milliseconds, long enough to
/// batch the commits of a busy second.
pub const DEFAULT_RELAY_LINGER: Duration = Duration::from_millis(5);
/// Long enough to cover any retry of a batch whose push reached Redis (a
/// crashed relay's rows come back within about a minute); 4 bytes of Redis
/// memory per message published in that window.
pub const DEFAULT_RELAY_MARKER_TTL: Duration = Duration::from_secs(15 * 60);

/// `RELAY_MARKER_TTL`: at least twice the time an unfinished batch can stay
/// locked (idle in transaction, then one Redis command).
pub(super) fn marker_ttl(
    get: &impl Fn(&str) -> Option<String>,
    redis_command_timeout: Duration,
) -> Result<Duration, ConfigError> {
    let marker_ttl = duration(get, "RELAY_MARKER_TTL", DEFAULT_RELAY_MARKER_TTL)?;
    let shortest_ttl = (IDLE_IN_TRANSACTION_TIMEOUT + redis_command_timeout) * 2;
    if marker_ttl < shortest_ttl {
        return Err(ConfigError::new(
            "RELAY_MARKER_TTL",
            format!(
                "must be at least {} (twice the time an unfinished relay batch can stay locked)",
                humantime::format_duration(shortest_ttl)
            ),
        ));
    }
    Ok(marker_ttl)
}

/// `RELAY_BATCH_SIZE`, `RELAY_CLAIMERS`, `RELAY_POLL_INTERVAL`,
/// `RELAY_MAX_BACKOFF`, `RELAY_LINGER` (0 drains at once), with the marker
/// TTL read before.
pub(super) fn relay_settings(
    get: &impl Fn(&str) -> Option<String>,
    marker_ttl: Duration,
    call_timeout: Duration,
) -> Result<RelaySettings, ConfigError> {
    Ok(RelaySettings {
        batch_size: number(
            get,
            "RELAY_BATCH_SIZE",
            DEFAULT_RELAY_BATCH_SIZE,
            1,
            MAX_RELAY_BATCH_SIZE,
        )?,
        claimers: number(get, "RELAY_CLAIMERS", DEFAULT_RELAY_CLAIMERS, 1, 16)?,
        poll_interval: duration(get, "RELAY_POLL_INTERVAL", DEFAULT_RELAY_POLL_INTERVAL)?,
        max_backoff: duration(get, "RELAY_MAX_BACKOFF", DEFAULT_RELAY_MAX_BACKOFF)?,
        linger: duration_or_zero(get, "RELAY_LINGER", DEFAULT_RELAY_LINGER)?,
        marker_ttl,
        call_timeout,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::tests::settings;

    #[test]
    fn durations_use_the_humantime_form() {
        let s = settings(&[
            ("DATABASE_URL", "postgres://db/jobs"),
            ("RELAY_POLL_INTERVAL", "250ms"),
            ("RELAY_MARKER_TTL", "2h"),
        ])
        .unwrap();
        assert_eq!(s.relay.poll_interval, Duration::from_millis(250));
        assert_eq!(s.relay.marker_ttl, Duration::from_secs(7200));
    }

    #[test]
    fn any_zero_linger_means_zero() {
        for zero in ["0", "0ms", "0s", " 0ms "] {
            let s = settings(&[
                ("DATABASE_URL", "postgres://db/jobs"),
                ("RELAY_LINGER", zero),
            ])
            .unwrap();
            assert_eq!(s.relay.linger, Duration::ZERO, "{zero:?}");
        }
        let error = settings(&[
            ("DATABASE_URL", "postgres://db/jobs"),
            ("RELAY_POLL_INTERVAL", "0ms"),
        ])
        .err()
        .unwrap();
        assert_eq!(error.name, "RELAY_POLL_INTERVAL");
    }
}
