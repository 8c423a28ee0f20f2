//! Unknown commit outcomes: the connection fails after a create's statement
//! reached PostgreSQL and before its reply came back, so the jobs may be
//! committed. The service looks the jobs up (by their ids, drawn before the
//! statement) before it answers: a committed job is answered OK, never
//! UNAVAILABLE (a caller retrying it would create a second job), and one not
//! committed is never answered OK without being stored.
//!
//! A proxy between the service and PostgreSQL cuts the one connection that
//! sends a marker (a unique `output_dir`), right after forwarding the
//! statement (its reply is lost), right before (PostgreSQL never sees it),
//! or holds it open with the reply withheld (the service's own time limit
//! ends the wait).

use std::time::Duration;

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions, PgSslMode},
};
use tonic::{Code, Request};
use translation_jobs::api::proto::{
    BatchCreateTranslationJobsRequest, CreateTranslationJobRequest, TranslationJob,
};
use uuid::Uuid;

use crate::{
    common::proxy::{CutAt, Proxy},
    support::{TestApp, create_request, unique_queue},
};

/// A caller's deadline: far above anything the service does here, so every
/// answer is the service's own.
const DEADLINE: Duration = Duration::from_secs(30);

/// The service on a proxy in front of the test's database; a direct pool
/// to count what was stored.
async fn service_behind_proxy(
    database: PgConnectOptions,
    overrides: &[(&str, &str)],
) -> (TestApp, Proxy, PgPool) {
    let upstream = format!("{}:{}", database.get_host(), database.get_port());
    let proxy = Proxy::start(upstream.parse().expect("address")).await;
    // In plain text, so that the proxy can read the statements.
    let app = TestApp::spawn_with(
        database
            .clone()
            .port(proxy.port())
            .ssl_mode(PgSslMode::Disable),
        crate::support::SHARED_REDIS_URL,
        unique_queue(),
        overrides,
    )
    .await;
    app.wait_ready().await;
    let pool = PgPool::connect_with(database).await.expect("direct pool");
    (app, proxy, pool)
}

/// A marker no other statement of the test sends.
fn marker() -> String {
    format!("outputs/cut-{}", Uuid::new_v4().simple())
}

fn marked(output_dir: &str) -> CreateTranslationJobRequest {
    CreateTranslationJobRequest {
        output_dir: output_dir.to_owned(),
        novel_id: Uuid::new_v4().to_string(),
        ..create_request()
    }
}

async fn create(
    app: &TestApp,
    request: CreateTranslationJobRequest,
) -> Result<TranslationJob, tonic::Status> {
    let mut call = Request::new(request);
    call.set_timeout(DEADLINE);
    app.client
        .clone()
        .create_translation_job(call)
        .await
        .map(tonic::Response::into_inner)
}

/// Ids of the stored jobs whose output_dir starts with `prefix`.
async fn stored(pool: &PgPool, prefix: &str) -> Vec<Uuid> {
    sqlx::query_scalar(
        "SELECT id FROM translation_jobs WHERE output_dir LIKE $1 || '%' ORDER BY id",
    )
    .bind(prefix)
    .fetch_all(pool)
    .await
    .expect("read the jobs")
}

/// The service's statement limit in the tests of a reply that never
/// comes: the client gives up after this plus 5 s.
const SHORT_STATEMENT_TIMEOUT: (&str, &str) = ("DATABASE_STATEMENT_TIMEOUT", "1s");

async fn a_lost_commit_reply_is_answered_with_the_committed_job(
    database: PgConnectOptions,
    overrides: &[(&str, &str)],
    at: CutAt,
) {
    let (app, proxy, pool) = service_behind_proxy(database, overrides).await;
    let marker = marker();
    proxy.cut_once(&[marker.as_bytes()], at);

    let answer = create(&app, marked(&marker)).await;

    assert_eq!(
        proxy.cuts_fired(),
        1,
        "the statement went through the proxy"
    );
    let jobs = stored(&pool, &marker).await;
    assert_eq!(jobs.len(), 1, "PostgreSQL committed the job: {jobs:?}");
    let job = answer.unwrap_or_else(|status| {
        panic!(
            "the job {} is committed, yet the caller was told {:?} ({}); \
             a retry would create a second job",
            jobs[0],
            status.code(),
            status.message()
        )
    });
    assert_eq!(job.id, jobs[0].to_string(), "answered with the stored job");
    assert_eq!(job.output_dir, marker);
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_create_whose_commit_reply_is_lost_is_answered_with_the_committed_job(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    a_lost_commit_reply_is_answered_with_the_committed_job(database, &[], CutAt::Reply).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_create_whose_commit_reply_never_comes_is_answered_with_the_committed_job(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    a_lost_commit_reply_is_answered_with_the_committed_job(
        database,
        &[SHORT_STATEMENT_TIMEOUT],
        CutAt::HoldReply,
    )
    .await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn without_group_commit_a_create_whose_commit_reply_is_lost_is_answered_with_the_committed_job(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    a_lost_commit_reply_is_answered_with_the_committed_job(
        database,
        &[("CREATE_GROUP_MAX_JOBS", "1")],
        CutAt::Reply,
    )
    .await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_create_cut_before_postgres_saw_it_is_stored_once_whatever_the_answer(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let (app, proxy, pool) = service_behind_proxy(database, &[]).await;
    let marker = marker();
    proxy.cut_once(&[marker.as_bytes()], CutAt::Request);
    let request = marked(&marker);

    let first = create(&app, request.clone()).await;

    assert_eq!(proxy.cuts_fired(), 1, "the statement reached the proxy");
    let jobs = stored(&pool, &marker).await;
    match &first {
        // Stored again on a fresh connection with the same ids.
        Ok(job) => assert_eq!(vec![job.id.clone()], ids(&jobs), "stored once"),
        Err(status) => {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert!(jobs.is_empty(), "told UNAVAILABLE, yet stored: {jobs:?}");
            // The caller retries: one job.
            let again = create(&app, request).await.expect("the retry succeeds");
            assert_eq!(vec![again.id], ids(&stored(&pool, &marker).await));
        }
    }
    app.stop().await;
}

fn ids(jobs: &[Uuid]) -> Vec<String> {
    jobs.iter().map(Uuid::to_string).collect()
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn every_caller_of_a_group_whose_commit_reply_is_lost_gets_its_committed_job(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let (app, proxy, pool) = service_behind_proxy(database, &[]).await;
    let marker = marker();
    // Whichever statement carries the first of these jobs (alone or with
    // others) loses its reply.
    proxy.cut_once(&[marker.as_bytes()], CutAt::Reply);
    let calls = (0..24).map(|i| create(&app, marked(&format!("{marker}/{i}"))));
    let answers = futures_util::future::join_all(calls).await;

    assert_eq!(proxy.cuts_fired(), 1);
    let jobs = stored(&pool, &marker).await;
    assert_eq!(jobs.len(), 24, "every job is committed once");
    let mut answered: Vec<String> = answers
        .into_iter()
        .map(|answer| {
            answer
                .unwrap_or_else(|status| {
                    panic!(
                        "a caller whose job is committed was told {:?} ({})",
                        status.code(),
                        status.message()
                    )
                })
                .id
        })
        .collect();
    answered.sort();
    let mut expected = ids(&jobs);
    expected.sort();
    assert_eq!(answered, expected, "each caller got its own stored job");
    app.stop().await;
}

async fn a_batch_whose_commit_reply_is_lost_is_answered(
    database: PgConnectOptions,
    overrides: &[(&str, &str)],
    at: CutAt,
) {
    let (app, proxy, pool) = service_behind_proxy(database, overrides).await;
    let marker = marker();
    // The batch's transaction: the marked job's insert, then its COMMIT,
    // whose reply is lost.
    proxy.cut_once(&[marker.as_bytes(), b"COMMIT"], at);
    let requests: Vec<CreateTranslationJobRequest> =
        (0..3).map(|i| marked(&format!("{marker}/{i}"))).collect();
    let mut call = Request::new(BatchCreateTranslationJobsRequest { requests });
    call.set_timeout(DEADLINE);

    let answer = app.client.clone().batch_create_translation_jobs(call).await;

    assert_eq!(proxy.cuts_fired(), 1, "the COMMIT went through the proxy");
    let jobs = stored(&pool, &marker).await;
    assert_eq!(jobs.len(), 3, "PostgreSQL committed the batch: {jobs:?}");
    let answered = answer.unwrap_or_else(|status| {
        panic!(
            "the batch is committed, yet the caller was told {:?} ({})",
            status.code(),
            status.message()
        )
    });
    let mut answered: Vec<String> = answered
        .into_inner()
        .jobs
        .into_iter()
        .map(|j| j.id)
        .collect();
    answered.sort();
    assert_eq!(answered, ids(&jobs), "answered with the stored jobs");
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_batch_whose_commit_reply_is_lost_is_answered_with_its_committed_jobs(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    a_batch_whose_commit_reply_is_lost_is_answered(database, &[], CutAt::Reply).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_batch_whose_commit_reply_never_comes_is_answered_with_its_committed_jobs(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    a_batch_whose_commit_reply_is_lost_is_answered(
        database,
        &[SHORT_STATEMENT_TIMEOUT],
        CutAt::HoldReply,
    )
    .await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_batch_whose_commit_never_reached_postgres_is_stored_once_whatever_the_answer(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let (app, proxy, pool) = service_behind_proxy(database, &[]).await;
    let marker = marker();
    proxy.cut_once(&[marker.as_bytes(), b"COMMIT"], CutAt::Request);
    let requests: Vec<CreateTranslationJobRequest> =
        (0..3).map(|i| marked(&format!("{marker}/{i}"))).collect();
    let batch = BatchCreateTranslationJobsRequest { requests };

    let answer = app
        .client
        .clone()
        .batch_create_translation_jobs(batch.clone())
        .await;

    assert_eq!(proxy.cuts_fired(), 1);
    match answer {
        Ok(answer) => {
            let mut answered: Vec<String> =
                answer.into_inner().jobs.into_iter().map(|j| j.id).collect();
            answered.sort();
            assert_eq!(answered, ids(&stored(&pool, &marker).await), "stored once");
        }
        Err(status) => {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert!(
                stored(&pool, &marker).await.is_empty(),
                "told UNAVAILABLE, yet stored"
            );
            app.client
                .clone()
                .batch_create_translation_jobs(batch)
                .await
                .expect("the retry succeeds");
            assert_eq!(stored(&pool, &marker).await.len(), 3, "stored once");
        }
    }
    app.stop().await;
}
