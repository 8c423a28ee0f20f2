//! WatchTranslationJob: the current state, then one message per change made
//! by plain SQL (as workers make them), ending at a terminal status.

use std::time::Duration;

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_stream::StreamExt;
use tonic::Code;
use translation_jobs::api::proto::{JobStatus, SubtaskSpec, WatchTranslationJobRequest};

use crate::support::{TestApp, create_request};

const PATIENCE: Duration = Duration::from_secs(10);

type Events = tonic::Streaming<translation_jobs::api::proto::TranslationJob>;

async fn next(
    stream: &mut Events,
) -> Option<Result<translation_jobs::api::proto::TranslationJob, tonic::Status>> {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("an event in time")
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_watcher_sees_each_change_workers_make_and_the_end(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database.clone()).await;
    let pool = PgPool::connect_with(database).await.unwrap();

    let mut request = create_request();
    request.subtasks = (1..=2)
        .map(|i| SubtaskSpec {
            entity_type: "chapter".into(),
            entity_id: i.to_string(),
        })
        .collect();
    let job = app
        .client
        .create_translation_job(request)
        .await
        .unwrap()
        .into_inner();
    let mut stream = app
        .client
        .watch_translation_job(WatchTranslationJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();

    let first = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(first.status(), JobStatus::Pending);
    assert_eq!((first.completed_subtasks, first.total_subtasks), (0, 2));

    let sql = |statement: &'static str| {
        let pool = pool.clone();
        let id = job.id.clone();
        async move {
            sqlx::query(statement)
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    sql("UPDATE translation_jobs SET status = 'IN_PROGRESS' WHERE id = $1::uuid").await;
    let claimed = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(claimed.status(), JobStatus::InProgress);

    sql("UPDATE translation_subtasks SET status = 'COMPLETED' WHERE job_id = $1::uuid AND entity_id = '1'").await;
    let progress = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(
        (progress.completed_subtasks, progress.total_subtasks),
        (1, 2)
    );

    sql("UPDATE translation_subtasks SET status = 'COMPLETED' WHERE job_id = $1::uuid AND entity_id = '2'").await;
    let progress = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(progress.completed_subtasks, 2);

    sql("UPDATE translation_jobs SET status = 'COMPLETED' WHERE id = $1::uuid").await;
    let done = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(done.status(), JobStatus::Completed);
    assert!(
        next(&mut stream).await.is_none(),
        "the stream ends at a terminal status"
    );
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn watching_a_finished_job_sends_its_state_and_ends(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database.clone()).await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let job = app.create().await;
    sqlx::query("UPDATE translation_jobs SET status = 'FAILED', error = 'x' WHERE id = $1::uuid")
        .bind(&job.id)
        .execute(&pool)
        .await
        .unwrap();
    let mut stream = app
        .client
        .watch_translation_job(WatchTranslationJobRequest { id: job.id })
        .await
        .unwrap()
        .into_inner();
    let only = stream.next().await.unwrap().unwrap();
    assert_eq!(only.status(), JobStatus::Failed);
    assert!(stream.next().await.is_none());

    let missing = app
        .client
        .watch_translation_job(WatchTranslationJobRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn many_watchers_of_one_job_all_see_the_end(_: PgPoolOptions, database: PgConnectOptions) {
    let mut app = TestApp::ready(database.clone()).await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let job = app.create().await;
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut stream = app
            .client
            .watch_translation_job(WatchTranslationJobRequest { id: job.id.clone() })
            .await
            .unwrap()
            .into_inner();
        stream.next().await.unwrap().unwrap();
        streams.push(stream);
    }
    sqlx::query("UPDATE translation_jobs SET status = 'CANCELLED' WHERE id = $1::uuid")
        .bind(&job.id)
        .execute(&pool)
        .await
        .unwrap();
    for mut stream in streams {
        let last = tokio::time::timeout(PATIENCE, async {
            let mut last = None;
            while let Some(event) = stream.next().await {
                last = Some(event.unwrap());
            }
            last
        })
        .await
        .expect("every stream ends");
        assert_eq!(last.unwrap().status(), JobStatus::Cancelled);
    }
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn open_watch_streams_end_at_shutdown_and_do_not_hold_it_up(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database).await;
    let job = app.create().await;
    let mut stream = app
        .client
        .watch_translation_job(WatchTranslationJobRequest { id: job.id })
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap();

    tokio::time::timeout(Duration::from_secs(5), app.stop())
        .await
        .expect("shutdown does not wait for open streams");
    let end = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("the stream ends");
    assert!(
        !matches!(end, Some(Ok(_))),
        "no further job state after shutdown"
    );
}
