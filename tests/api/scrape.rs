//! `/metrics` cannot starve the API: concurrent scrapes share one reading,
//! on a connection that is not the API's pool, and the reading never walks
//! a large outbox.

use std::time::{Duration, Instant};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use translation_jobs::api::proto::GetQueueStatsRequest;

use crate::support::{PATIENCE, SHARED_REDIS_URL, TestApp, http_get, unique_queue};

/// Sessions of this database waiting for a lock in a scrape's reading
/// (the outbox's size), by application name.
async fn waiting(pool: &PgPool, application: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock' \
           AND application_name = $1 AND query LIKE 'SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox%'",
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

/// The value of an unlabelled sample in Prometheus text.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_large_outbox_is_counted_up_to_ten_thousand_and_estimated_beyond(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let pool = PgPool::connect_with(database.clone()).await.unwrap();
    let mut app = TestApp::spawn_with(
        database,
        SHARED_REDIS_URL,
        unique_queue(),
        &[("RELAY_ENABLED", "false"), ("REAPER_ENABLED", "false")],
    )
    .await;
    app.wait_ready().await;
    let fill = |rows: i64| {
        sqlx::query(
            "INSERT INTO outbox (job_id, lane, payload, created_at) \
             SELECT gen_random_uuid(), 'normal', '{}', now() - interval '1 minute' \
             FROM generate_series(1, $1)",
        )
        .bind(rows)
        .execute(&pool)
    };

    fill(7).await.unwrap();
    let stats = app
        .client
        .get_queue_stats(GetQueueStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (stats.outbox_backlog, stats.outbox_backlog_estimated),
        (7, false)
    );
    let age = stats.oldest_unpublished_age.unwrap().seconds;
    assert!((59..120).contains(&age), "{age}");

    // 25,007 rows; ANALYZE settles PostgreSQL's live-row figure at once
    // (otherwise it follows the inserts within a second or so).
    fill(25_000).await.unwrap();
    sqlx::query("ANALYZE outbox").execute(&pool).await.unwrap();
    let stats = app
        .client
        .get_queue_stats(GetQueueStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(stats.outbox_backlog_estimated, "{stats:?}");
    assert_eq!(stats.outbox_backlog, 25_007);
    assert!(stats.backlog >= 25_007, "{stats:?}");
    let (status, body) = http_get(&format!("http://{}/metrics", app.http_addr))
        .await
        .expect("answered");
    assert_eq!(status, 200);
    assert_eq!(sample(&body, "translation_outbox_backlog"), Some(25_007.0));
    assert_eq!(
        sample(&body, "translation_outbox_backlog_estimated"),
        Some(1.0)
    );
    app.stop().await;
}
