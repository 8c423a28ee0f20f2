//! Typed settings read from the environment, with the defaults as named
//! constants. Connection strings carry passwords: they are never printed,
//! and `Settings` has no `Debug` that would show them.
//!
//! One file per concern, each reading its variables and holding their
//! defaults; this module only assembles them into [`Settings`]:
//! - `database`: `DATABASE_URL`, the pool, statement and acquire timeouts.
//! - `redis`: `REDIS_URL`, the queue's name, command timeout, replica waits.
//! - `relay`: `RELAY_*`.
//! - `listen`: the listeners' addresses ([`ListenAddr`]).
//! - `auth`, `tls`: bearer tokens and [`AuthMode`]; TLS on gRPC.
//! - `limits`: message size, deadline, calls and watch streams.
//! - `create`: subtasks per job, batch size, group commits, backpressure.
//! - `reaper`, `retention`, `retries`: the stuck-job rescue, deletion of
//!   finished jobs and dead letters, failed attempts and schedules.
//! - `parse`: reading one variable (durations, bounded numbers, booleans).

mod auth;
mod create;
mod database;
mod limits;
mod listen;
mod parse;
mod reaper;
mod redis;
mod relay;
mod retention;
mod retries;
#[cfg(test)]
mod tests;
mod tls;

use std::time::Duration;

pub use auth::AuthMode;
pub use create::{
    DEFAULT_CREATE_GROUP_COMMITS, DEFAULT_CREATE_GROUP_MAX_JOBS, DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_SUBTASKS_PER_JOB, DEFAULT_QUEUE_MAX_BACKLOG,
};
pub use database::{
    DEFAULT_DATABASE_ACQUIRE_TIMEOUT, DEFAULT_DATABASE_POOL_SIZE,
    DEFAULT_DATABASE_STATEMENT_TIMEOUT,
};
pub use limits::{MAX_MAX_MESSAGE_SIZE, MIN_MAX_MESSAGE_SIZE};
pub use listen::{DEFAULT_GRPC_ADDR, DEFAULT_HTTP_ADDR, ListenAddr};
use parse::{boolean, duration};
pub use reaper::{
    DEFAULT_REAPER_INTERVAL, DEFAULT_STUCK_JOB_TIMEOUT, REAPER_BATCH_SIZE, REAPER_LOST_SCAN,
};
pub use redis::{
    DEFAULT_QUEUE, DEFAULT_REDIS_COMMAND_TIMEOUT, DEFAULT_REDIS_URL, DEFAULT_REDIS_WAIT_REPLICAS,
    DEFAULT_REDIS_WAIT_TIMEOUT, MAX_REDIS_WAIT_REPLICAS,
};
pub use relay::{
    DEFAULT_RELAY_BATCH_SIZE, DEFAULT_RELAY_CLAIMERS, DEFAULT_RELAY_LINGER,
    DEFAULT_RELAY_MARKER_TTL, DEFAULT_RELAY_MAX_BACKOFF, DEFAULT_RELAY_POLL_INTERVAL,
    MAX_RELAY_BATCH_SIZE,
};
pub use retention::{
    DEFAULT_DEAD_LETTER_MAX_AGE, DEFAULT_DEAD_LETTER_MAX_LENGTH, DEFAULT_RETAIN_CANCELLED,
    DEFAULT_RETAIN_COMPLETED, DEFAULT_RETAIN_FAILED, RETENTION_BATCH_SIZE, RETENTION_MAX_BATCHES,
    RETENTION_PAUSE_RATIO,
};
pub use retries::{
    DEFAULT_JOB_MAX_ATTEMPTS, DEFAULT_MAX_SCHEDULE_AHEAD, DEFAULT_RETRY_BACKOFF_BASE,
    DEFAULT_RETRY_BACKOFF_MAX, RetrySettings,
};

use crate::{
    api::{auth::AuthSettings, limits::LimitSettings, tls::TlsSettings},
    db::DatabaseSettings,
    jobs::GroupCommitSettings,
    outbox::RelaySettings,
    queue::{QueueName, RedisSettings, ReplicaWait},
    reaper::ReaperSettings,
    telemetry::LogFormat,
};

pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(8);

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
    /// The variables are read in a fixed order; the first bad one is named.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());

        let connect = database::connect_options(&get)?;
        let redis_url = redis::redis_url(&get)?;
        let queue = redis::queue_name(&get)?;
        let database = database::database_settings(&get, connect)?;
        let call_timeout = database.call_timeout();
        let acquire_timeout = database.acquire_timeout;
        let (redis_command_timeout, redis_wait) = redis::command_timeout_and_wait(&get)?;
        let marker_ttl = relay::marker_ttl(&get, redis_command_timeout)?;

        let grpc_addr = listen::address(&get, "GRPC_ADDR", DEFAULT_GRPC_ADDR)?;
        let http_addr = listen::address(&get, "HTTP_ADDR", DEFAULT_HTTP_ADDR)?;
        let auth = auth::auth_settings(&get)?;
        let auth_mode = auth::auth_mode(
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
                Some(_) => Some(listen::address(&get, "MANAGEMENT_ADDR", "")?),
            },
            relay_enabled: boolean(&get, "RELAY_ENABLED", true)?,
            relay: relay::relay_settings(&get, marker_ttl, call_timeout)?,
            max_subtasks_per_job: create::max_subtasks_per_job(&get)?,
            max_batch_size: create::max_batch_size(&get)?,
            create_group: create::create_group(&get, acquire_timeout, call_timeout)?,
            queue_max_backlog: create::queue_max_backlog(&get)?,
            retention: retention::retention_settings(&get, call_timeout)?,
            reaper_enabled: boolean(&get, "REAPER_ENABLED", true)?,
            reaper: reaper::reaper_settings(&get, call_timeout)?,
            retries: retries::retry_settings(&get)?,
            dead_lane: retention::dead_lane_settings(&get)?,
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
            tls: tls::tls_settings(&get)?,
            limits: limits::limit_settings(&get)?,
        })
    }
}
