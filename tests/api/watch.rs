//! WatchTranslationJob: the current state, then one message per change made
//! by plain SQL (as workers make them), ending at a terminal status.

use std::time::Duration;

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_stream::StreamExt;
use tonic::Code;
use translation_jobs::api::proto::{
    CancelTranslationJobRequest, JobStatus, SubtaskSpec, WatchTranslationJobRequest,
};

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
async fn a_cancel_ends_the_watch_with_the_jobs_subtasks_cancelled_too(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database).await;
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
    next(&mut stream).await.unwrap().unwrap();

    // One transaction marks the job CANCELLED, then its subtasks.
    app.client
        .cancel_translation_job(CancelTranslationJobRequest { id: job.id })
        .await
        .unwrap();
    let mut last = None;
    while let Some(state) = next(&mut stream).await {
        last = Some(state.unwrap());
    }
    let last = last.expect("the cancel");
    assert_eq!(last.status(), JobStatus::Cancelled);
    assert!(
        last.subtasks
            .iter()
            .all(|subtask| subtask.status() == JobStatus::Cancelled),
        "the last message holds the subtasks as the cancel left them: {:?}",
        last.subtasks
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

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_watcher_sees_every_change_of_a_fast_worker_in_order(
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

    // A worker claims, finishes both subtasks and the job within a
    // millisecond: four commits, back to back on one connection.
    let mut conn = pool.acquire().await.unwrap();
    for statement in [
        "UPDATE translation_jobs SET status = 'IN_PROGRESS' WHERE id = $1::uuid",
        "UPDATE translation_subtasks SET status = 'COMPLETED' WHERE job_id = $1::uuid AND entity_id = '1'",
        "UPDATE translation_subtasks SET status = 'COMPLETED' WHERE job_id = $1::uuid AND entity_id = '2'",
        "UPDATE translation_jobs SET status = 'COMPLETED' WHERE id = $1::uuid",
    ] {
        sqlx::query(statement)
            .bind(&job.id)
            .execute(&mut *conn)
            .await
            .unwrap();
    }

    let mut seen = Vec::new();
    while let Some(state) = next(&mut stream).await {
        let state = state.unwrap();
        seen.push((state.status(), state.completed_subtasks));
    }
    assert_eq!(
        seen,
        [
            (JobStatus::InProgress, 0),
            (JobStatus::InProgress, 1),
            (JobStatus::InProgress, 2),
            (JobStatus::Completed, 2),
        ],
        "every change, in order, none coalesced"
    );
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_watcher_that_falls_far_behind_gets_a_fresh_snapshot_and_then_the_end(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database.clone()).await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let job = app.create().await;
    let mut stream = app
        .client
        .watch_translation_job(WatchTranslationJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    next(&mut stream).await.unwrap().unwrap();

    // Far more changes than a stream buffers, while the client reads none.
    let changes = translation_jobs::watch::EVENTS_PER_JOB as i32 * 3;
    for attempt in 1..=changes {
        sqlx::query("UPDATE translation_jobs SET error = $2 WHERE id = $1::uuid")
            .bind(&job.id)
            .bind(format!("change {attempt}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query(
        "UPDATE translation_jobs SET status = 'FAILED', error = 'last' WHERE id = $1::uuid",
    )
    .bind(&job.id)
    .execute(&pool)
    .await
    .unwrap();

    // What arrives is in order and ends with the job's real final state:
    // the changes it kept up with, then a snapshot, never a stale state
    // after a newer one.
    let mut errors = Vec::new();
    let mut last = None;
    while let Some(state) = next(&mut stream).await {
        let state = state.unwrap();
        if let Some(n) = state.error.strip_prefix("change ") {
            errors.push(n.parse::<i32>().unwrap());
        }
        last = Some(state);
    }
    let last = last.expect("at least the end");
    assert_eq!(
        (last.status(), last.error.as_str()),
        (JobStatus::Failed, "last")
    );
    assert!(
        errors.windows(2).all(|w| w[0] < w[1]),
        "in order: {errors:?}"
    );
    app.stop().await;
}
