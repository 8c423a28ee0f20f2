//! Cancel, retry, batch create, listing and queue statistics.

use std::collections::HashSet;

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tonic::Code;
use translation_jobs::{
    api::proto::{
        BatchCreateTranslationJobsRequest, CancelTranslationJobRequest, GetQueueStatsRequest,
        JobStatus, ListTranslationJobsRequest, RetryTranslationJobRequest,
    },
    queue::Lane,
};

use crate::support::{
    SHARED_REDIS_URL, TestApp, counts, create_request, messages, redis_client, wait_for_messages,
};

const ALL_STATUSES: [&str; 5] = ["PENDING", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED"];

/// Puts a job in a status the way a worker would: plain SQL.
async fn set_status(pool: &PgPool, id: &str, status: &str) {
    sqlx::query("UPDATE translation_jobs SET status = $2 WHERE id = $1::uuid")
        .bind(id)
        .bind(status)
        .execute(pool)
        .await
        .unwrap();
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn cancel_applies_to_pending_and_in_progress_jobs_only(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database.clone()).await;
    let pool = PgPool::connect_with(database).await.unwrap();

    for status in ALL_STATUSES {
        let job = app.create().await;
        set_status(&pool, &job.id, status).await;
        let result = app
            .client
            .cancel_translation_job(CancelTranslationJobRequest { id: job.id.clone() })
            .await;
        if matches!(status, "PENDING" | "IN_PROGRESS") {
            let cancelled = result
                .unwrap_or_else(|e| panic!("{status}: {e}"))
                .into_inner();
            assert_eq!(cancelled.status(), JobStatus::Cancelled, "{status}");
            assert_eq!(cancelled.subtasks[0].status(), JobStatus::Cancelled);
        } else {
            let error = result.expect_err(status);
            assert_eq!(error.code(), Code::FailedPrecondition, "{status}");
            assert!(error.message().contains(status), "{}", error.message());
        }
    }
    let missing = app
        .client
        .cancel_translation_job(CancelTranslationJobRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let malformed = app
        .client
        .cancel_translation_job(CancelTranslationJobRequest { id: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn retry_requeues_failed_and_cancelled_jobs_only(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database.clone()).await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let redis = redis_client(SHARED_REDIS_URL).await;

    let mut retried = Vec::new();
    let mut published = 0;
    for status in ALL_STATUSES {
        let job = app.create().await;
        // The job's first message is out before it fails: a retry drops a
        // message still waiting in the outbox, and the check below counts
        // both.
        published += 1;
        wait_for_messages(&redis, &app.queue, Lane::Normal, published).await;
        set_status(&pool, &job.id, status).await;
        sqlx::query("UPDATE translation_jobs SET error = 'boom', attempts = 2 WHERE id = $1::uuid")
            .bind(&job.id)
            .execute(&pool)
            .await
            .unwrap();
        let result = app
            .client
            .retry_translation_job(RetryTranslationJobRequest { id: job.id.clone() })
            .await;
        if matches!(status, "FAILED" | "CANCELLED") {
            let job = result
                .unwrap_or_else(|e| panic!("{status}: {e}"))
                .into_inner();
            assert_eq!(job.status(), JobStatus::Pending, "{status}");
            assert_eq!(
                job.attempts, 3,
                "a retry is a new attempt, never an old one again"
            );
            assert_eq!(job.error, "");
            retried.push(job.id);
            published += 1;
        } else {
            let error = result.expect_err(status);
            assert_eq!(error.code(), Code::FailedPrecondition, "{status}");
        }
    }
    // Five creates and two retries: seven messages, the retried jobs twice,
    // the second time for their new attempt.
    let found = wait_for_messages(&redis, &app.queue, Lane::Normal, 7).await;
    for id in &retried {
        let attempts: Vec<i32> = found
            .iter()
            .filter(|m| &m.job_id == id)
            .map(|m| m.attempt)
            .collect();
        assert_eq!(attempts, [0, 3], "{id}");
    }
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_batch_is_created_whole_or_not_at_all(_: PgPoolOptions, database: PgConnectOptions) {
    let mut app = TestApp::ready(database.clone()).await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let redis = redis_client(SHARED_REDIS_URL).await;

    let mut bad = create_request();
    bad.target_lang = "not a language".into();
    let error = app
        .client
        .batch_create_translation_jobs(BatchCreateTranslationJobsRequest {
            requests: vec![create_request(), bad, create_request()],
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().starts_with("requests[1].target_lang: "),
        "{}",
        error.message()
    );
    assert_eq!(counts(&pool).await, (0, 0, 0));

    // A conflict found by the database rolls back the jobs before it.
    let mut first = create_request();
    first.request_id = "same".into();
    let mut clash = first.clone();
    clash.target_lang = "fr".into();
    let error = app
        .client
        .batch_create_translation_jobs(BatchCreateTranslationJobsRequest {
            requests: vec![create_request(), first.clone(), clash],
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists);
    assert!(
        error.message().starts_with("requests[2]: "),
        "{}",
        error.message()
    );
    assert_eq!(counts(&pool).await, (0, 0, 0));

    let created = app
        .client
        .batch_create_translation_jobs(BatchCreateTranslationJobsRequest {
            requests: vec![create_request(), first, create_request()],
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(created.len(), 3);
    let found = wait_for_messages(&redis, &app.queue, Lane::Normal, 3).await;
    let ids: Vec<&str> = found.iter().map(|m| m.job_id.as_str()).collect();
    let expected: Vec<&str> = created.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, expected);

    let empty = app
        .client
        .batch_create_translation_jobs(BatchCreateTranslationJobsRequest { requests: vec![] })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    app.stop().await;
}

async fn list(app: &mut TestApp, request: ListTranslationJobsRequest) -> (Vec<String>, String) {
    let page = app
        .client
        .list_translation_jobs(request)
        .await
        .unwrap()
        .into_inner();
    (
        page.jobs.into_iter().map(|j| j.id).collect(),
        page.next_page_token,
    )
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn pages_stay_consistent_while_jobs_are_created(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database).await;

    let mut created = Vec::new();
    for _ in 0..25 {
        created.push(app.create().await.id);
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    let (first, token) = list(
        &mut app,
        ListTranslationJobsRequest {
            page_size: 10,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(first, newest_first[..10]);
    // New jobs arrive between pages; they belong before page one.
    for _ in 0..5 {
        app.create().await;
    }
    let (second, token) = list(
        &mut app,
        ListTranslationJobsRequest {
            page_size: 10,
            page_token: token,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(second, newest_first[10..20]);
    let (third, token) = list(
        &mut app,
        ListTranslationJobsRequest {
            page_size: 10,
            page_token: token,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(third, newest_first[20..]);
    assert!(token.is_empty(), "last page has no token");

    let all: HashSet<String> = first.into_iter().chain(second).chain(third).collect();
    assert_eq!(all.len(), 25);
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn list_filters_by_status_and_novel(_: PgPoolOptions, database: PgConnectOptions) {
    let mut app = TestApp::ready(database.clone()).await;
    let pool = PgPool::connect_with(database).await.unwrap();

    let plain = app.create().await;
    let failed = app.create().await;
    set_status(&pool, &failed.id, "FAILED").await;
    let other_novel = uuid::Uuid::new_v4().to_string();
    let mut request = create_request();
    request.novel_id = other_novel.clone();
    let other = app
        .client
        .create_translation_job(request)
        .await
        .unwrap()
        .into_inner();

    let (by_status, _) = list(
        &mut app,
        ListTranslationJobsRequest {
            status: JobStatus::Failed.into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_status, std::slice::from_ref(&failed.id));
    let (by_novel, _) = list(
        &mut app,
        ListTranslationJobsRequest {
            novel_id: other_novel,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_novel, std::slice::from_ref(&other.id));
    let (pending, _) = list(
        &mut app,
        ListTranslationJobsRequest {
            status: JobStatus::Pending.into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(pending, [other.id, plain.id]);

    let bad = app
        .client
        .list_translation_jobs(ListTranslationJobsRequest {
            page_token: "nonsense".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("page_token: "));
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn two_concurrent_creates_with_one_request_id_give_one_job(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let app = TestApp::ready(database.clone()).await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let redis = redis_client(SHARED_REDIS_URL).await;

    for round in 0..10 {
        let mut request = create_request();
        request.request_id = format!("race-{round}");
        let (mut a, mut b) = (app.client.clone(), app.client.clone());
        let (ra, rb) = (request.clone(), request);
        let (first, second) =
            tokio::join!(a.create_translation_job(ra), b.create_translation_job(rb));
        assert_eq!(
            first.unwrap().into_inner().id,
            second.unwrap().into_inner().id
        );
    }
    assert_eq!(counts(&pool).await.0, 10);
    wait_for_messages(&redis, &app.queue, Lane::Normal, 10).await;
    assert_eq!(messages(&redis, &app.queue, Lane::Normal).await.len(), 10);
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn queue_stats_report_lanes_outbox_and_dead_letters(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    app.create().await;
    app.create().await;
    wait_for_messages(&redis, &app.queue, Lane::Normal, 2).await;
    let _: i64 =
        fred::prelude::ListInterface::rpush(&redis, app.queue.key(Lane::Dead), r#"{"job_id":"x"}"#)
            .await
            .unwrap();

    let stats = app
        .client
        .get_queue_stats(GetQueueStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(stats.redis_reachable);
    assert_eq!(stats.dead_letters, 1);
    let normal = stats.lanes.iter().find(|l| l.lane == "normal").unwrap();
    assert_eq!(normal.length, 2);
    assert_eq!(normal.key, app.queue.as_str());
    assert_eq!(stats.lanes.len(), 4);
    assert_eq!(stats.backlog, 2 + stats.outbox_backlog);
    assert_eq!(stats.backlog_limit, 1000);
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn cancel_while_a_worker_updates_a_subtask_waits_instead_of_deadlocking(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database.clone()).await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let job = app.create().await;
    set_status(&pool, &job.id, "IN_PROGRESS").await;

    // The worker's transaction holds the subtask...
    let mut worker = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM translation_subtasks WHERE job_id = $1::uuid FOR UPDATE")
        .bind(&job.id)
        .execute(&mut *worker)
        .await
        .unwrap();
    // ...while a cancel starts and has to wait for it.
    let mut client = app.client.clone();
    let id = job.id.clone();
    let cancel = tokio::spawn(async move {
        client
            .cancel_translation_job(CancelTranslationJobRequest { id })
            .await
    });
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cancel never waited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The worker records progress, which also touches the job (heartbeat).
    sqlx::query("UPDATE translation_subtasks SET status = 'COMPLETED' WHERE job_id = $1::uuid")
        .bind(&job.id)
        .execute(&mut *worker)
        .await
        .expect("no deadlock");
    worker.commit().await.unwrap();

    let cancelled = cancel
        .await
        .unwrap()
        .expect("the cancel succeeds")
        .into_inner();
    assert_eq!(cancelled.status(), JobStatus::Cancelled);
    app.stop().await;
}
