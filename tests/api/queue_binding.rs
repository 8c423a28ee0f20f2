//! One database, one queue: the first service records its TRANSLATION_QUEUE
//! in the database; a service with another name refuses to start, naming
//! both and the deliberate way to change it (`rebind-queue`).

use std::time::Duration;

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use translation_jobs::app::{App, AppError};

use crate::support::{SHARED_REDIS_URL, TestApp, cleanup, redis_client, settings, unique_queue};

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_service_with_another_queue_name_refuses_to_start_until_rebound(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let first = TestApp::ready(database.clone()).await;
    let bound = first.queue.clone();
    first.stop().await;

    let other = unique_queue();
    let app = App::build(settings(database.clone(), SHARED_REDIS_URL, &other, &[]))
        .await
        .unwrap();
    let ran = tokio::time::timeout(Duration::from_secs(30), app.run(std::future::pending()))
        .await
        .expect("the service stops by itself");
    let Err(error @ AppError::QueueMismatch { .. }) = ran else {
        panic!("expected a queue mismatch, got {ran:?}");
    };
    let message = error.to_string();
    assert!(
        message.contains(bound.as_str())
            && message.contains(other.as_str())
            && message.contains("rebind-queue"),
        "{message}"
    );

    // Rebound deliberately, the new name starts and serves.
    let pool = PgPool::connect_with(database.clone()).await.unwrap();
    let before = translation_jobs::db::rebind_queue(&pool, other.as_str())
        .await
        .unwrap();
    assert_eq!(before.as_deref(), Some(bound.as_str()));
    let mut again = TestApp::spawn_with(database, SHARED_REDIS_URL, other.clone(), &[]).await;
    again.wait_ready().await;
    again.create().await;
    again.stop().await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    cleanup(&redis, &bound).await;
    cleanup(&redis, &other).await;
}
