//! A dropped connection is not an outage: when something ends the
//! service's PostgreSQL sessions while PostgreSQL itself is fine (a pooler
//! restarting, a failover proxy, an operator's `pg_terminate_backend`),
//! readiness stays SERVING and creates go on, on fresh connections.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tonic::Request;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use translation_jobs::api::proto::CreateTranslationJobRequest;
use uuid::Uuid;

use crate::support::{TestApp, create_request, unique_queue};

/// Longer than two probe intervals: the probe runs at least once on a
/// connection that was terminated.
const WATCH_FOR: Duration = Duration::from_millis(2500);

/// Ends every session on the test's database except the one asking (the
/// service's pool, its probe, its LISTEN connection, the test's other
/// connections); how many.
async fn terminate_every_other_session(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM ( \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
               AND backend_type = 'client backend') AS ended",
    )
    .fetch_one(pool)
    .await
    .expect("terminate the sessions")
}

/// Samples readiness every 20 ms until stopped; what it saw that was not
/// SERVING.
struct Readiness {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(Duration, Option<ServingStatus>)>>,
}

impl Readiness {
    async fn watch(app: &TestApp) -> Self {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.grpc_addr))
            .expect("address")
            .connect()
            .await
            .expect("health connects");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut client = HealthClient::new(channel);
            let mut bad = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let status = client
                    .check(HealthCheckRequest {
                        service: "readiness".into(),
                    })
                    .await
                    .ok()
                    .map(|answer| answer.into_inner().status());
                if status != Some(ServingStatus::Serving) {
                    bad.push((started.elapsed(), status));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            bad
        });
        Self { stop, task }
    }

    async fn not_serving(self) -> Vec<(Duration, Option<ServingStatus>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("readiness sampler")
    }
}

fn request() -> CreateTranslationJobRequest {
    CreateTranslationJobRequest {
        novel_id: Uuid::new_v4().to_string(),
        ..create_request()
    }
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn terminating_every_session_of_the_service_keeps_readiness_serving_and_creates_succeeding(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database.clone()).await;
    let pool = PgPool::connect_with(database).await.expect("direct pool");
    for _ in 0..8 {
        app.create().await;
    }
    let readiness = Readiness::watch(&app).await;

    let ended = terminate_every_other_session(&pool).await;
    assert!(ended >= 3, "the service's sessions were ended: {ended}");
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut created = 0;
    while started.elapsed() < WATCH_FOR {
        let mut call = Request::new(request());
        call.set_timeout(Duration::from_secs(10));
        match app.client.create_translation_job(call).await {
            Ok(_) => created += 1,
            Err(status) => failed.push((
                started.elapsed(),
                status.code(),
                status.message().to_owned(),
            )),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let not_serving = readiness.not_serving().await;
    assert!(
        not_serving.is_empty(),
        "readiness left SERVING after the sessions were ended, though PostgreSQL was fine: \
         {not_serving:?}"
    );
    assert!(
        failed.is_empty(),
        "creates failed after the sessions were ended ({created} succeeded): {failed:?}"
    );
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn terminating_the_sessions_under_a_burst_of_creates_fails_no_create_and_duplicates_none(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    // Backpressure on, at a limit nothing here reaches (nothing consumes
    // the jobs): its sample of the backlog runs on the pool too, and one in
    // flight when its session is ended is asked again at once (`backlog`).
    let app = TestApp::spawn_with(
        database.clone(),
        crate::support::SHARED_REDIS_URL,
        unique_queue(),
        &[("QUEUE_MAX_BACKLOG", "1000000")],
    )
    .await;
    app.wait_ready().await;
    let pool = PgPool::connect_with(database).await.expect("direct pool");
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let mut client = app.client.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let request = request();
                    let novel_id = request.novel_id.clone();
                    let mut call = Request::new(request);
                    call.set_timeout(Duration::from_secs(20));
                    let answer = client
                        .create_translation_job(call)
                        .await
                        .map(|job| job.into_inner().id)
                        .map_err(|status| format!("{:?}: {}", status.code(), status.message()));
                    outcomes.push((novel_id, answer));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                outcomes
            })
        })
        .collect();

    let mut ended = 0;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        ended += terminate_every_other_session(&pool).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for caller in callers {
        outcomes.extend(caller.await.expect("caller"));
    }

    let failed: Vec<&(String, Result<String, String>)> = outcomes
        .iter()
        .filter(|(_, answer)| answer.is_err())
        .collect();
    let stored: Vec<(Uuid, Uuid)> = sqlx::query_as("SELECT id, novel_id FROM translation_jobs")
        .fetch_all(&pool)
        .await
        .expect("read the jobs");
    let mut per_request = std::collections::HashMap::new();
    for (_, novel_id) in &stored {
        *per_request.entry(novel_id.to_string()).or_insert(0) += 1;
    }
    let doubled: Vec<_> = per_request.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "requests stored twice: {doubled:?}");
    for (novel_id, answer) in &outcomes {
        if let Ok(id) = answer {
            assert!(
                stored
                    .iter()
                    .any(|(stored, novel)| stored.to_string() == *id
                        && novel.to_string() == *novel_id),
                "acknowledged job {id} is not stored"
            );
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} creates failed while PostgreSQL was fine ({ended} sessions ended): {:?}",
        failed.len(),
        outcomes.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    app.stop().await;
}
