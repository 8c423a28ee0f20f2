//! Typed settings read from the environment, with the defaults as named
//! constants. Connection strings carry passwords: they are never printed,
//! and `Settings` has no `Debug` that would show them.

use std::{fmt, str::FromStr, time::Duration};

use sqlx::postgres::PgConnectOptions;

use crate::{
    api::{
        auth::{AuthSettings, MIN_HS256_SECRET_LEN, PublicKey},
        limits::{
            DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_MAX_CONCURRENT_REQUESTS_PER_CALLER,
            DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_WATCH_STREAMS,
            DEFAULT_MAX_WATCH_STREAMS_PER_CALLER, DEFAULT_RPC_TIMEOUT, LimitSettings,
        },
        tls::TlsSettings,
    },
    db::{DatabaseSettings, IDLE_IN_TRANSACTION_TIMEOUT},
    jobs::{GroupCommitSettings, RescuePolicy},
    outbox::RelaySettings,
    queue::{QueueName, RedisSettings, ReplicaWait},
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
/// Replicas that must confirm each relay push before it counts; 0: none
/// (Redis replicates asynchronously, see `queue::replicas`).
pub const DEFAULT_REDIS_WAIT_REPLICAS: u32 = 0;
/// How long a push waits for those replicas before it counts as failed.
pub const DEFAULT_REDIS_WAIT_TIMEOUT: Duration = Duration::from_secs(1);
/// Most replicas `REDIS_WAIT_REPLICAS` may ask for.
pub const MAX_REDIS_WAIT_REPLICAS: u32 = 100;
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
/// A job's `max_attempts` when the create request has none: a failure is final.
pub const DEFAULT_JOB_MAX_ATTEMPTS: i32 = 1;
pub const DEFAULT_RETRY_BACKOFF_BASE: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// Dead letters of jobs that failed longer ago than this leave the dead lane.
pub const DEFAULT_DEAD_LETTER_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The dead lane keeps at most this many messages, the newest.
pub const DEFAULT_DEAD_LETTER_MAX_LENGTH: u64 = 100_000;
pub const DEFAULT_MAX_SCHEDULE_AHEAD: Duration = Duration::from_secs(30 * 24 * 3600);
/// Stuck jobs rescued per transaction; also the PENDING jobs one batch of
/// the search for lost messages looks at.
pub const REAPER_BATCH_SIZE: i64 = 500;
/// PENDING jobs a pass of the search for lost messages looks at without
/// handing them out again before it stops until the next pass (see
/// `reaper`): with fewer PENDING jobs than this, each pass looks at all of
/// them.
pub const REAPER_LOST_SCAN: usize = 5_000;
/// Most jobs in one BatchCreateTranslationJobs call.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 100;
/// Bounds of `GRPC_MAX_MESSAGE_SIZE`: a create of `MAX_SUBTASKS_PER_JOB`
/// subtasks needs some room; beyond 1 GiB a message is no longer a request.
pub const MIN_MAX_MESSAGE_SIZE: usize = 1024;
pub const MAX_MAX_MESSAGE_SIZE: usize = 1024 * 1024 * 1024;
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
    /// Replicas that must confirm the relay's pushes (`REDIS_WAIT_REPLICAS`).
    pub redis_wait: ReplicaWait,
    pub queue: QueueName,
    pub grpc_addr: ListenAddr,
    pub http_addr: ListenAddr,
    /// `MANAGEMENT_ADDR`: a plain-HTTP listener for `/healthz`, `/readyz`
    /// and `/metrics` only; none when unset.
    pub management_addr: Option<ListenAddr>,
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
    /// Deletion of finished jobs (`RETAIN_*`), run with the reaper.
    pub retention: crate::retention::RetentionSettings,
    /// Whether this process runs the reaper.
    pub reaper_enabled: bool,
    pub reaper: ReaperSettings,
    /// Failed attempts, backoff and schedules.
    pub retries: RetrySettings,
    /// How long and how many dead letters the dead lane keeps.
    pub dead_lane: crate::dead_lane::DeadLaneSettings,
    /// How long shutdown waits for calls and background tasks to finish.
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    /// Bearer-token checking; off (the service runs open) without keys.
    pub auth: AuthSettings,
    /// Whether tokens are required, and if not, why the service may run
    /// open (`AUTH_MODE`).
    pub auth_mode: AuthMode,
    /// TLS on the gRPC listener; plaintext when `None`.
    pub tls: Option<TlsSettings>,
    /// Message size, deadline, calls in flight, watch streams.
    pub limits: LimitSettings,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the process environment for an admin command (`migrate`,
    /// `stats`, ...): it opens no listener, so without a key it needs no
    /// `AUTH_MODE` either.
    pub fn for_admin_command() -> Result<Self, ConfigError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let keys = env("AUTH_JWT_SECRET").is_some() || env("AUTH_JWT_PUBLIC_KEY").is_some();
        Self::from_lookup(|name| match name {
            "AUTH_MODE" if !keys => env(name).or_else(|| Some("none".to_owned())),
            _ => env(name),
        })
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
                    "must be set: the postgres:// URL of the jobs' own database, e.g. \
                     postgres://postgres@127.0.0.1:5432/translation_jobs (scripts/run.sh creates \
                     one and sets it; DATABASE_DSN is accepted too)",
                ));
            }
        };
        let scheme = database_url
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("postgres" | "postgresql")) {
            return Err(ConfigError::new(
                database_name,
                format!(
                    "must be a postgres:// (or postgresql://) URL, got a {} one: this service \
                     stores its jobs in PostgreSQL only",
                    scheme.map_or_else(|| "scheme-less".to_owned(), |s| format!("{s}://"))
                ),
            ));
        }
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
            "rediss-cluster://",
            "redis-sentinel://",
            "rediss-sentinel://",
        ]
        .iter()
        .any(|scheme| redis_url.starts_with(scheme));
        if !known_scheme {
            return Err(ConfigError::new(
                "REDIS_URL",
                "must start with redis://, rediss://, redis-cluster://, rediss-cluster://, \
                 redis-sentinel:// or rediss-sentinel://",
            ));
        }
        if redis_url.contains("-sentinel://") && !redis_url.contains("sentinelServiceName=") {
            return Err(ConfigError::new(
                "REDIS_URL",
                "a redis-sentinel:// URL needs ?sentinelServiceName=<the monitored master's name>",
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
        let acquire_timeout = database.acquire_timeout;

        let redis_command_timeout =
            duration(&get, "REDIS_COMMAND_TIMEOUT", DEFAULT_REDIS_COMMAND_TIMEOUT)?;
        let redis_wait = ReplicaWait {
            replicas: number(
                &get,
                "REDIS_WAIT_REPLICAS",
                DEFAULT_REDIS_WAIT_REPLICAS,
                0,
                MAX_REDIS_WAIT_REPLICAS,
            )?,
            timeout: duration(&get, "REDIS_WAIT_TIMEOUT", DEFAULT_REDIS_WAIT_TIMEOUT)?,
        };
        if !redis_wait.is_off() && redis_wait.timeout >= redis_command_timeout {
            return Err(ConfigError::new(
                "REDIS_WAIT_TIMEOUT",
                format!(
                    "must be shorter than REDIS_COMMAND_TIMEOUT ({})",
                    humantime::format_duration(redis_command_timeout)
                ),
            ));
        }
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

        let grpc_addr = address(&get, "GRPC_ADDR", DEFAULT_GRPC_ADDR)?;
        let http_addr = address(&get, "HTTP_ADDR", DEFAULT_HTTP_ADDR)?;
        let auth = auth_settings(&get)?;
        let auth_mode = auth_mode(
            &get,
            &auth,
            &[("GRPC_ADDR", &grpc_addr), ("HTTP_ADDR", &http_addr)],
        )?;

        Ok(Self {
            database,
            redis: RedisSettings {
                url: redis_url,
                command_timeout: redis_command_timeout,
            },
            redis_wait,
            queue,
            grpc_addr,
            http_addr,
            management_addr: match get("MANAGEMENT_ADDR") {
                None => None,
                Some(_) => Some(address(&get, "MANAGEMENT_ADDR", "")?),
            },
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
                acquire_timeout,
                call_timeout,
            },
            queue_max_backlog: number(
                &get,
                "QUEUE_MAX_BACKLOG",
                DEFAULT_QUEUE_MAX_BACKLOG,
                0,
                u64::MAX,
            )?,
            retention: retention_settings(&get, call_timeout)?,
            reaper_enabled: boolean(&get, "REAPER_ENABLED", true)?,
            reaper: ReaperSettings {
                interval: duration(&get, "REAPER_INTERVAL", DEFAULT_REAPER_INTERVAL)?,
                policy: RescuePolicy {
                    stuck_after: duration(&get, "STUCK_JOB_TIMEOUT", DEFAULT_STUCK_JOB_TIMEOUT)?,
                    batch_size: REAPER_BATCH_SIZE,
                },
                lost_scan: REAPER_LOST_SCAN,
                call_timeout,
            },
            retries: retry_settings(&get)?,
            dead_lane: crate::dead_lane::DeadLaneSettings {
                max_age: Some(duration_or_zero(
                    &get,
                    "DEAD_LETTER_MAX_AGE",
                    DEFAULT_DEAD_LETTER_MAX_AGE,
                )?)
                .filter(|age| !age.is_zero()),
                max_length: number(
                    &get,
                    "DEAD_LETTER_MAX_LENGTH",
                    DEFAULT_DEAD_LETTER_MAX_LENGTH,
                    0,
                    u64::MAX,
                )?,
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
            auth,
            auth_mode,
            tls: tls_settings(&get)?,
            limits: LimitSettings {
                max_message_size: number(
                    &get,
                    "GRPC_MAX_MESSAGE_SIZE",
                    DEFAULT_MAX_MESSAGE_SIZE,
                    MIN_MAX_MESSAGE_SIZE,
                    MAX_MAX_MESSAGE_SIZE,
                )?,
                rpc_timeout: duration(&get, "RPC_TIMEOUT", DEFAULT_RPC_TIMEOUT)?,
                max_concurrent_requests: number(
                    &get,
                    "MAX_CONCURRENT_REQUESTS",
                    DEFAULT_MAX_CONCURRENT_REQUESTS,
                    1,
                    1_000_000,
                )?,
                max_watch_streams: number(
                    &get,
                    "MAX_WATCH_STREAMS",
                    DEFAULT_MAX_WATCH_STREAMS,
                    1,
                    1_000_000,
                )?,
                max_concurrent_requests_per_caller: number(
                    &get,
                    "MAX_CONCURRENT_REQUESTS_PER_CALLER",
                    DEFAULT_MAX_CONCURRENT_REQUESTS_PER_CALLER,
                    1,
                    1_000_000,
                )?,
                max_watch_streams_per_caller: number(
                    &get,
                    "MAX_WATCH_STREAMS_PER_CALLER",
                    DEFAULT_MAX_WATCH_STREAMS_PER_CALLER,
                    1,
                    1_000_000,
                )?,
            },
        })
    }
}

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

/// `RETAIN_COMPLETED`, `RETAIN_FAILED`, `RETAIN_CANCELLED` (`0` keeps that
/// status forever), a pass every `REAPER_INTERVAL`.
fn retention_settings(
    get: &impl Fn(&str) -> Option<String>,
    call_timeout: Duration,
) -> Result<crate::retention::RetentionSettings, ConfigError> {
    let keep = |name: &'static str, default: Duration| {
        duration_or_zero(get, name, default).map(|age| (!age.is_zero()).then_some(age))
    };
    Ok(crate::retention::RetentionSettings {
        interval: duration(get, "REAPER_INTERVAL", DEFAULT_REAPER_INTERVAL)?,
        policy: crate::jobs::RetentionPolicy {
            completed: keep("RETAIN_COMPLETED", DEFAULT_RETAIN_COMPLETED)?,
            failed: keep("RETAIN_FAILED", DEFAULT_RETAIN_FAILED)?,
            cancelled: keep("RETAIN_CANCELLED", DEFAULT_RETAIN_CANCELLED)?,
            batch_size: RETENTION_BATCH_SIZE,
            max_batches: RETENTION_MAX_BATCHES,
        },
        call_timeout,
    })
}

#[cfg(test)]
mod retention_tests {
    use std::collections::HashMap;

    use super::*;

    fn retention(
        vars: &[(&str, &str)],
    ) -> Result<crate::retention::RetentionSettings, ConfigError> {
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

/// `AUTH_JWT_SECRET`, `AUTH_JWT_PUBLIC_KEY`, `AUTH_JWT_ISSUER`,
/// `AUTH_JWT_AUDIENCE`. No error quotes the secret or the key.
fn auth_settings(get: &impl Fn(&str) -> Option<String>) -> Result<AuthSettings, ConfigError> {
    let hs256_secret = match get("AUTH_JWT_SECRET") {
        None => None,
        Some(secret) if secret.contains("-----BEGIN") => {
            return Err(ConfigError::new(
                "AUTH_JWT_SECRET",
                "holds a PEM key, but it is the shared HS256 secret; put a PEM public key \
                 (RS256 or ES256), or its path, in AUTH_JWT_PUBLIC_KEY instead",
            ));
        }
        Some(secret) if secret.len() < MIN_HS256_SECRET_LEN => {
            return Err(ConfigError::new(
                "AUTH_JWT_SECRET",
                format!(
                    "must be at least {MIN_HS256_SECRET_LEN} bytes (256 bits) for HS256, got {}",
                    secret.len()
                ),
            ));
        }
        Some(secret) => Some(secret.into_bytes()),
    };
    let public_key = match get("AUTH_JWT_PUBLIC_KEY") {
        None => None,
        Some(raw) => {
            let pem = if raw.contains("-----BEGIN") {
                // A PEM in the variable; some secret stores keep its line
                // breaks as literal "\n".
                if raw.contains('\n') {
                    raw
                } else {
                    raw.replace("\\n", "\n")
                }
            } else {
                let path = raw.trim();
                std::fs::read_to_string(path).map_err(|error| {
                    ConfigError::new(
                        "AUTH_JWT_PUBLIC_KEY",
                        format!(
                            "holds no PEM (no -----BEGIN line), so it is taken as a file path, \
                             and that file cannot be read: {error}"
                        ),
                    )
                })?
            };
            Some(
                PublicKey::from_pem(&pem)
                    .map_err(|reason| ConfigError::new("AUTH_JWT_PUBLIC_KEY", reason))?,
            )
        }
    };
    Ok(AuthSettings {
        hs256_secret,
        public_key,
        issuer: get("AUTH_JWT_ISSUER").map(|s| s.trim().to_owned()),
        audience: get("AUTH_JWT_AUDIENCE").map(|s| s.trim().to_owned()),
    })
}

/// Whether callers must carry bearer tokens, and if not, why the service
/// may run open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// A key is set: every call of the job service needs a token.
    Jwt,
    /// `AUTH_MODE=none`: open, deliberately.
    OpenAsked,
    /// No key and no `AUTH_MODE`, every listener on loopback: only this
    /// machine can call (a developer's run, the README's run command, scripts/run.sh).
    OpenLoopback,
}

impl AuthMode {
    pub fn is_open(self) -> bool {
        self != AuthMode::Jwt
    }
}

/// `AUTH_MODE` (`jwt` or `none`) with the key variables and the listeners:
/// open only when asked, or when nobody but this machine can connect.
/// Safe by default, as Redis's protected mode is.
fn auth_mode(
    get: &impl Fn(&str) -> Option<String>,
    auth: &AuthSettings,
    listeners: &[(&str, &ListenAddr)],
) -> Result<AuthMode, ConfigError> {
    const KEYS: &str = "AUTH_JWT_SECRET (HS256) or AUTH_JWT_PUBLIC_KEY (RS256/ES256)";
    let keys = auth.enabled();
    if !keys {
        for name in ["AUTH_JWT_ISSUER", "AUTH_JWT_AUDIENCE"] {
            if get(name).is_some() {
                return Err(ConfigError::new(
                    name,
                    format!("is set but no key is: tokens cannot be checked; set {KEYS}"),
                ));
            }
        }
    }
    let mode = get("AUTH_MODE").map(|mode| mode.trim().to_ascii_lowercase());
    match (mode.as_deref(), keys) {
        (Some("jwt") | None, true) => Ok(AuthMode::Jwt),
        (Some("jwt"), false) => Err(ConfigError::new(
            "AUTH_MODE",
            format!("is jwt but no key is set: set {KEYS}"),
        )),
        (Some("none"), true) => Err(ConfigError::new(
            "AUTH_MODE",
            "is none but a key (AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY) is set: unset the key \
             to run open, or unset AUTH_MODE (or set it to jwt) to require tokens",
        )),
        (Some("none"), false) => Ok(AuthMode::OpenAsked),
        (Some(other), _) => Err(ConfigError::new(
            "AUTH_MODE",
            format!("must be jwt or none, got {other:?}"),
        )),
        (None, false) => match listeners.iter().find(|(_, addr)| !addr.is_loopback()) {
            None => Ok(AuthMode::OpenLoopback),
            Some((name, addr)) => Err(ConfigError::new(
                "AUTH_MODE",
                format!(
                    "is not set and no key is ({KEYS}), while {name} listens on {addr}, beyond \
                     this machine: the service would be open to anyone who reaches it. Set a \
                     key to require tokens, set AUTH_MODE=none to run open deliberately, or \
                     bind every listener to loopback (127.0.0.1)"
                ),
            )),
        },
    }
}

/// `GRPC_TLS_CERT` and `GRPC_TLS_KEY` together, `GRPC_TLS_CLIENT_CA` only
/// with them. The files are read when the service starts.
fn tls_settings(get: &impl Fn(&str) -> Option<String>) -> Result<Option<TlsSettings>, ConfigError> {
    let path = |name: &str| get(name).map(|p| std::path::PathBuf::from(p.trim()));
    match (
        path("GRPC_TLS_CERT"),
        path("GRPC_TLS_KEY"),
        path("GRPC_TLS_CLIENT_CA"),
    ) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), client_ca) => Ok(Some(TlsSettings {
            cert,
            key,
            client_ca,
        })),
        (None, None, Some(_)) => Err(ConfigError::new(
            "GRPC_TLS_CLIENT_CA",
            "needs GRPC_TLS_CERT and GRPC_TLS_KEY (the server's own certificate)",
        )),
        (Some(_), None, _) => Err(ConfigError::new(
            "GRPC_TLS_KEY",
            "must be set with GRPC_TLS_CERT (the certificate's private key, a PEM file)",
        )),
        (None, Some(_), _) => Err(ConfigError::new(
            "GRPC_TLS_CERT",
            "must be set with GRPC_TLS_KEY (the certificate chain, a PEM file)",
        )),
    }
}

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

fn retry_settings(get: &impl Fn(&str) -> Option<String>) -> Result<RetrySettings, ConfigError> {
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
            crate::api::convert::MAX_MAX_ATTEMPTS,
        )?,
        backoff_base,
        backoff_max,
        max_schedule_ahead: duration(get, "MAX_SCHEDULE_AHEAD", DEFAULT_MAX_SCHEDULE_AHEAD)?,
    })
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

/// Where a listener binds: `host:port`, the host an IP address (`0.0.0.0`,
/// `[::1]`) or a name resolved when the listener binds (`localhost`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr {
    host: String,
    port: u16,
}

impl ListenAddr {
    /// Parses `host:port`; an IPv6 host in brackets.
    pub fn parse(raw: &str) -> Option<Self> {
        let (host, port) = raw.trim().rsplit_once(':')?;
        let port = port.parse().ok()?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner.strip_suffix(']')?,
            None if host.contains(':') => return None,
            None => host,
        };
        let valid = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '%'));
        valid.then(|| Self {
            host: host.to_owned(),
            port,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether only this machine can connect: a loopback address
    /// (127.0.0.0/8, ::1) or `localhost`. Any other name counts as reachable
    /// from elsewhere.
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn address(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: &str,
) -> Result<ListenAddr, ConfigError> {
    let raw = get(name).unwrap_or_else(|| default.to_owned());
    ListenAddr::parse(&raw).ok_or_else(|| {
        ConfigError::new(
            name,
            format!("must be host:port such as 0.0.0.0:50051 or localhost:50051, got {raw:?}"),
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

    /// Settings from `vars`; open by `AUTH_MODE=none` unless `vars` say
    /// anything about authentication.
    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        if !map.keys().any(|name| name.starts_with("AUTH_")) {
            map.insert("AUTH_MODE".into(), "none".into());
        }
        Settings::from_lookup(|name| map.get(name).cloned())
    }

    /// Settings from exactly `vars`.
    fn exactly(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn the_service_runs_open_only_when_asked_or_on_loopback() {
        let url = ("DATABASE_URL", "postgres://u@db:5432/jobs");
        let secret = ("AUTH_JWT_SECRET", "0123456789abcdef0123456789abcdef");
        let loopback = [
            ("GRPC_ADDR", "127.0.0.1:50051"),
            ("HTTP_ADDR", "localhost:8000"),
        ];
        let mode = |vars: &[(&str, &str)]| exactly(vars).map(|s| s.auth_mode);

        // Defaults listen on every interface: no key and no AUTH_MODE refuse.
        let refused = mode(&[url]).unwrap_err();
        assert_eq!(refused.name, "AUTH_MODE");
        for named in [
            "AUTH_JWT_SECRET",
            "AUTH_JWT_PUBLIC_KEY",
            "AUTH_MODE=none",
            "0.0.0.0:50051",
        ] {
            assert!(refused.to_string().contains(named), "{refused}");
        }
        // One listener beyond loopback is enough to refuse.
        let refused = mode(&[url, loopback[0]]).unwrap_err();
        assert!(refused.to_string().contains("HTTP_ADDR"), "{refused}");
        assert_eq!(
            mode(&[url, loopback[0], loopback[1]]),
            Ok(AuthMode::OpenLoopback)
        );
        assert_eq!(
            mode(&[url, loopback[0], ("HTTP_ADDR", "[::1]:8000")]),
            Ok(AuthMode::OpenLoopback)
        );
        assert_eq!(mode(&[url, ("AUTH_MODE", "none")]), Ok(AuthMode::OpenAsked));
        assert_eq!(
            mode(&[url, ("AUTH_MODE", " None ")]),
            Ok(AuthMode::OpenAsked)
        );
        // Empty counts as unset.
        assert_eq!(
            mode(&[url, ("AUTH_MODE", " ")]).unwrap_err().name,
            "AUTH_MODE"
        );
        assert_eq!(mode(&[url, secret]), Ok(AuthMode::Jwt));
        assert_eq!(
            mode(&[url, secret, ("AUTH_MODE", "jwt")]),
            Ok(AuthMode::Jwt)
        );
        assert_eq!(
            mode(&[url, secret, ("AUTH_MODE", "none")])
                .unwrap_err()
                .name,
            "AUTH_MODE"
        );
        assert_eq!(
            mode(&[url, ("AUTH_MODE", "jwt")]).unwrap_err().name,
            "AUTH_MODE"
        );
        assert_eq!(
            mode(&[url, ("AUTH_MODE", "off")]).unwrap_err().name,
            "AUTH_MODE"
        );
        for name in ["AUTH_JWT_ISSUER", "AUTH_JWT_AUDIENCE"] {
            let refused = mode(&[url, ("AUTH_MODE", "none"), (name, "x")]).unwrap_err();
            assert_eq!(refused.name, name);
        }
        let pem = "-----BEGIN PUBLIC KEY-----\nMFkw...\n-----END PUBLIC KEY-----";
        let refused = mode(&[url, ("AUTH_JWT_SECRET", pem)]).unwrap_err();
        assert_eq!(refused.name, "AUTH_JWT_SECRET");
        assert!(
            refused.to_string().contains("AUTH_JWT_PUBLIC_KEY"),
            "{refused}"
        );
        assert!(
            !refused.to_string().contains("MFkw"),
            "the key is never quoted"
        );
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
        assert_eq!(s.retries.default_max_attempts, 1);
        assert_eq!(
            s.dead_lane,
            crate::dead_lane::DeadLaneSettings {
                max_age: Some(Duration::from_secs(30 * 24 * 3600)),
                max_length: 100_000
            }
        );
        assert_eq!(s.retries.backoff_base, Duration::from_secs(10));
        assert_eq!(s.retries.backoff_max, Duration::from_secs(3600));
        assert_eq!(
            s.retries.max_schedule_ahead,
            Duration::from_secs(30 * 24 * 3600)
        );
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn listen_addresses_accept_ips_and_host_names() {
        for (raw, shown) in [
            ("localhost:50051", "localhost:50051"),
            ("0.0.0.0:8000", "0.0.0.0:8000"),
            ("[::1]:8000", "[::1]:8000"),
            ("[::]:0", "[::]:0"),
            (" my-host.internal:80 ", "my-host.internal:80"),
        ] {
            let addr = ListenAddr::parse(raw).unwrap_or_else(|| panic!("{raw}"));
            assert_eq!(addr.to_string(), shown);
        }
        assert_eq!(ListenAddr::parse("[::1]:8000").unwrap().host(), "::1");
        for bad in [
            "localhost",
            ":80",
            "host:port",
            "::1:80",
            "a b:80",
            "h:70000",
            "[::1:80",
        ] {
            assert_eq!(ListenAddr::parse(bad), None, "{bad}");
        }
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
            ("MAX_JOB_ATTEMPTS", "3"),
            ("DATABASE_URL", "mysql://root@db/jobs"),
            ("JOB_MAX_ATTEMPTS", "0"),
            ("JOB_MAX_ATTEMPTS", "101"),
            ("RETRY_BACKOFF_BASE", "0"),
            ("RETRY_BACKOFF_MAX", "1s"),
            ("MAX_SCHEDULE_AHEAD", "later"),
            ("DEAD_LETTER_MAX_AGE", "a month"),
            ("DEAD_LETTER_MAX_LENGTH", "-1"),
            ("STUCK_JOB_TIMEOUT", "an hour"),
            ("QUEUE_MAX_BACKLOG", "-1"),
            ("REDIS_WAIT_REPLICAS", "-1"),
            ("REDIS_WAIT_TIMEOUT", "soon"),
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
    fn security_and_limit_settings_default_sensibly_and_name_bad_values() {
        let base = ("DATABASE_URL", "postgres://db/jobs");
        let s = settings(&[base]).unwrap();
        assert!(!s.auth.enabled());
        assert!(s.tls.is_none());
        assert_eq!(s.limits, LimitSettings::default());
        assert_eq!(s.limits.max_message_size, 4 * 1024 * 1024);

        let secret = "a-secret-of-at-least-32-bytes-0123";
        let s = settings(&[
            base,
            ("AUTH_JWT_SECRET", secret),
            ("AUTH_JWT_AUDIENCE", " translation-jobs "),
            ("GRPC_TLS_CERT", "/tls/tls.crt"),
            ("GRPC_TLS_KEY", "/tls/tls.key"),
            ("RPC_TIMEOUT", "5s"),
        ])
        .unwrap();
        assert!(s.auth.enabled());
        assert_eq!(s.auth.audience.as_deref(), Some("translation-jobs"));
        assert_eq!(s.tls.unwrap().client_ca, None);
        assert_eq!(s.limits.rpc_timeout, Duration::from_secs(5));

        let cases = [
            ("AUTH_JWT_SECRET", "short"),
            ("AUTH_JWT_PUBLIC_KEY", "/no/such/key.pem"),
            (
                "AUTH_JWT_PUBLIC_KEY",
                "-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----",
            ),
            ("GRPC_TLS_KEY", "/tls/only-a-key"),
            ("GRPC_TLS_CLIENT_CA", "/tls/ca.crt"),
            ("GRPC_MAX_MESSAGE_SIZE", "10"),
            ("GRPC_MAX_MESSAGE_SIZE", "4MiB"),
            ("RPC_TIMEOUT", "soon"),
            ("MAX_CONCURRENT_REQUESTS", "0"),
            ("MAX_WATCH_STREAMS", "-1"),
        ];
        for (name, value) in cases {
            let error = settings(&[base, (name, value)]).err().unwrap();
            let expected = if name == "GRPC_TLS_KEY" {
                "GRPC_TLS_CERT"
            } else {
                name
            };
            assert_eq!(error.name, expected, "{name}={value}");
            assert!(!error.to_string().contains("short"), "{error}");
        }
    }

    #[test]
    fn a_public_key_is_read_from_the_variable_or_from_a_file() {
        let pem = "-----BEGIN PUBLIC KEY-----\n\
            MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEkpsAPNQqfa48sYFHijbknPNUdr0Z\n\
            iG+OF7q2tm+EZ91SyhAPnSW0fkHDdkc6sIqKFQn6Q6OQdxpnEuAB5YIWTA==\n\
            -----END PUBLIC KEY-----\n";
        let base = ("DATABASE_URL", "postgres://db/jobs");
        let inline = settings(&[base, ("AUTH_JWT_PUBLIC_KEY", pem)]).unwrap();
        assert!(inline.auth.enabled());
        let escaped = pem.replace('\n', "\\n");
        assert!(settings(&[base, ("AUTH_JWT_PUBLIC_KEY", &escaped)]).is_ok());
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), pem).unwrap();
        let path = file.path().display().to_string();
        let from_file = settings(&[base, ("AUTH_JWT_PUBLIC_KEY", &path)]).unwrap();
        assert_eq!(
            from_file.auth.public_key.unwrap().algorithm(),
            jsonwebtoken::Algorithm::ES256
        );
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

    #[test]
    fn every_redis_topology_url_form_is_accepted() {
        for url in [
            "redis://:pw@cache:6379/0",
            "rediss://cache:6380/0",
            "redis-cluster://a:6379?node=b:6379&node=c:6379",
            "rediss-cluster://:pw@a:6379?node=b:6379",
            "redis-sentinel://:pw@s1:26379/0?sentinelServiceName=jobs&node=s2:26379",
            "rediss-sentinel://s1:26379/0?sentinelServiceName=jobs&sentinelPassword=x",
        ] {
            let s = settings(&[("DATABASE_URL", "postgres://db/jobs"), ("REDIS_URL", url)]);
            assert!(s.is_ok(), "{url}");
        }
        let error = settings(&[
            ("DATABASE_URL", "postgres://db/jobs"),
            ("REDIS_URL", "redis-sentinel://s1:26379/0?node=s2:26379"),
        ])
        .err()
        .unwrap();
        assert_eq!(error.name, "REDIS_URL");
        assert!(error.reason.contains("sentinelServiceName"));
    }

    #[test]
    fn waiting_for_replicas_is_off_by_default_and_bounded_by_the_command_timeout() {
        let s = settings(&[("DATABASE_URL", "postgres://db/jobs")]).unwrap();
        assert!(s.redis_wait.is_off());
        let s = settings(&[
            ("DATABASE_URL", "postgres://db/jobs"),
            ("REDIS_WAIT_REPLICAS", "1"),
            ("REDIS_WAIT_TIMEOUT", "250ms"),
        ])
        .unwrap();
        assert_eq!(s.redis_wait.replicas, 1);
        assert_eq!(s.redis_wait.timeout, Duration::from_millis(250));
        let error = settings(&[
            ("DATABASE_URL", "postgres://db/jobs"),
            ("REDIS_WAIT_REPLICAS", "1"),
            ("REDIS_WAIT_TIMEOUT", "5s"),
            ("REDIS_COMMAND_TIMEOUT", "5s"),
        ])
        .err()
        .unwrap();
        assert_eq!(error.name, "REDIS_WAIT_TIMEOUT");
    }
}
