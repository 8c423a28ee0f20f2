//! Creating jobs and reading them back.

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tonic::Code;
use translation_jobs::{
    api::proto::{GetTranslationJobRequest, JobStatus, Priority, SubtaskSpec},
    queue::Lane,
};

use crate::support::{
    NOVEL_ID, SHARED_REDIS_URL, TestApp, counts, create_request, messages, redis_client,
    wait_for_messages,
};

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn create_stores_a_pending_job_and_its_message_reaches_redis(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database.clone()).await;
    let redis = redis_client(SHARED_REDIS_URL).await;

    let job = app
        .client
        .create_translation_job(create_request())
        .await
        .expect("create succeeds")
        .into_inner();

    assert_eq!(job.status(), JobStatus::Pending);
    assert_eq!(job.novel_id, NOVEL_ID);
    assert_eq!(job.total_subtasks, 1);
    assert_eq!(job.subtasks[0].entity_type, "novel");
    assert_eq!(job.subtasks[0].entity_id, NOVEL_ID);
    assert!(job.create_time.is_some());
    assert!(
        job.publish_time.is_none(),
        "not published before the relay ran"
    );

    let found = wait_for_messages(&redis, &app.queue, Lane::Normal, 1).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].job_id, job.id);
    assert_eq!(found[0].target_lang, "en");
    assert_eq!(found[0].output_dir, "outputs/novel_jobs");
    assert_eq!(found[0].target_fields, ["title", "description", "content"]);

    let pool = PgPool::connect_with(database).await.unwrap();
    let (jobs, subtasks, outbox) = counts(&pool).await;
    assert_eq!((jobs, subtasks), (1, 1));
    // The push and the delete commit together, so the row may take a moment.
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    let mut outbox = outbox;
    while outbox != 0 {
        assert!(std::time::Instant::now() < deadline, "outbox never drained");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        outbox = counts(&pool).await.2;
    }
    let read = app
        .client
        .get_translation_job(GetTranslationJobRequest {
            id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        read.publish_time.is_some(),
        "publish time recorded by the relay"
    );
    assert_eq!(read.status(), JobStatus::Pending);

    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn explicit_subtasks_and_options_are_stored_and_sent(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database).await;
    let redis = redis_client(SHARED_REDIS_URL).await;

    let mut request = create_request();
    request.source_lang = "ja".into();
    request.target_lang = "pt-BR".into();
    request.target_fields = vec!["title".into(), "body".into()];
    request.enable_code_filter = true;
    request.output_dir = "outputs/pt".into();
    request.subtasks = (1..=10)
        .map(|i| SubtaskSpec {
            entity_type: "chapter".into(),
            entity_id: format!("ch-{i}"),
        })
        .collect();
    let job = app
        .client
        .create_translation_job(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.total_subtasks, 10);
    assert_eq!(job.completed_subtasks, 0);

    let read = app
        .client
        .get_translation_job(GetTranslationJobRequest {
            id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = read.subtasks.iter().map(|s| s.entity_id.as_str()).collect();
    assert_eq!(ids, (1..=10).map(|i| format!("ch-{i}")).collect::<Vec<_>>());
    assert_eq!(read.source_lang, "ja");
    assert!(read.enable_code_filter);

    let found = wait_for_messages(&redis, &app.queue, Lane::Normal, 1).await;
    assert_eq!(found[0].job_id, job.id);
    assert_eq!(found[0].source_lang, "ja");
    assert_eq!(found[0].target_lang, "pt-BR");
    assert_eq!(found[0].target_fields, ["title", "body"]);
    assert!(found[0].enable_code_filter);
    assert_eq!(found[0].output_dir, "outputs/pt");

    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn jobs_arrive_in_redis_in_creation_order(_: PgPoolOptions, database: PgConnectOptions) {
    let mut app = TestApp::ready(database).await;
    let redis = redis_client(SHARED_REDIS_URL).await;

    let mut created = Vec::new();
    for _ in 0..50 {
        let job = app.create().await;
        created.push(job.id);
    }
    let found = wait_for_messages(&redis, &app.queue, Lane::Normal, 50).await;
    let ids: Vec<String> = found.into_iter().map(|m| m.job_id).collect();
    assert_eq!(ids, created);

    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn priorities_go_to_their_lanes(_: PgPoolOptions, database: PgConnectOptions) {
    let mut app = TestApp::ready(database).await;
    let redis = redis_client(SHARED_REDIS_URL).await;

    let mut ids = Vec::new();
    for priority in [
        Priority::High,
        Priority::Low,
        Priority::Normal,
        Priority::Unspecified,
    ] {
        let mut request = create_request();
        request.set_priority(priority);
        let job = app
            .client
            .create_translation_job(request)
            .await
            .unwrap()
            .into_inner();
        ids.push(job.id);
    }
    let normal = wait_for_messages(&redis, &app.queue, Lane::Normal, 2).await;
    let high = wait_for_messages(&redis, &app.queue, Lane::High, 1).await;
    let low = wait_for_messages(&redis, &app.queue, Lane::Low, 1).await;
    assert_eq!(high[0].job_id, ids[0]);
    assert_eq!(low[0].job_id, ids[1]);
    let normal: Vec<&str> = normal.iter().map(|m| m.job_id.as_str()).collect();
    assert_eq!(normal, [ids[2].as_str(), ids[3].as_str()]);

    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn the_same_request_id_returns_the_same_job_and_queues_once(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database.clone()).await;
    let redis = redis_client(SHARED_REDIS_URL).await;

    let mut request = create_request();
    request.request_id = "order-42".into();
    let first = app
        .client
        .create_translation_job(request.clone())
        .await
        .unwrap()
        .into_inner();
    let again = app
        .client
        .create_translation_job(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.id, again.id);
    assert_eq!(again.request_id, "order-42");

    request.target_lang = "fr".into();
    let error = app
        .client
        .create_translation_job(request)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists);
    assert!(error.message().contains("order-42"), "{}", error.message());

    wait_for_messages(&redis, &app.queue, Lane::Normal, 1).await;
    let pool = PgPool::connect_with(database).await.unwrap();
    assert_eq!(counts(&pool).await.0, 1);
    assert_eq!(messages(&redis, &app.queue, Lane::Normal).await.len(), 1);

    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn get_answers_not_found_for_an_unknown_id_and_invalid_argument_for_a_malformed_one(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database).await;

    let missing = app
        .client
        .get_translation_job(GetTranslationJobRequest {
            id: "7d4f6c1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let malformed = app
        .client
        .get_translation_job(GetTranslationJobRequest {
            id: "job-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert!(
        malformed.message().starts_with("id:"),
        "{}",
        malformed.message()
    );

    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_callers_trace_context_travels_in_the_message(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    let mut traced = tonic::Request::new(create_request());
    traced
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    app.client.create_translation_job(traced).await.unwrap();
    // A malformed one is ignored, as the W3C spec asks, not refused.
    let mut garbled = tonic::Request::new(create_request());
    garbled
        .metadata_mut()
        .insert("traceparent", "not-a-trace".parse().unwrap());
    app.client.create_translation_job(garbled).await.unwrap();

    let found = wait_for_messages(&redis, &app.queue, Lane::Normal, 2).await;
    assert_eq!(found[0].traceparent.as_deref(), Some(traceparent));
    assert_eq!(found[1].traceparent, None);
    let raw: Vec<String> =
        fred::prelude::ListInterface::lrange(&redis, app.queue.key(Lane::Normal), 1, 1)
            .await
            .unwrap();
    assert!(
        !raw[0].contains("traceparent"),
        "absent, not null: {}",
        raw[0]
    );
    app.stop().await;
}
