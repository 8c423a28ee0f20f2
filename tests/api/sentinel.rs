//! Redis Sentinel and replication: a master and a replica watched by a real
//! sentinel (passwords on both), a failover of the master while the relay
//! drains, and the WAIT that keeps a push from counting before a replica
//! holds it.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use translation_jobs::{
    outbox::RelayError,
    queue::{Lane, QueueError, ReplicaWait},
};

use crate::{
    support::{
        PATIENCE, TestApp, assert_unreplicated_drains_keep_the_rows, counts, create_jobs,
        create_request, drain_claiming, drain_until_confirmed, free_port, messages, queue_at,
        redis_client, relay, unique_queue,
    },
    topology::{RedisProcess, SentinelSet, eventually, redis_cli, replica_acknowledged},
};

/// How long the relay may take to drain after a failover: the sentinel's
/// reconfiguration and the old master's resync come first.
const AFTER_FAILOVER: Duration = Duration::from_secs(60);

fn server_args(extra: &[&str]) -> Vec<String> {
    ["--save", "", "--appendonly", "no"]
        .iter()
        .chain(extra)
        .map(|a| (*a).to_owned())
        .collect()
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_push_no_replica_confirmed_stays_uncommitted_and_its_retries_push_nothing_twice(
    pool: PgPool,
) {
    let dir = tempfile::tempdir().unwrap();
    let master =
        RedisProcess::start(free_port(), &dir.path().join("master"), &server_args(&[])).await;
    let url = format!("redis://127.0.0.1:{}/0", master.port);
    let name = unique_queue();
    let wait = ReplicaWait {
        replicas: 1,
        timeout: Duration::from_millis(200),
    };
    let relay = relay(
        &pool,
        queue_at(&url, &name).await.with_replica_wait(wait),
        100,
    )
    .await;
    let ids = create_jobs(&pool, 3).await;

    assert_unreplicated_drains_keep_the_rows(&pool, &relay, 3, 3).await;
    let on_master = redis_client(&url).await;
    let pushed: Vec<String> = messages(&on_master, &name, Lane::Normal)
        .await
        .into_iter()
        .map(|m| m.job_id)
        .collect();
    assert_eq!(pushed, ids, "on the master once, whatever the retries");

    // A replica attaches; the next attempt pushes nothing new, and its WAIT
    // covers what the first attempt wrote.
    let port = master.port.to_string();
    let replica = RedisProcess::start(
        free_port(),
        &dir.path().join("replica"),
        &server_args(&["--replicaof", "127.0.0.1", &port]),
    )
    .await;
    replica_acknowledged(master.port, None).await;
    let drained = drain_until_confirmed(&relay).await;
    assert_eq!((drained.claimed, drained.pushed), (3, 0));
    assert_eq!(counts(&pool).await.2, 0);
    let published: i64 = sqlx::query_scalar("SELECT count(*) FROM job_publications")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(published, 3);
    let on_replica = redis_client(&format!("redis://127.0.0.1:{}/0", replica.port)).await;
    let replicated: Vec<String> = messages(&on_replica, &name, Lane::Normal)
        .await
        .into_iter()
        .map(|m| m.job_id)
        .collect();
    assert_eq!(replicated, ids);
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_retry_on_a_new_connection_still_waits_for_what_the_first_attempt_wrote(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let master =
        RedisProcess::start(free_port(), &dir.path().join("master"), &server_args(&[])).await;
    let port = master.port.to_string();
    let replica = RedisProcess::start(
        free_port(),
        &dir.path().join("replica"),
        &server_args(&["--replicaof", "127.0.0.1", &port]),
    )
    .await;
    replica_acknowledged(master.port, None).await;
    let url = format!("redis://127.0.0.1:{}/0", master.port);
    let name = unique_queue();
    let queue = queue_at(&url, &name).await.with_replica_wait(ReplicaWait {
        replicas: 1,
        timeout: Duration::from_millis(200),
    });
    let relay = relay(&pool, queue.clone(), 100).await;
    create_jobs(&pool, 1).await;
    let drained = drain_until_confirmed(&relay).await;
    assert_eq!(drained.claimed, 1);

    // The replica stops acknowledging; a push reaches the master only.
    replica.pause();
    create_jobs(&pool, 2).await;
    assert!(drain_claiming(&relay).await.is_err());

    // The relay's connection is replaced. Its retry finds every message
    // already pushed and adds none: its WAIT must still cover what the
    // first attempt wrote on the old connection.
    redis_cli(master.port, None, &["client", "kill", "type", "normal"]);
    eventually("the client reconnected", PATIENCE, || queue.is_connected()).await;
    for _ in 0..2 {
        let error = drain_claiming(&relay).await.unwrap_err();
        assert!(
            matches!(
                error,
                RelayError::Queue(QueueError::NotReplicated { .. } | QueueError::Reconnected)
                    | RelayError::Queue(QueueError::NotConnected)
                    | RelayError::Queue(QueueError::Command(_))
            ),
            "{error:?}"
        );
        assert_eq!(counts(&pool).await.2, 2, "not committed while unconfirmed");
    }

    replica.resume();
    let drained = drain_until_confirmed(&relay).await;
    assert_eq!((drained.claimed, drained.pushed), (2, 0));
}

/// Creates jobs on `app` from `tasks` concurrent callers until `stop`;
/// every create must be acknowledged. Their ids.
fn keep_creating(
    app: &TestApp,
    tasks: usize,
    acknowledged: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..tasks)
        .map(|_| {
            let mut client = app.client.clone();
            let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let job = client
                        .create_translation_job(create_request())
                        .await
                        .expect("creates never depend on Redis")
                        .into_inner();
                    ids.push(job.id);
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                }
                ids
            })
        })
        .collect()
}

async fn until(acknowledged: &AtomicUsize, count: usize) {
    let deadline = Instant::now() + PATIENCE;
    while acknowledged.load(Ordering::Relaxed) < count {
        assert!(Instant::now() < deadline, "creates stalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn behind_a_sentinel_a_failover_during_a_drain_loses_and_duplicates_nothing(
    pool_options: PgPoolOptions,
    database: PgConnectOptions,
) {
    let set = SentinelSet::start().await;
    let first_master = set.master_port();
    let app = TestApp::spawn_with(
        database.clone(),
        &set.url(),
        unique_queue(),
        &[
            ("REDIS_WAIT_REPLICAS", "1"),
            ("REDIS_WAIT_TIMEOUT", "300ms"),
            ("RELAY_BATCH_SIZE", "20"),
            ("QUEUE_MAX_BACKLOG", "0"),
        ],
    )
    .await;
    app.wait_ready().await;
    let pool = pool_options.connect_with(database).await.unwrap();

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let creators = keep_creating(&app, 4, acknowledged.clone(), stop.clone());

    // Fail over while rows wait in the outbox and the relay pushes them.
    until(&acknowledged, 100).await;
    let deadline = Instant::now() + PATIENCE;
    while counts(&pool).await.2 == 0 {
        assert!(Instant::now() < deadline, "the outbox never held a row");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = acknowledged.load(Ordering::Relaxed);
    let new_master = set.failover().await;
    assert_ne!(new_master, first_master);
    until(&acknowledged, acknowledged.load(Ordering::Relaxed) + 100).await;
    stop.store(true, Ordering::Relaxed);
    let mut created = Vec::new();
    for creator in creators {
        created.extend(creator.await.unwrap());
    }
    assert!(before > 0 && created.len() > before + 100);

    let deadline = Instant::now() + AFTER_FAILOVER;
    while counts(&pool).await.2 != 0 {
        assert!(
            Instant::now() < deadline,
            "the outbox never drained after the failover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Count what the new master holds per (job, attempt).
    let redis = redis_client(&set.server_url(new_master)).await;
    let mut found: HashMap<(String, i32), usize> = HashMap::new();
    for message in messages(&redis, &app.queue, Lane::Normal).await {
        *found.entry((message.job_id, message.attempt)).or_default() += 1;
    }
    let duplicated: Vec<_> = found.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "duplicated: {duplicated:?}");
    let requeued: Vec<_> = found.keys().filter(|(_, attempt)| *attempt != 0).collect();
    assert!(
        requeued.is_empty(),
        "no job needed a second attempt: {requeued:?}"
    );
    let delivered: HashSet<&String> = found.keys().map(|(id, _)| id).collect();
    let expected: HashSet<&String> = created.iter().collect();
    assert_eq!(expected.len(), created.len());
    let lost: Vec<_> = expected.difference(&delivered).collect();
    assert!(
        lost.is_empty(),
        "{} of {} lost: {lost:?}",
        lost.len(),
        created.len()
    );
    assert_eq!(delivered, expected);
    app.stop().await;
}
