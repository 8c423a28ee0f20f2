//! `/metrics` cannot starve the API: concurrent scrapes share one reading,
//! on a connection that is not the API's pool.

use std::time::{Duration, Instant};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::support::{PATIENCE, TestApp, http_get};

/// Sessions of this database waiting for a lock in a scrape's reading
/// (the outbox count), by application name.
async fn waiting(pool: &PgPool, application: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock' \
           AND application_name = $1 AND query LIKE 'SELECT count(*)%FROM outbox'",
    )
    .bind(application)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn concurrent_scrapes_share_one_reading_on_a_connection_of_their_own(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let pool = PgPool::connect_with(database.clone()).await.unwrap();
    let app = TestApp::ready(database).await;
    let url = format!("http://{}/metrics", app.http_addr);

    // The outbox count waits behind this lock, so every scrape's reading
    // stays in flight until the test lets go.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let scrapes: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { http_get(&url).await })
        })
        .collect();
    let deadline = Instant::now() + PATIENCE;
    while waiting(&pool, "translation-jobs-metrics").await < 1 {
        assert!(Instant::now() < deadline, "no scrape reached PostgreSQL");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Give the other 19 the time to pile up, were they not shared.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        waiting(&pool, "translation-jobs-metrics").await,
        1,
        "one reading in flight"
    );
    assert_eq!(
        waiting(&pool, "translation-jobs").await,
        0,
        "no scrape holds one of the API's connections"
    );
    blocker.rollback().await.unwrap();
    for scrape in scrapes {
        let (status, body) = scrape.await.unwrap().expect("answered");
        assert_eq!(status, 200);
        assert!(body.contains("translation_outbox_backlog"), "{body}");
    }
    app.stop().await;
}
