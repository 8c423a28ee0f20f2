//! Redis outages: jobs are accepted meanwhile and each reaches Redis exactly
//! once after it returns.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use translation_jobs::queue::Lane;

use crate::support::{
    PATIENCE, TestApp, TestRedis, counts, create_request, messages, redis_client, unique_queue,
    wait_for_messages,
};

async fn create(app: &mut TestApp, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let job = app
            .client
            .create_translation_job(create_request())
            .await
            .expect("create succeeds whatever Redis does")
            .into_inner();
        ids.push(job.id);
    }
    ids
}

async fn wait_for_empty_outbox(pool: &PgPool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while counts(pool).await.2 != 0 {
        assert!(std::time::Instant::now() < deadline, "outbox never drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_exactly_once(found: &[String], created: &[String]) {
    assert_eq!(found.len(), created.len(), "one message per job");
    let distinct: HashSet<&String> = found.iter().collect();
    assert_eq!(distinct.len(), found.len(), "no duplicates");
    let expected: HashSet<&String> = created.iter().collect();
    assert_eq!(distinct, expected, "no job lost");
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn jobs_created_while_redis_is_down_at_start_up_arrive_once_it_starts(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut redis_server = TestRedis::stopped();
    let mut app =
        TestApp::spawn_with(database.clone(), &redis_server.url(), unique_queue(), &[]).await;
    app.wait_ready().await;
    let pool = PgPool::connect_with(database).await.unwrap();

    let created = create(&mut app, 20).await;
    assert_eq!(counts(&pool).await.2, 20, "jobs wait in the outbox");

    redis_server.start().await;
    let redis = redis_client(&redis_server.url()).await;
    wait_for_messages(&redis, &app.queue, Lane::Normal, created.len()).await;
    wait_for_empty_outbox(&pool).await;

    let found: Vec<String> = messages(&redis, &app.queue, Lane::Normal)
        .await
        .into_iter()
        .map(|m| m.job_id)
        .collect();
    assert_eq!(found, created, "all of them, once, in order");
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn redis_stopped_during_a_stream_of_creates_loses_and_duplicates_nothing(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut redis_server = TestRedis::started().await;
    let app = TestApp::spawn_with(database.clone(), &redis_server.url(), unique_queue(), &[]).await;
    app.wait_ready().await;
    let pool = PgPool::connect_with(database).await.unwrap();

    // Creates run without pause while Redis is killed and started again.
    let made = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let stream = {
        let mut client = app.client.clone();
        let (made, done) = (made.clone(), done.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let job = client
                    .create_translation_job(create_request())
                    .await
                    .expect("create succeeds whatever Redis does")
                    .into_inner();
                ids.push(job.id);
                made.fetch_add(1, Ordering::Relaxed);
            }
            ids
        })
    };
    let wait_for_more = |more: usize| {
        let made = made.clone();
        async move {
            let target = made.load(Ordering::Relaxed) + more;
            let deadline = std::time::Instant::now() + PATIENCE;
            while made.load(Ordering::Relaxed) < target {
                assert!(std::time::Instant::now() < deadline, "creates stalled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    wait_for_more(30).await;
    redis_server.stop();
    wait_for_more(50).await;
    assert!(
        counts(&pool).await.2 > 0,
        "jobs created during the outage wait in the outbox"
    );
    redis_server.start().await;
    wait_for_more(30).await;
    done.store(true, Ordering::Relaxed);
    let created = stream.await.unwrap();

    let redis = redis_client(&redis_server.url()).await;
    wait_for_messages(&redis, &app.queue, Lane::Normal, created.len()).await;
    wait_for_empty_outbox(&pool).await;
    let found: Vec<String> = messages(&redis, &app.queue, Lane::Normal)
        .await
        .into_iter()
        .map(|m| m.job_id)
        .collect();
    assert_exactly_once(&found, &created);
    app.stop().await;
}
