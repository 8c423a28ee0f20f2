//! Black-box tests against a real PostgreSQL (a fresh database per test,
//! made by `#[sqlx::test]`) and a real Redis (unique queue names per test,
//! or a redis-server of the test's own when it must be stopped).

#[path = "../common/mod.rs"]
#[allow(dead_code)]
mod common;

mod auth;
mod auth_mode;
mod backpressure;
mod binary;
mod cli;
mod cluster;
mod create;
mod cross_site;
mod dead_lane;
mod dropped_connections;
mod events;
mod exactly_once;
mod group_commit;
mod health;
mod http_json;
mod inflation;
mod lifecycle;
mod limits;
mod list_pages;
mod marker_expiry;
mod metrics;
mod notifications;
mod online_migration;
mod outage;
mod plans;
mod process;
mod properties;
mod queue_binding;
mod reaper;
mod redrive;
mod relay;
mod relay_rounds;
mod replicas;
mod retention;
mod retries;
mod schedules;
mod scrape;
mod secrets;
mod sentinel;
mod shares;
mod startup_errors;
mod support;
mod tls;
mod topology;
mod traces;
mod transport;
mod unknown_commit;
mod validation;
mod watch;
mod worker_guard;
