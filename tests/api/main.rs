//! Black-box tests against a real PostgreSQL (a fresh database per test,
//! made by `#[sqlx::test]`) and a real Redis (unique queue names per test,
//! or a redis-server of the test's own when it must be stopped).

mod create;
mod outage;
mod process;
mod relay;
mod support;
mod validation;
