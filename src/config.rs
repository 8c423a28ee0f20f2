//! Typed settings read from the environment, with the defaults as named
//! constants. Connection strings carry passwords: they are never printed,
//! and `Settings` has no `Debug` that would show them.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use sqlx::postgres::PgConnectOptions;

use crate::{
    db::{DatabaseSettings, IDLE_IN_TRANSACTION_TIMEOUT},
    jobs::{GroupCommitSettings, RescuePolicy},
    outbox::RelaySettings,
    queue::{QueueName, RedisSettings},
    reaper::ReaperSettings,
    telemetry::LogFormat,
};

pub const DEFAULT_REDIS_URL: &str = "redis://localhost:6379/0";
pub const DEFAULT_QUEUE: &str = "translation_jobs";
pub const DEFAULT_GRPC_ADDR: &str = "0.0.0.0:50051";
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8000";
/// Connections to PostgreSQL; a create is one statement, so a handful per
/// core keeps the server busy without queueing inside it.
pub const DEFAULT_DATABASE_POOL_SIZE: u32 = 16;
/// How long a call waits for a free connection before answering UNAVAILABLE.
pub const DEFAULT_DATABASE_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// The server cancels any statement of the service that runs longer; every
/// client call is abandoned a little after it.
pub const DEFAULT_DATABASE_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit for one Redis command, including waiting for a reconnection.
pub const DEFAULT_REDIS_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
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
pub const DEFAULT_MAX_SUBTASKS_PER_JOB: usize = 1000;
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(8);
/// Waiting jobs (Redis lanes plus outbox) above which creates are refused;
/// the old service's figure. 0 turns backpressure off.
pub const DEFAULT_QUEUE_MAX_BACKLOG: u64 = 1000;
pub const DEFAULT_REAPER_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_STUCK_JOB_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_MAX_JOB_ATTEMPTS: i32 = 3;
/// Stuck jobs rescued per transaction.
pub const REAPER_BATCH_SIZE: i64 = 500;
/// Most jobs in one BatchCreateTranslationJobs call.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 100;
/// Most concurrent creates stored by one statement and one commit.
pub const DEFAULT_CREATE_GROUP_MAX_JOBS: usize = 64;
/// Group commits running at once; more callers wait for the next group.
pub const DEFAULT_CREATE_GROUP_COMMITS: usize = 2;

/// A setting that could not be used. Names the variable; never echoes a
/// connection string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name}: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub reason: String,
}

impl ConfigError {
    fn new(name: &'static str, reason: impl Into<String>) -> Self {
        Self {
            name,
            reason: reason.into(),
        }
    }
}

/// Everything the service needs to run.
#[derive(Clone)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub queue: QueueName,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Whether this process runs the relay; API-only replicas can turn it off.
    pub relay_enabled: bool,
    pub relay: RelaySettings,
    pub max_subtasks_per_job: usize,
    /// Most jobs in one batch create.
    pub max_batch_size: usize,
    /// How concurrent creates are grouped into commits.
    pub create_group: GroupCommitSettings,
    /// Backpressure limit (`QUEUE_MAX_BACKLOG`); 0 turns it off.
    pub queue_max_backlog: u64,
    /// Whether this process runs the reaper.
    pub reaper_enabled: bool,
    pub reaper: ReaperSettings,
    /// How long shutdown waits for calls and background tasks to finish.
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());

        let (database_name, database_url) = match (get("DATABASE_URL"), get("DATABASE_DSN")) {
            (Some(url), _) => ("DATABASE_URL", url),
            (None, Some(url)) => ("DATABASE_DSN", url),
            (None, None) => {
                return Err(ConfigError::new(
                    "DATABASE_URL",
                    "must be set (a postgres:// URL; DATABASE_DSN is accepted too)",
                ));
            }
        };
        let database = PgConnectOptions::from_str(&database_url).map_err(|_| {
            ConfigError::new(
                database_name,
                "is not a valid PostgreSQL URL (postgres://user:password@host:port/database)",
            )
        })?;

        let redis_url = get("REDIS_URL").unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned());
        let known_scheme = [
            "redis://",
            "rediss://",
            "redis-cluster://",
            "redis-sentinel://",
        ]
        .iter()
        .any(|scheme| redis_url.starts_with(scheme));
        if !known_scheme {
            return Err(ConfigError::new(
                "REDIS_URL",
                "must start with redis://, rediss://, redis-cluster:// or redis-sentinel://",
            ));
        }

        let queue_raw = get("TRANSLATION_QUEUE").unwrap_or_else(|| DEFAULT_QUEUE.to_owned());
        let queue = QueueName::parse(&queue_raw)
            .map_err(|error| ConfigError::new("TRANSLATION_QUEUE", error.to_string()))?;

        let database = DatabaseSettings {
            connect: database,
            pool_size: number(
                &get,
                "DATABASE_POOL_SIZE",
                DEFAULT_DATABASE_POOL_SIZE,
                1,
                1000,
            )?,
            acquire_timeout: duration(
                &get,
                "DATABASE_ACQUIRE_TIMEOUT",
                DEFAULT_DATABASE_ACQUIRE_TIMEOUT,
            )?,
            statement_timeout: duration(
                &get,
                "DATABASE_STATEMENT_TIMEOUT",
                DEFAULT_DATABASE_STATEMENT_TIMEOUT,
            )?,
        };
        let call_timeout = database.call_timeout();

        let redis_command_timeout =
            duration(&get, "REDIS_COMMAND_TIMEOUT", DEFAULT_REDIS_COMMAND_TIMEOUT)?;
        let marker_ttl = duration(&get, "RELAY_MARKER_TTL", DEFAULT_RELAY_MARKER_TTL)?;
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

        Ok(Self {
            database,
            redis: RedisSettings {
                url: redis_url,
                command_timeout: redis_command_timeout,
            },
            queue,
            grpc_addr: address(&get, "GRPC_ADDR", DEFAULT_GRPC_ADDR)?,
            http_addr: address(&get, "HTTP_ADDR", DEFAULT_HTTP_ADDR)?,
            relay_enabled: boolean(&get, "RELAY_ENABLED", true)?,
            relay: RelaySettings {
                batch_size: number(
                    &get,
                    "RELAY_BATCH_SIZE",
                    DEFAULT_RELAY_BATCH_SIZE,
                    1,
                    MAX_RELAY_BATCH_SIZE,
                )?,
                claimers: number(&get, "RELAY_CLAIMERS", DEFAULT_RELAY_CLAIMERS, 1, 16)?,
                poll_interval: duration(&get, "RELAY_POLL_INTERVAL", DEFAULT_RELAY_POLL_INTERVAL)?,
                max_backoff: duration(&get, "RELAY_MAX_BACKOFF", DEFAULT_RELAY_MAX_BACKOFF)?,
                linger: duration_or_zero(&get, "RELAY_LINGER", DEFAULT_RELAY_LINGER)?,
                marker_ttl,
                call_timeout,
            },
            max_subtasks_per_job: number(
                &get,
                "MAX_SUBTASKS_PER_JOB",
                DEFAULT_MAX_SUBTASKS_PER_JOB,
                1,
                100_000,
            )?,
            max_batch_size: number(&get, "MAX_BATCH_SIZE", DEFAULT_MAX_BATCH_SIZE, 1, 10_000)?,
            create_group: GroupCommitSettings {
                max_jobs: number(
                    &get,
                    "CREATE_GROUP_MAX_JOBS",
                    DEFAULT_CREATE_GROUP_MAX_JOBS,
                    1,
                    10_000,
                )?,
                max_in_flight: number(
                    &get,
                    "CREATE_GROUP_COMMITS",
                    DEFAULT_CREATE_GROUP_COMMITS,
                    1,
                    1000,
                )?,
                call_timeout,
            },
            queue_max_backlog: number(
                &get,
                "QUEUE_MAX_BACKLOG",
                DEFAULT_QUEUE_MAX_BACKLOG,
                0,
                u64::MAX,
            )?,
            reaper_enabled: boolean(&get, "REAPER_ENABLED", true)?,
            reaper: ReaperSettings {
                interval: duration(&get, "REAPER_INTERVAL", DEFAULT_REAPER_INTERVAL)?,
                policy: RescuePolicy {
                    stuck_after: duration(&get, "STUCK_JOB_TIMEOUT", DEFAULT_STUCK_JOB_TIMEOUT)?,
                    max_attempts: number(
                        &get,
                        "MAX_JOB_ATTEMPTS",
                        DEFAULT_MAX_JOB_ATTEMPTS,
                        1,
                        1000,
                    )?,
                    batch_size: REAPER_BATCH_SIZE,
                },
                call_timeout,
            },
            shutdown_timeout: duration(&get, "SHUTDOWN_TIMEOUT", DEFAULT_SHUTDOWN_TIMEOUT)?,
            log_format: match get("LOG_FORMAT")
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(_) => return Err(ConfigError::new("LOG_FORMAT", "must be text or json")),
            },
        })
    }
}

fn duration(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match get(name) {
        None => Ok(default),
        Some(raw) => {
            let value = humantime::parse_duration(raw.trim()).map_err(|_| {
                ConfigError::new(
                    name,
                    format!("must be a duration such as 500ms, 30s or 1h, got {raw:?}"),
                )
            })?;
            if value.is_zero() {
                return Err(ConfigError::new(name, "must be greater than zero"));
            }
            Ok(value)
        }
    }
}

/// A duration where zero (`0`, `0ms`, `0s`, ...) is allowed: it turns
/// something off.
fn duration_or_zero(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match get(name).as_deref().map(str::trim) {
        Some("0") => Ok(Duration::ZERO),
        Some(raw) if humantime::parse_duration(raw).is_ok_and(|d| d.is_zero()) => {
            Ok(Duration::ZERO)
        }
        _ => duration(get, name, default),
    }
}

fn number<T>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + std::fmt::Display + Copy,
{
    match get(name) {
        None => Ok(default),
        Some(raw) => match raw.trim().parse::<T>() {
            Ok(value) if value >= min && value <= max => Ok(value),
            _ => Err(ConfigError::new(
                name,
                format!("must be a whole number from {min} to {max}, got {raw:?}"),
            )),
        },
    }
}

fn address(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let raw = get(name).unwrap_or_else(|| default.to_owned());
    raw.trim().parse().map_err(|_| {
        ConfigError::new(
            name,
            format!("must be host:port such as 0.0.0.0:50051, got {raw:?}"),
        )
    })
}

fn boolean(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match get(name)
        .map(|raw| raw.trim().to_ascii_lowercase())
        .as_deref()
    {
        None => Ok(default),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(_) => Err(ConfigError::new(name, "must be true or false")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_follow_the_design() {
        let s = settings(&[("DATABASE_URL", "postgres://u:secret@db:5432/jobs")]).unwrap();
        assert_eq!(s.redis.url, DEFAULT_REDIS_URL);
        assert_eq!(s.queue.as_str(), "translation_jobs");
        assert_eq!(s.grpc_addr.to_string(), "0.0.0.0:50051");
        assert_eq!(s.http_addr.to_string(), "0.0.0.0:8000");
        assert_eq!(s.relay.batch_size, DEFAULT_RELAY_BATCH_SIZE);
        assert!(s.relay_enabled);
        assert_eq!(s.queue_max_backlog, 1000);
        assert_eq!(s.reaper.interval, Duration::from_secs(30));
        assert_eq!(s.reaper.policy.stuck_after, Duration::from_secs(3600));
        assert_eq!(s.reaper.policy.max_attempts, 3);
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn accepts_the_older_database_dsn() {
        let s = settings(&[("DATABASE_DSN", "postgresql://u@db/jobs")]).unwrap();
        assert_eq!(s.database.connect.get_database(), Some("jobs"));
    }

    #[test]
    fn a_missing_database_url_is_named() {
        let error = settings(&[]).err().unwrap();
        assert_eq!(error.name, "DATABASE_URL");
    }

    #[test]
    fn a_bad_database_url_never_echoes_the_password() {
        let error = settings(&[("DATABASE_URL", "mysql://u:hunter2@db/jobs")]).err();
        let error = error.unwrap_or_else(|| ConfigError::new("DATABASE_URL", "accepted"));
        // sqlx may accept odd schemes; either way the password is not shown.
        assert!(!error.to_string().contains("hunter2"));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let base = ("DATABASE_URL", "postgres://db/jobs");
        let cases = [
            ("RELAY_BATCH_SIZE", "0"),
            ("RELAY_BATCH_SIZE", "many"),
            ("RELAY_POLL_INTERVAL", "soon"),
            ("GRPC_ADDR", "localhost"),
            ("TRANSLATION_QUEUE", "has space"),
            ("REDIS_URL", "http://redis"),
            ("LOG_FORMAT", "xml"),
            ("RELAY_MARKER_TTL", "10s"),
            ("RELAY_ENABLED", "maybe"),
            ("MAX_JOB_ATTEMPTS", "0"),
            ("STUCK_JOB_TIMEOUT", "an hour"),
            ("QUEUE_MAX_BACKLOG", "-1"),
        ];
        for (name, value) in cases {
            let error = settings(&[base, (name, value)]).err().unwrap();
            assert_eq!(error.name, name, "{name}={value}");
        }
    }

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

    #[test]
    fn every_database_call_is_bounded_by_the_statement_timeout() {
        let s = settings(&[
            ("DATABASE_URL", "postgres://db/jobs"),
            ("DATABASE_STATEMENT_TIMEOUT", "10s"),
        ])
        .unwrap();
        assert_eq!(s.database.statement_timeout, Duration::from_secs(10));
        assert!(s.relay.call_timeout > Duration::from_secs(10));
        assert_eq!(s.relay.call_timeout, s.reaper.call_timeout);
    }
}
