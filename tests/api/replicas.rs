//! Replicas: three processes of the real binary on one database and one
//! Redis queue, each running API, relay and reaper, one of them killed
//! (SIGKILL) while jobs pour in.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tonic::transport::Channel;
use translation_jobs::{
    api::proto::translation_job_service_client::TranslationJobServiceClient,
    queue::{Lane, QueueName},
};

use crate::{
    binary::{Binary, database_url},
    support::{
        PATIENCE, SHARED_REDIS_URL, cleanup, counts, create_request, messages, redis_client,
        unique_queue,
    },
};

/// Jobs acknowledged before the kill, and after it.
const BEFORE_KILL: usize = 300;
const AFTER_KILL: usize = 300;

/// One process of the binary on the test's database and queue.
async fn replica(database: &PgConnectOptions, queue: &QueueName) -> Binary {
    Binary::start_ready(
        &[
            ("DATABASE_URL", database_url(database)),
            ("DATABASE_POOL_SIZE", "4".into()),
            ("REDIS_URL", SHARED_REDIS_URL.into()),
            ("TRANSLATION_QUEUE", queue.as_str().into()),
            // Small batches: a kill is likely to find one claimed and pushed
            // but not committed.
            ("RELAY_BATCH_SIZE", "10".into()),
            ("RELAY_POLL_INTERVAL", "200ms".into()),
            ("QUEUE_MAX_BACKLOG", "0".into()),
        ],
        &[],
    )
    .await
}

async fn client(replica: &Binary) -> TranslationJobServiceClient<Channel> {
    TranslationJobServiceClient::connect(format!("http://127.0.0.1:{}", replica.grpc_port))
        .await
        .expect("gRPC client connects")
}

async fn until(acknowledged: &AtomicUsize, count: usize) {
    let deadline = Instant::now() + PATIENCE;
    while acknowledged.load(Ordering::Relaxed) < count {
        assert!(Instant::now() < deadline, "creates stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn three_replicas_deliver_every_acknowledged_job_exactly_once_when_one_is_killed(
    pool_options: PgPoolOptions,
    database: PgConnectOptions,
) {
    let queue = unique_queue();
    let mut replicas: Vec<Binary> = join_all((0..3).map(|_| replica(&database, &queue))).await;
    let pool: PgPool = pool_options.connect_with(database).await.unwrap();

    // Two callers per replica. A caller of the replica that gets killed
    // moves on to the next one when a call fails: that call's job may or
    // may not have been committed, so it is not counted as acknowledged.
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for replica in &replicas {
        clients.push(client(replica).await);
    }
    let callers: Vec<_> = (0..6)
        .map(|caller| {
            let clients = clients.clone();
            let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
            tokio::spawn(async move {
                let mut target = caller % clients.len();
                let mut ids = Vec::new();
                let mut failed = 0;
                while !stop.load(Ordering::Relaxed) {
                    let mut client = clients[target].clone();
                    match client.create_translation_job(create_request()).await {
                        Ok(job) => {
                            ids.push(job.into_inner().id);
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed += 1;
                            target = (target + 1) % clients.len();
                        }
                    }
                }
                (ids, failed)
            })
        })
        .collect();

    until(&acknowledged, BEFORE_KILL).await;
    replicas[1].kill();
    until(
        &acknowledged,
        acknowledged.load(Ordering::Relaxed) + AFTER_KILL,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut created = Vec::new();
    let mut failed = 0;
    for caller in callers {
        let (ids, failures) = caller.await.unwrap();
        created.extend(ids);
        failed += failures;
    }

    // The dead process's claimed rows come back when PostgreSQL notices its
    // closed connections; the survivors publish them.
    let deadline = Instant::now() + PATIENCE;
    while counts(&pool).await.2 != 0 {
        assert!(Instant::now() < deadline, "the outbox never drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let redis = redis_client(SHARED_REDIS_URL).await;
    let mut found: HashMap<(String, i32), usize> = HashMap::new();
    for message in messages(&redis, &queue, Lane::Normal).await {
        *found.entry((message.job_id, message.attempt)).or_default() += 1;
    }
    let duplicated: Vec<_> = found.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "duplicated: {duplicated:?}");
    assert!(found.keys().all(|(_, attempt)| *attempt == 0));
    let delivered: HashSet<&String> = found.keys().map(|(id, _)| id).collect();
    let acknowledged: HashSet<&String> = created.iter().collect();
    assert_eq!(acknowledged.len(), created.len(), "distinct jobs");
    let lost: Vec<_> = acknowledged.difference(&delivered).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged jobs lost: {lost:?}",
        lost.len()
    );
    // Every committed job (also one whose create the kill interrupted after
    // its commit) is delivered; nothing else is.
    let stored: Vec<String> = sqlx::query_scalar("SELECT id::text FROM translation_jobs")
        .fetch_all(&pool)
        .await
        .unwrap();
    let stored: HashSet<&String> = stored.iter().collect();
    assert_eq!(delivered, stored);
    assert!(stored.len() <= created.len() + failed);

    cleanup(&redis, &queue).await;
}
