//! gRPC health: the names Kubernetes probes use, readiness following
//! PostgreSQL, prompt shutdown with open streams, Redis's eviction policy.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_stream::StreamExt;
use tonic::{Code, Request};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use translation_jobs::api::proto::GetQueueStatsRequest;

use crate::{
    binary::database_url,
    common::proxy::{Mode, Proxy},
    support::{PATIENCE, TestApp, TestRedis, create_request, free_port, unique_queue},
};

async fn health(app: &TestApp) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

async fn check(client: &mut HealthClient<tonic::transport::Channel>, name: &str) -> ServingStatus {
    client
        .check(HealthCheckRequest {
            service: name.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{name:?}: {e}"))
        .into_inner()
        .status()
}

async fn wait_for(
    client: &mut HealthClient<tonic::transport::Channel>,
    name: &str,
    wanted: ServingStatus,
) {
    let deadline = Instant::now() + PATIENCE;
    while check(client, name).await != wanted {
        assert!(Instant::now() < deadline, "{name} never became {wanted:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn liveness_and_readiness_are_served_by_name(_: PgPoolOptions, database: PgConnectOptions) {
    let app = TestApp::ready(database).await;
    let mut client = health(&app).await;
    for name in [
        "",
        "liveness",
        "readiness",
        "translation.v1.TranslationJobService",
    ] {
        assert_eq!(
            check(&mut client, name).await,
            ServingStatus::Serving,
            "{name:?}"
        );
    }
    let unknown = client
        .check(HealthCheckRequest {
            service: "nonsense".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn readiness_follows_postgres_and_creates_fail_fast_while_it_is_unreachable(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let upstream = format!("{}:{}", database.get_host(), database.get_port());
    let proxy = Proxy::start(upstream.parse().unwrap()).await;
    let app = TestApp::ready(database.port(proxy.port())).await;
    let mut client = health(&app).await;
    assert_eq!(
        check(&mut client, "readiness").await,
        ServingStatus::Serving
    );

    // The path to PostgreSQL black-holes: connections open, nothing answers.
    proxy.set(Mode::BlackHole);
    wait_for(&mut client, "readiness", ServingStatus::NotServing).await;
    assert_eq!(check(&mut client, "liveness").await, ServingStatus::Serving);

    // Callers get UNAVAILABLE at once, well inside their deadline, not one
    // after another as each waits out a database timeout.
    let calls = (0..16).map(|_| {
        let mut grpc = app.client.clone();
        async move {
            let mut request = Request::new(create_request());
            request.set_timeout(Duration::from_secs(4));
            grpc.create_translation_job(request).await
        }
    });
    for result in futures_join_all(calls).await {
        let error = result.expect_err("no create while PostgreSQL is unreachable");
        assert_eq!(error.code(), Code::Unavailable, "{}", error.message());
    }

    // The path comes back: readiness returns by itself, creates work.
    proxy.set(Mode::Pass);
    wait_for(&mut client, "readiness", ServingStatus::Serving).await;
    let mut grpc = app.client.clone();
    grpc.create_translation_job(create_request())
        .await
        .expect("creates work again");
    app.stop().await;
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.expect("task"));
    }
    outputs
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn open_health_watch_streams_do_not_hold_up_shutdown(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let app = TestApp::spawn_with(
        database,
        crate::support::SHARED_REDIS_URL,
        unique_queue(),
        &[("SHUTDOWN_TIMEOUT", "60s")],
    )
    .await;
    app.wait_ready().await;
    let mut client = health(&app).await;
    // Client-side health checking keeps a Watch open for the connection's life.
    let mut watch = client
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    // Far less than the 60 s shutdown timeout: nothing in flight holds it.
    tokio::time::timeout(Duration::from_secs(5), app.stop())
        .await
        .expect("shutdown does not wait for the open Watch stream");
    // The stream was told NOT_SERVING or simply ended, never left hanging.
    while let Ok(Some(Ok(update))) =
        tokio::time::timeout(Duration::from_secs(1), watch.next()).await
    {
        assert_eq!(update.status(), ServingStatus::NotServing);
    }
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn an_evicting_redis_is_reported_in_stats_and_warned_about_at_start_up(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let redis_server = TestRedis::started_with(&["--maxmemory-policy", "allkeys-lru"]).await;

    // The stats name the policy.
    let queue = unique_queue();
    let mut app =
        TestApp::spawn_with(database.clone(), &redis_server.url(), queue.clone(), &[]).await;
    app.wait_ready().await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = app
            .client
            .get_queue_stats(GetQueueStatsRequest {})
            .await
            .unwrap()
            .into_inner();
        if stats.redis_reachable {
            assert_eq!(stats.redis_maxmemory_policy, "allkeys-lru");
            break;
        }
        assert!(Instant::now() < deadline, "Redis never reachable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;

    // The binary warns at start-up, naming the setting.
    let url = database_url(&database);
    let mut child = Command::new(env!("CARGO_BIN_EXE_translation-jobs"))
        .env("DATABASE_URL", url)
        .env("REDIS_URL", redis_server.url())
        .env("TRANSLATION_QUEUE", queue.as_str())
        .env("GRPC_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().unwrap();
    let warning = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|line| line.contains("maxmemory-policy") && line.contains("WARN"))
    });
    let warning = tokio::time::timeout(PATIENCE, warning).await;
    let _ = child.kill();
    let _ = child.wait();
    let warning = warning
        .expect("a warning in time")
        .unwrap()
        .expect("a warning");
    assert!(warning.contains("allkeys-lru"), "{warning}");
    assert!(warning.contains("noeviction"), "{warning}");
}
