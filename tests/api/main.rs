//! Black-box tests against a real PostgreSQL (a fresh database per test,
//! made by `#[sqlx::test]`) and a real Redis (unique queue names per test,
//! or a redis-server of the test's own when it must be stopped).

mod backpressure;
mod create;
mod exactly_once;
mod group_commit;
mod health;
mod http_json;
mod lifecycle;
mod outage;
mod process;
mod proxy;
mod reaper;
mod relay;
mod relay_rounds;
mod support;
mod validation;
mod watch;
