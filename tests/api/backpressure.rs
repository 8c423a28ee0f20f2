//! Creates are refused with RESOURCE_EXHAUSTED while too many jobs wait.

use std::time::{Duration, Instant};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tonic::Code;
use translation_jobs::api::proto::BatchCreateTranslationJobsRequest;

use crate::{
    common::proxy::{Mode, Proxy},
    support::{
        SHARED_REDIS_URL, TestApp, TestRedis, cleanup, counts, create_request, redis_client,
        unique_queue, wait_for_messages,
    },
};

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn with_redis_down_the_outbox_alone_counts_and_nothing_is_stored_past_the_limit(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let redis_server = TestRedis::stopped();
    let mut app = TestApp::spawn_with(
        database.clone(),
        &redis_server.url(),
        unique_queue(),
        &[("QUEUE_MAX_BACKLOG", "5")],
    )
    .await;
    app.wait_ready().await;
    let pool = PgPool::connect_with(database).await.unwrap();

    for _ in 0..4 {
        app.client
            .create_translation_job(create_request())
            .await
            .unwrap();
    }
    let batch = app
        .client
        .batch_create_translation_jobs(BatchCreateTranslationJobsRequest {
            requests: vec![create_request(), create_request()],
        })
        .await
        .unwrap_err();
    assert_eq!(batch.code(), Code::ResourceExhausted);
    app.client
        .create_translation_job(create_request())
        .await
        .unwrap();
    let error = app
        .client
        .create_translation_job(create_request())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted);
    assert!(
        error.message().contains("QUEUE_MAX_BACKLOG=5"),
        "{}",
        error.message()
    );
    assert_eq!(
        counts(&pool).await.0,
        5,
        "the refused creates stored nothing"
    );
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn jobs_waiting_in_redis_count_too(_: PgPoolOptions, database: PgConnectOptions) {
    let queue = unique_queue();
    let mut app = TestApp::spawn_with(
        database,
        SHARED_REDIS_URL,
        queue.clone(),
        &[("QUEUE_MAX_BACKLOG", "3")],
    )
    .await;
    app.wait_ready().await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    for _ in 0..3 {
        app.client
            .create_translation_job(create_request())
            .await
            .unwrap();
    }
    // Published: they now wait in Redis, not in the outbox.
    wait_for_messages(&redis, &queue, translation_jobs::queue::Lane::Normal, 3).await;
    tokio::time::sleep(translation_jobs::backlog::SAMPLE_TTL).await;
    // The create that finds the reading stale asks for a new one and waits
    // for it only briefly (a busy machine may take longer); until the new
    // reading is there, creates are refused on the old one plus the jobs
    // accepted since. Every create here is refused; within a few seconds
    // one is refused on a reading that found the jobs in Redis.
    let mut message = String::new();
    for _ in 0..50 {
        let error = app
            .client
            .create_translation_job(create_request())
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::ResourceExhausted);
        message = error.message().to_owned();
        if message.contains("Redis lanes 3") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(message.contains("Redis lanes 3"), "{message}");
    cleanup(&redis, &queue).await;
    app.stop().await;
}

/// Creates read the last reading of the backlog: a Redis whose every answer
/// comes 700 ms late (past the reading's 500 ms limit for Redis) delays the
/// next reading, never a create. Before, the create that found the reading
/// stale held a lock across the reading, and it and every create behind it
/// waited for Redis, four times a second.
#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_redis_that_answers_slowly_delays_the_backlog_reading_not_the_creates(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let proxy = Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let mut app = TestApp::spawn_with(
        database,
        &format!("redis://{}/0", proxy.addr),
        unique_queue(),
        &[("QUEUE_MAX_BACKLOG", "100000")],
    )
    .await;
    app.wait_ready().await;
    app.create().await;

    proxy.set(Mode::Latency(Duration::from_millis(700)));
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut created = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let one = Instant::now();
        app.create().await;
        slowest = slowest.max(one.elapsed());
        created += 1;
    }
    assert!(
        slowest < Duration::from_millis(400),
        "the slowest of {created} creates took {slowest:?}"
    );
    proxy.set(Mode::Pass);
    app.stop().await;
}
