//! Fair shares: one authenticated caller at its limit of calls in flight or
//! of watch streams is refused with RESOURCE_EXHAUSTED; others are served.

use std::time::{Duration, Instant};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_stream::StreamExt;
use tonic::Code;
use translation_jobs::api::proto::{GetTranslationJobRequest, WatchTranslationJobRequest};

use crate::{
    auth::{SECRET, authorized, token},
    support::{PATIENCE, SHARED_REDIS_URL, TestApp, create_request, unique_queue},
};

async fn fair(database: PgConnectOptions) -> TestApp {
    let app = TestApp::spawn_with(
        database,
        SHARED_REDIS_URL,
        unique_queue(),
        &[
            ("AUTH_JWT_SECRET", SECRET),
            ("MAX_WATCH_STREAMS_PER_CALLER", "2"),
            ("MAX_CONCURRENT_REQUESTS_PER_CALLER", "2"),
        ],
    )
    .await;
    app.wait_ready().await;
    app
}

/// Creates a job as `user`; returns its id.
async fn create_as(app: &TestApp, user: &str) -> String {
    app.client
        .clone()
        .create_translation_job(authorized(create_request(), &token(user, None)))
        .await
        .unwrap()
        .into_inner()
        .id
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn one_caller_at_its_watch_stream_share_leaves_the_others_served(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let app = fair(database).await;
    let alice = create_as(&app, "alice").await;
    let bob = create_as(&app, "bob").await;
    let watch = |user: &'static str, id: String| {
        let mut client = app.client.clone();
        async move {
            client
                .watch_translation_job(authorized(
                    WatchTranslationJobRequest { id },
                    &token(user, None),
                ))
                .await
        }
    };
    let mut first = watch("alice", alice.clone()).await.unwrap().into_inner();
    let _second = watch("alice", alice.clone()).await.unwrap();
    let refused = watch("alice", alice.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("MAX_WATCH_STREAMS_PER_CALLER"),
        "{refused:?}"
    );
    let _bobs = watch("bob", bob).await.expect("another caller is served");

    // Alice closes one: her share comes back.
    assert!(first.next().await.is_some(), "the current state first");
    drop(first);
    let deadline = Instant::now() + PATIENCE;
    while watch("alice", alice.clone()).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the closed stream's share never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn one_caller_at_its_share_of_calls_in_flight_leaves_the_others_served(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let pool = PgPool::connect_with(database.clone()).await.unwrap();
    let app = fair(database).await;
    let alice = create_as(&app, "alice").await;
    let bob = create_as(&app, "bob").await;
    let get = |user: &'static str, id: String| {
        let mut client = app.client.clone();
        tokio::spawn(async move {
            client
                .get_translation_job(authorized(
                    GetTranslationJobRequest {
                        id,
                        ..Default::default()
                    },
                    &token(user, None),
                ))
                .await
        })
    };
    // Every read of a job waits behind this lock: calls stay in flight.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE translation_jobs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let held = [get("alice", alice.clone()), get("alice", alice.clone())];
    // Both of Alice's calls are in flight (waiting for the lock).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' \
               AND query LIKE '%translation_jobs%' AND pid <> pg_backend_pid()",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Alice's calls never reached PostgreSQL"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = get("alice", alice.clone()).await.unwrap().unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("MAX_CONCURRENT_REQUESTS_PER_CALLER"),
        "{refused:?}"
    );
    let bobs = get("bob", bob);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!bobs.is_finished(), "Bob's call is in flight, not refused");
    blocker.rollback().await.unwrap();
    bobs.await.unwrap().expect("another caller is served");
    for call in held {
        call.await.unwrap().expect("Alice's calls in flight finish");
    }
    get("alice", alice)
        .await
        .unwrap()
        .expect("her share came back");
    app.stop().await;
}
