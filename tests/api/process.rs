//! The real binary and start-up without a database.

use std::time::Duration;

use sqlx::{
    Connection, PgConnection,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use translation_jobs::queue::Lane;

use crate::{
    binary::{Binary, database_url},
    support::{
        SHARED_REDIS_URL, TestApp, cleanup, create_request, free_port, http_get, redis_client,
        unique_queue, wait_for_messages,
    },
};

async fn serving_status(app: &TestApp) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let response = health
        .check(HealthCheckRequest {
            service: "translation.v1.TranslationJobService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    response.status()
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn sigterm_drains_and_exits_zero_promptly(_: PgPoolOptions, database: PgConnectOptions) {
    let queue = unique_queue();
    let mut binary = Binary::start_ready(
        &[
            ("DATABASE_URL", database_url(&database)),
            ("REDIS_URL", SHARED_REDIS_URL.into()),
            ("TRANSLATION_QUEUE", queue.as_str().into()),
        ],
        &[],
    )
    .await;
    let mut client = translation_jobs::api::proto::translation_job_service_client::TranslationJobServiceClient::connect(
        format!("http://127.0.0.1:{}", binary.grpc_port),
    )
    .await
    .unwrap();
    let job = client
        .create_translation_job(create_request())
        .await
        .unwrap()
        .into_inner();
    let redis = redis_client(SHARED_REDIS_URL).await;
    let found = wait_for_messages(&redis, &queue, Lane::Normal, 1).await;
    assert_eq!(found[0].job_id, job.id);

    let exit = binary.terminate(Duration::from_secs(10)).await;
    assert!(
        exit.success(),
        "exit status {exit:?}; its output:\n{}",
        binary.output()
    );
    cleanup(&redis, &queue).await;
}

#[tokio::test]
async fn without_postgres_the_service_starts_not_serving_and_answers_unavailable() {
    let unreachable: PgConnectOptions =
        format!("postgres://postgres@127.0.0.1:{}/none", free_port())
            .parse()
            .unwrap();
    let mut app = TestApp::spawn(unreachable).await;

    assert_eq!(serving_status(&app).await, ServingStatus::NotServing);
    let error = app
        .client
        .create_translation_job(create_request())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{}", error.message());
    let (status, _) = http_get(&format!("http://{}/readyz", app.http_addr))
        .await
        .unwrap();
    assert_eq!(status, 503);
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_database_that_appears_later_is_picked_up_without_a_restart(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let late_name = format!("late_{}", uuid::Uuid::new_v4().simple());
    let mut app = TestApp::spawn(database.clone().database(&late_name)).await;
    assert_eq!(serving_status(&app).await, ServingStatus::NotServing);

    let mut admin = PgConnection::connect_with(&database).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {late_name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    app.wait_ready().await;
    assert_eq!(serving_status(&app).await, ServingStatus::Serving);
    let job = app.create().await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    wait_for_messages(&redis, &app.queue, Lane::Normal, 1).await;
    assert!(!job.id.is_empty());
    app.stop().await;

    sqlx::query(&format!("DROP DATABASE {late_name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}
