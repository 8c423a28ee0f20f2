//! The command line. `translation-jobs` (or `translation-jobs serve`) runs
//! the service; the other commands are for operators and scripts: they read
//! the same environment as the service (`DATABASE_URL`, `REDIS_URL`,
//! `TRANSLATION_QUEUE`, ...) and work on PostgreSQL and Redis directly, so
//! no running service is needed. People get tables, scripts `--json` (the
//! JSON of the HTTP API). Errors go to stderr, with exit status 1 (2 for a
//! usage or configuration mistake).
//!
//! The commands call the same domain functions as the API (`jobs::*`,
//! `stats::read_stats`); this module only parses arguments and prints.

mod jobs;
mod stats;
mod table;

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use sqlx::PgPool;

use crate::{
    config::{ConfigError, Settings},
    db,
    jobs::{JobError, RedriveError, fields::FieldError},
    queue::{QueueError, RedisQueue},
    redact::redact_url,
    telemetry::error_chain,
};

/// Accepts translation jobs over gRPC and HTTP, stores them in PostgreSQL
/// and hands them to workers through Redis. Without a command: `serve`.
#[derive(Debug, Parser)]
#[command(name = "translation-jobs", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Print JSON (the HTTP API's shapes) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default): gRPC on GRPC_ADDR, HTTP on HTTP_ADDR.
    Serve,
    /// Queue statistics: lanes, outbox backlog and its oldest age, dead
    /// letters, Redis's eviction policy.
    Stats,
    /// One job with its subtasks.
    Get {
        /// The job's id (a UUID).
        id: String,
    },
    /// Jobs, newest first.
    List {
        /// Only jobs in this status: pending, in_progress, completed, failed
        /// or cancelled.
        #[arg(long)]
        status: Option<String>,
        /// Only jobs of this novel (a UUID).
        #[arg(long)]
        novel_id: Option<String>,
        /// At most this many jobs (at most 500).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Cancel a PENDING or IN_PROGRESS job.
    Cancel {
        /// The job's id (a UUID).
        id: String,
    },
    /// Queue a FAILED or CANCELLED job again, as a new attempt.
    Retry {
        /// The job's id (a UUID).
        id: String,
    },
    /// Queue dead letters again (oldest first): each job still FAILED at its
    /// message's attempt becomes PENDING under a new attempt, exactly once.
    RedriveDead {
        /// At most this many dead letters (at most 1000).
        #[arg(long, default_value_t = crate::jobs::DEFAULT_REDRIVE_LIMIT)]
        limit: usize,
    },
    /// Run the database migrations and exit (for a Kubernetes init job or
    /// Helm hook).
    Migrate,
    /// Make the database serve TRANSLATION_QUEUE from now on, instead of the
    /// queue it was set up with. Stop every replica of the old name first,
    /// and drain or move its lanes: its relays would publish here no more.
    RebindQueue,
}

/// Why a command failed; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("configuration error")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Usage(#[from] FieldError),
    #[error("cannot reach Redis at {url} within {timeout}")]
    RedisUnreachable {
        url: String,
        timeout: humantime::Duration,
        source: QueueError,
    },
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Redrive(#[from] RedriveError),
    #[error("cannot run the migrations")]
    Migrate(#[source] sqlx::Error),
    #[error("cannot write the output")]
    Output(#[from] std::io::Error),
}

impl CliError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Config(_) | CliError::Usage(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }

    /// The message for stderr: the error with its causes, and a hint where
    /// one helps.
    fn message(&self) -> String {
        let mut text = match self {
            CliError::Job(JobError::Database(error))
            | CliError::Redrive(RedriveError::Job(JobError::Database(error))) => {
                format!("PostgreSQL failed: {error}")
            }
            other => error_chain(other),
        };
        if text.contains("does not exist") && text.contains("relation") {
            text.push_str(
                " (is the database migrated? `translation-jobs migrate` or a start of the service does it)",
            );
        }
        text
    }
}

/// What the admin commands work on.
pub(crate) struct Context {
    pub settings: Settings,
    pub pool: PgPool,
    pub json: bool,
}

impl Context {
    /// Longest one database call of a command may take.
    pub fn call_timeout(&self) -> Duration {
        self.settings.database.call_timeout()
    }

    /// A Redis client, connected, or an error naming the (redacted) URL.
    pub async fn redis(&self) -> Result<RedisQueue, CliError> {
        let timeout = self.settings.redis.command_timeout;
        let unreachable = |source| CliError::RedisUnreachable {
            url: redact_url(&self.settings.redis.url),
            timeout: timeout.into(),
            source,
        };
        let queue = RedisQueue::connect(&self.settings.redis, self.settings.queue.clone())
            .map_err(unreachable)?;
        if let Err(error) = queue.wait_connected(timeout).await {
            queue.quit().await;
            return Err(unreachable(error));
        }
        Ok(queue)
    }
}

/// Runs an admin command (anything but `serve`) and says how it went.
pub async fn run(command: Command, json: bool) -> ExitCode {
    match run_command(command, json).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("translation-jobs: {}", error.message());
            error.exit_code()
        }
    }
}

async fn run_command(command: Command, json: bool) -> Result<(), CliError> {
    let settings = Settings::for_admin_command()?;
    if let Command::Migrate = command {
        return migrate(&settings, json).await;
    }
    let pool = db::pool(&settings.database);
    let context = Context {
        settings,
        pool,
        json,
    };
    let result = match command {
        Command::Serve | Command::Migrate => Ok(()),
        Command::RebindQueue => rebind_queue(&context).await,
        Command::Stats => stats::stats(&context).await,
        Command::Get { id } => jobs::get(&context, &id).await,
        Command::List {
            status,
            novel_id,
            limit,
        } => jobs::list(&context, status.as_deref(), novel_id.as_deref(), limit).await,
        Command::Cancel { id } => jobs::cancel(&context, &id).await,
        Command::Retry { id } => jobs::retry(&context, &id).await,
        Command::RedriveDead { limit } => jobs::redrive(&context, limit).await,
    };
    context.pool.close().await;
    result
}

/// Runs the migrations once, as the service does at start.
async fn migrate(settings: &Settings, json: bool) -> Result<(), CliError> {
    db::migrate(&settings.database)
        .await
        .map_err(CliError::Migrate)?;
    let latest = db::MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({ "migrated": true, "version": latest }),
        )
        .map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        writeln!(out, "database migrated (schema version {latest})")?;
    }
    Ok(())
}

/// `rebind-queue`: the database serves this process's TRANSLATION_QUEUE.
async fn rebind_queue(context: &Context) -> Result<(), CliError> {
    let queue = context.settings.queue.as_str();
    let before = db::rebind_queue(&context.pool, queue)
        .await
        .map_err(|error| CliError::Job(JobError::Database(error)))?;
    let mut out = std::io::stdout().lock();
    if context.json {
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({ "queue": queue, "before": before }),
        )
        .map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        match before {
            Some(before) if before != queue => {
                writeln!(out, "the database serves the queue {queue} (was {before})")?
            }
            _ => writeln!(out, "the database serves the queue {queue}")?,
        }
    }
    Ok(())
}

use std::io::Write as _;

/// Prints `value` as one line of JSON.
pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}
