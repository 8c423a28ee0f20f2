//! Start-up errors say what and where: a refused PostgreSQL at once, with
//! its host and port; a missing database, role or password as a
//! configuration problem with the fix.

use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use translation_jobs::db::{self, DatabaseSettings};

fn settings(connect: PgConnectOptions) -> DatabaseSettings {
    DatabaseSettings {
        connect,
        pool_size: 2,
        acquire_timeout: Duration::from_secs(30),
        statement_timeout: Duration::from_secs(30),
    }
}

async fn described(connect: PgConnectOptions) -> (String, Duration) {
    let started = Instant::now();
    let error = db::migrate(&settings(connect.clone()))
        .await
        .expect_err("the migration cannot connect");
    (
        db::describe_connect_error(&connect, &error),
        started.elapsed(),
    )
}

fn server() -> PgConnectOptions {
    std::env::var("DATABASE_URL")
        .expect("DATABASE_URL")
        .parse()
        .expect("a PostgreSQL URL")
}

#[tokio::test]
async fn a_refused_port_is_named_at_once() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (message, took) = described(server().host("127.0.0.1").port(port)).await;
    assert!(
        message.contains(&format!("127.0.0.1:{port}")) && message.contains("refused"),
        "{message}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test]
async fn a_missing_database_is_a_configuration_problem_with_the_fix() {
    let (message, _) = described(server().database("no_such_database_for_this_test")).await;
    assert!(
        message.starts_with("configuration problem")
            && message.contains("no_such_database_for_this_test")
            && message.contains("createdb"),
        "{message}"
    );
}

#[tokio::test]
async fn a_missing_role_is_a_configuration_problem() {
    let (message, _) = described(server().username("no_such_role_for_this_test")).await;
    assert!(
        message.starts_with("configuration problem")
            && message.contains("no_such_role_for_this_test"),
        "{message}"
    );
}
