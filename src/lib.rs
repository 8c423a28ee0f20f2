//! translation-jobs: accepts translation jobs over gRPC, stores each with its
//! subtasks in PostgreSQL, and hands it to the Python workers through a Redis
//! list, using a transactional outbox so that no Redis outage, crash or
//! restart loses or strands an accepted job.
//!
//! # Layout
//! - [`config`]: typed settings from the environment, defaults as constants;
//!   one file per concern, `config` itself only assembles them.
//! - [`app`]: builds the pools, servers and background tasks; runs them until
//!   shutdown through one cancellation token.
//! - [`db`]: the PostgreSQL pool, migrations, and the time limit on every
//!   call.
//! - [`api`]: gRPC and HTTP handlers: requests into domain types, errors into
//!   statuses; bearer-token auth, TLS and the limits of the job service;
//!   the layer that counts, times and traces every call. A one-way stack
//!   of modules (see its doc).
//! - [`proto`]: the code generated from `proto/translation/v1`, below both
//!   `api` and `health`; [`codec`]: its gRPC codec (prost with small
//!   buffers).
//! - [`jobs`]: the domain: job and subtask types, the create statement
//!   (job + subtasks + outbox row), queries.
//! - [`outbox`]: the relay that moves committed outbox rows to Redis, and
//!   the generation of Redis's data that tells when messages were lost.
//! - [`queue`]: the Redis side: message format, lanes, idempotent push,
//!   lengths, health.
//! - [`watch`]: the process's LISTEN connection, the record of the jobs it
//!   watches (`watched_jobs`, which the change triggers consult) and the
//!   fan-out of job changes to the watch streams (gRPC WatchTranslationJob,
//!   HTTP events).
//! - [`reaper`]: rescues jobs stuck IN_PROGRESS, dead-letters those out of
//!   attempts.
//! - [`dead_lane`]: keeps the dead lane bounded by age and length.
//! - [`retention`]: deletes finished jobs once past their status's
//!   retention, in bounded batches.
//! - [`backlog`]: backpressure on creates.
//! - [`stats`]: what waits where (lanes, outbox, dead letters), one reading
//!   shared by the API, the dashboard and the CLI.
//! - [`cli`]: the command line: `serve` and the admin commands that work on
//!   PostgreSQL and Redis directly.
//! - [`health`]: liveness and readiness, the database probe, the gRPC
//!   health service.
//! - [`supervise`]: restarts background loops that fail; their heartbeats.
//! - [`wake`]: wakes a background loop early.
//! - [`metrics`]: counters, gauges and histograms for Prometheus
//!   (`prometheus-client`).
//! - [`telemetry`]: logging set-up, OpenTelemetry traces over OTLP.
//! - [`redact`]: connection strings with their passwords masked, for logs.
//!
//! Data flows one way: `api -> jobs -> outbox -> queue`. `docs/design.md`
//! (Modules) draws every file, and the paths of a create and of a drain;
//! `tests/layout.rs` checks the layering and the length of every file.

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod backlog;
pub mod cli;
pub mod codec;
pub mod config;
pub mod db;
pub mod dead_lane;
pub mod health;
pub mod jobs;
pub mod metrics;
pub mod outbox;
pub mod proto;
pub mod queue;
pub mod reaper;
pub mod redact;
pub mod retention;
pub mod stats;
pub mod supervise;
pub mod telemetry;
pub mod wake;
pub mod watch;
