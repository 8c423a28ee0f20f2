//! The job service's limits: message size (gRPC and HTTP alike), the
//! deadline of unary calls (never of watch streams), calls in flight, open
//! watch streams; and the BASIC / FULL views of jobs.

use std::time::{Duration, Instant};

use sqlx::{
    Connection, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_stream::StreamExt;
use tonic::{Code, Request};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use translation_jobs::api::proto::{
    CancelTranslationJobRequest, GetTranslationJobRequest, JobStatus, ListTranslationJobsRequest,
    SubtaskSpec, TranslationJobView, WatchTranslationJobRequest,
};

use crate::support::{
    PATIENCE, SHARED_REDIS_URL, TestApp, create_request, http_request, unique_queue,
};

async fn app_with(database: PgConnectOptions, overrides: &[(&str, &str)]) -> TestApp {
    let app = TestApp::spawn_with(database, SHARED_REDIS_URL, unique_queue(), overrides).await;
    app.wait_ready().await;
    app
}

/// Locks a job's subtasks in a transaction of its own, as a long worker
/// update would: cancel and retry of that job wait until it is dropped.
async fn lock_job(database: &PgConnectOptions, id: &str) -> PgConnection {
    let mut conn = PgConnection::connect_with(database).await.unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    sqlx::query("SELECT id FROM translation_subtasks WHERE job_id = $1::uuid FOR UPDATE")
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_message_over_the_limit_is_refused_with_the_same_error_over_grpc_and_http(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = app_with(database, &[("GRPC_MAX_MESSAGE_SIZE", "4096")]).await;
    let expected = "the request message is larger than the limit of 4096 bytes";

    let mut large = create_request();
    large.subtasks = (0..100)
        .map(|i| SubtaskSpec {
            entity_type: "chapter".into(),
            entity_id: format!("{i:0>60}"),
        })
        .collect();
    let error = app.client.create_translation_job(large).await.unwrap_err();
    assert_eq!(error.code(), Code::OutOfRange, "{error:?}");
    assert_eq!(error.message(), expected);

    let url = format!("http://{}/api/v1/translation-jobs", app.http_addr);
    let body = format!(
        r#"{{"novel_id": "{}", "target_lang": "en", "request_id": "{}"}}"#,
        crate::support::NOVEL_ID,
        "x".repeat(5000)
    );
    let (status, body) = http_request("POST", &url, Some(&body), &[]).await.unwrap();
    assert_eq!(status, 413, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["message"], expected);

    // Below the limit all is as before.
    assert!(
        app.client
            .create_translation_job(create_request())
            .await
            .is_ok()
    );
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_unary_call_past_rpc_timeout_ends_cleanly_and_watch_streams_outlive_it(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = app_with(database.clone(), &[("RPC_TIMEOUT", "500ms")]).await;
    let job = app.create().await;
    let mut stream = app
        .client
        .watch_translation_job(WatchTranslationJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stream.next().await.unwrap().unwrap().status(),
        JobStatus::Pending
    );

    let lock = lock_job(&database, &job.id).await;
    let started = Instant::now();
    let error = app
        .client
        .cancel_translation_job(CancelTranslationJobRequest { id: job.id.clone() })
        .await
        .unwrap_err();
    assert_ended_at_its_deadline(&error, started);

    // The HTTP route has the same deadline.
    let url = format!(
        "http://{}/api/v1/translation-jobs/{}/cancel",
        app.http_addr, job.id
    );
    let (status, body) = http_request("POST", &url, None, &[]).await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("DEADLINE_EXCEEDED"), "{body}");

    // The watch stream, open for longer than RPC_TIMEOUT, still delivers.
    drop(lock);
    let cancelled = app
        .client
        .cancel_translation_job(CancelTranslationJobRequest { id: job.id.clone() })
        .await;
    assert!(cancelled.is_ok(), "{cancelled:?}");
    let update = tokio::time::timeout(PATIENCE, async {
        loop {
            let job = stream.next().await.unwrap().unwrap();
            if job.status() == JobStatus::Cancelled {
                return job;
            }
        }
    })
    .await
    .expect("the stream outlived RPC_TIMEOUT");
    assert_eq!(update.id, job.id);
    app.stop().await;
}

/// A call held up by a locked row ended at its deadline: cancelled or past
/// its deadline, long before the 30 s statement timeout would have ended it.
fn assert_ended_at_its_deadline(error: &tonic::Status, started: Instant) {
    assert!(
        matches!(error.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_client_deadline_shorter_than_rpc_timeout_still_applies(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = app_with(database.clone(), &[("RPC_TIMEOUT", "30s")]).await;
    let job = app.create().await;
    let lock = lock_job(&database, &job.id).await;
    let mut request = Request::new(CancelTranslationJobRequest { id: job.id.clone() });
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let error = app
        .client
        .cancel_translation_job(request)
        .await
        .unwrap_err();
    assert_ended_at_its_deadline(&error, started);
    drop(lock);
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn calls_beyond_max_concurrent_requests_are_shed_while_health_answers(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = app_with(database.clone(), &[("MAX_CONCURRENT_REQUESTS", "2")]).await;
    let job = app.create().await;
    let lock = lock_job(&database, &job.id).await;
    let blocked: Vec<_> = (0..2)
        .map(|_| {
            let mut client = app.client.clone();
            let id = job.id.clone();
            tokio::spawn(async move {
                client
                    .cancel_translation_job(CancelTranslationJobRequest { id })
                    .await
            })
        })
        .collect();

    // Both wait for the lock, each holding its place.
    let probe = PgPool::connect_with(database.clone()).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&probe)
        .await
        .unwrap();
        if waiting == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} calls wait for the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next call is refused at once.
    let shed = app
        .client
        .get_translation_job(GetTranslationJobRequest {
            id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted);
    assert!(
        shed.message().contains("MAX_CONCURRENT_REQUESTS"),
        "{}",
        shed.message()
    );
    let url = format!(
        "http://{}/api/v1/translation-jobs/{}",
        app.http_addr, job.id
    );
    let (status, body) = http_request("GET", &url, None, &[]).await.unwrap();
    assert_eq!(status, 429, "{body}");

    // Probes are never shed.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    drop(lock);
    for call in blocked {
        // One cancels; the other then finds the job cancelled.
        let done = call.await.unwrap();
        assert!(
            done.as_ref()
                .map_or_else(|e| e.code() == Code::FailedPrecondition, |_| true),
            "{done:?}"
        );
    }
    assert!(
        app.client
            .get_translation_job(GetTranslationJobRequest {
                id: job.id.clone(),
                ..Default::default()
            })
            .await
            .is_ok()
    );
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn watch_streams_beyond_max_watch_streams_are_refused_until_one_ends(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = app_with(database, &[("MAX_WATCH_STREAMS", "1")]).await;
    let job = app.create().await;
    let watch = || WatchTranslationJobRequest { id: job.id.clone() };
    let mut first = app
        .client
        .watch_translation_job(watch())
        .await
        .unwrap()
        .into_inner();
    assert!(first.next().await.unwrap().is_ok());

    let refused = app.client.watch_translation_job(watch()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("MAX_WATCH_STREAMS"),
        "{}",
        refused.message()
    );

    drop(first);
    let deadline = Instant::now() + PATIENCE;
    loop {
        match app.client.watch_translation_job(watch()).await {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                assert!(Instant::now() < deadline, "the place never came back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn list_leaves_subtasks_out_by_default_yet_counts_them_and_full_brings_them(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = app_with(database.clone(), &[]).await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let mut request = create_request();
    request.subtasks = (0..3)
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
    app.create().await;
    sqlx::query(
        "UPDATE translation_subtasks SET status = 'COMPLETED' \
         WHERE job_id = $1::uuid AND entity_id = '1'",
    )
    .bind(&job.id)
    .execute(&pool)
    .await
    .unwrap();

    let list = |view: TranslationJobView| ListTranslationJobsRequest {
        view: view.into(),
        ..Default::default()
    };
    let basic = app
        .client
        .list_translation_jobs(list(TranslationJobView::Unspecified))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(basic.jobs.len(), 2);
    let listed = basic.jobs.iter().find(|j| j.id == job.id).unwrap();
    assert!(listed.subtasks.is_empty());
    assert_eq!((listed.completed_subtasks, listed.total_subtasks), (1, 3));
    let other = basic.jobs.iter().find(|j| j.id != job.id).unwrap();
    assert_eq!((other.completed_subtasks, other.total_subtasks), (0, 1));

    let full = app
        .client
        .list_translation_jobs(list(TranslationJobView::Full))
        .await
        .unwrap()
        .into_inner();
    let listed = full.jobs.iter().find(|j| j.id == job.id).unwrap();
    assert_eq!(listed.subtasks.len(), 3);
    assert_eq!((listed.completed_subtasks, listed.total_subtasks), (1, 3));

    // Get is FULL by default; BASIC on request.
    let get = |view: TranslationJobView| GetTranslationJobRequest {
        id: job.id.clone(),
        view: view.into(),
    };
    let got = app
        .client
        .get_translation_job(get(TranslationJobView::Unspecified))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.subtasks.len(), 3);
    let got = app
        .client
        .get_translation_job(get(TranslationJobView::Basic))
        .await
        .unwrap()
        .into_inner();
    assert!(got.subtasks.is_empty());
    assert_eq!((got.completed_subtasks, got.total_subtasks), (1, 3));

    let bad = app
        .client
        .list_translation_jobs(ListTranslationJobsRequest {
            view: 42,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("view: "), "{}", bad.message());
    app.stop().await;
}
