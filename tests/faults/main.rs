//! Fault injection: the service binary run against a PostgreSQL and a
//! Redis of each test's own, under load, while the test breaks things:
//! PostgreSQL restarts, network faults on either path, Redis refusing
//! writes, kill -9 of replicas, a pinned xmin horizon. Each test counts
//! what the callers were told, what the database holds and what Redis holds
//! (see `count`), prints the tally, and fails on any acknowledged job lost
//! or duplicated.
//!
//! The tests run one at a time (they share two cores with the service
//! processes they start); `soak` is the long mixed run behind
//! `scripts/soak.sh`, ignored in the normal test run.

#[path = "../common/mod.rs"]
#[allow(dead_code)]
mod common;

mod bloat;
mod commit_cuts;
mod consumer;
mod count;
mod crashes;
mod load;
mod network;
mod postgres_restart;
mod redis_auth;
mod redis_writes;
mod rig;
mod service;
mod soak;
