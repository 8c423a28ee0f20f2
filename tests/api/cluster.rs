//! Redis Cluster: a real 3-master cluster on loopback, started and stopped
//! by each test. The service's keys share the queue's hash slot, so every
//! script call and a worker's one BLPOP over all lanes work on it; lane
//! lengths (stats, backpressure) are read from the slot's master; scripts
//! are reloaded on whichever master answers NOSCRIPT; WAIT goes to the master
//! of the queue's slot.

use std::{collections::HashMap, time::Duration};

use fred::{prelude::ListInterface, util::redis_keyslot};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tonic::Code;
use translation_jobs::{
    api::proto::{CreateTranslationJobRequest, GetQueueStatsRequest, Priority},
    queue::{Lane, QueueName, ReplicaWait},
};

use crate::{
    support::{
        NOVEL_ID, TestApp, assert_unreplicated_drains_keep_the_rows, counts, create_jobs,
        create_request, drain_until_confirmed, messages, queue_at, redis_client, relay,
        unique_queue, wait_for_messages,
    },
    topology::RedisCluster,
};

fn slot(queue: &QueueName) -> u16 {
    redis_keyslot(queue.key(Lane::Normal).as_bytes())
}

/// One queue name whose slot each master serves, keyed by the master's port.
fn a_queue_on_every_master(cluster: &RedisCluster) -> HashMap<u16, QueueName> {
    let mut found = HashMap::new();
    while found.len() < cluster.masters.len() {
        let queue = unique_queue();
        found
            .entry(cluster.master_of_slot(slot(&queue)))
            .or_insert(queue);
    }
    found
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn on_a_cluster_every_lane_gets_its_jobs_once_and_one_blpop_pops_them_all(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let cluster = RedisCluster::start(3).await;
    let mut app = TestApp::spawn_with(
        database,
        &cluster.url(),
        unique_queue(),
        &[("QUEUE_MAX_BACKLOG", "9")],
    )
    .await;
    app.wait_ready().await;

    let mut created: HashMap<Lane, Vec<String>> = HashMap::new();
    for (priority, lane) in [
        (Priority::High, Lane::High),
        (Priority::Normal, Lane::Normal),
        (Priority::Low, Lane::Low),
    ] {
        for _ in 0..3 {
            let job = app
                .client
                .create_translation_job(CreateTranslationJobRequest {
                    novel_id: NOVEL_ID.into(),
                    target_lang: "en".into(),
                    priority: priority.into(),
                    ..Default::default()
                })
                .await
                .expect("create succeeds")
                .into_inner();
            created.entry(lane).or_default().push(job.id);
        }
    }

    let redis = redis_client(&cluster.url()).await;
    for (lane, ids) in &created {
        let found = wait_for_messages(&redis, &app.queue, *lane, ids.len()).await;
        let found: Vec<String> = found.into_iter().map(|m| m.job_id).collect();
        assert_eq!(&found, ids, "{lane:?}: every job once, in order");
    }

    let stats = app
        .client
        .get_queue_stats(GetQueueStatsRequest {})
        .await
        .expect("GetQueueStats works on a cluster")
        .into_inner();
    assert!(stats.redis_reachable);
    let lengths: HashMap<String, i64> = stats
        .lanes
        .iter()
        .map(|lane| (lane.lane.clone(), lane.length))
        .collect();
    assert_eq!(lengths.get("high"), Some(&3));
    assert_eq!(lengths.get("normal"), Some(&3));
    assert_eq!(lengths.get("low"), Some(&3));
    assert_eq!(stats.outbox_backlog, 0);

    // Backpressure counts the lanes on the cluster: 9 wait, the limit is 9.
    let refused = app
        .client
        .create_translation_job(create_request())
        .await
        .expect_err("the backlog is full");
    assert_eq!(
        refused.code(),
        Code::ResourceExhausted,
        "{}",
        refused.message()
    );

    // A priority-aware worker's one BLPOP over all three lanes: no CROSSSLOT.
    let keys: Vec<String> = Lane::WAITING
        .iter()
        .map(|lane| app.queue.key(*lane))
        .collect();
    let mut popped = Vec::new();
    for _ in 0..9 {
        let (key, message): (String, String) = redis
            .blpop(keys.clone(), 1.0)
            .await
            .expect("BLPOP across the lanes works on a cluster");
        let job_id = serde_json::from_str::<serde_json::Value>(&message).unwrap()["job_id"]
            .as_str()
            .unwrap()
            .to_owned();
        popped.push((key, job_id));
    }
    let expected: Vec<(String, String)> = Lane::WAITING
        .iter()
        .flat_map(|lane| {
            created[lane]
                .iter()
                .map(|id| (app.queue.key(*lane), id.clone()))
        })
        .collect();
    assert_eq!(popped, expected, "high first, then normal, then low");
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn scripts_are_reloaded_after_noscript_on_every_master_and_old_lane_keys_are_left_alone(
    pool: PgPool,
) {
    let cluster = RedisCluster::start(3).await;
    let url = cluster.url();
    let redis = redis_client(&url).await;
    let queues = a_queue_on_every_master(&cluster);

    let mut expected: HashMap<u16, Vec<String>> = HashMap::new();
    for (master, name) in &queues {
        // What an older version left under the old, untagged name: in
        // another slot, so the first use does not try to move it (a script
        // over both keys would fail with CROSSSLOT).
        let legacy = name.legacy_key(Lane::High).unwrap();
        let _: i64 = redis
            .rpush(&legacy, "left by an older version")
            .await
            .unwrap();

        let relay = relay(&pool, queue_at(&url, name).await, 100).await;
        let ids = create_jobs(&pool, 2).await;
        let drained = relay.drain_once().await.expect("first push on this master");
        assert_eq!(drained.pushed, 2);
        expected.insert(*master, ids);
        let left: i64 = redis.llen(&legacy).await.unwrap();
        assert_eq!(left, 1, "the old key is untouched on a cluster");
    }

    // Every master forgets every script: each push and snapshot below meets
    // NOSCRIPT on the master of its slot, loads the script and runs it.
    cluster.flush_scripts();
    for (master, name) in &queues {
        let queue = queue_at(&url, name).await;
        let relay = relay(&pool, queue.clone(), 100).await;
        let ids = create_jobs(&pool, 2).await;
        let drained = relay.drain_once().await.expect("push after NOSCRIPT");
        assert_eq!(drained.pushed, 2);
        expected.get_mut(master).unwrap().extend(ids);

        let snapshot = queue.snapshot().await.expect("snapshot after NOSCRIPT");
        let normal = snapshot.lane(Lane::Normal).unwrap();
        assert_eq!((normal.pushed, normal.length), (4, 4));
        assert!(snapshot.generation.is_some());
    }

    for (master, name) in &queues {
        let found: Vec<String> = messages(&redis, name, Lane::Normal)
            .await
            .into_iter()
            .map(|m| m.job_id)
            .collect();
        assert_eq!(found, expected[master], "queue on master {master}");
    }
    assert_eq!(counts(&pool).await.2, 0, "outbox empty");
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn on_a_cluster_wait_asks_the_master_of_the_queue_slot(pool: PgPool) {
    let mut cluster = RedisCluster::start(3).await;
    let url = cluster.url();
    let queues = a_queue_on_every_master(&cluster);
    let mut masters: Vec<u16> = queues.keys().copied().collect();
    masters.sort_unstable();
    let (replicated, alone) = (masters[0], masters[1]);
    cluster.add_replica(replicated).await;
    let wait = ReplicaWait {
        replicas: 1,
        timeout: Duration::from_millis(300),
    };

    // The queue on the master with a replica: confirmed.
    let relay_on_replicated = relay(
        &pool,
        queue_at(&url, &queues[&replicated])
            .await
            .with_replica_wait(wait),
        100,
    )
    .await;
    let ids = create_jobs(&pool, 2).await;
    let drained = drain_until_confirmed(&relay_on_replicated).await;
    assert_eq!(drained.claimed, 2);
    let redis = redis_client(&url).await;
    let found: Vec<String> = messages(&redis, &queues[&replicated], Lane::Normal)
        .await
        .into_iter()
        .map(|m| m.job_id)
        .collect();
    assert_eq!(found, ids, "pushed once, confirmed");

    // The queue on a master without one: never confirmed, never committed,
    // and its retries push nothing twice.
    let alone_queue = &queues[&alone];
    let relay_on_alone = relay(
        &pool,
        queue_at(&url, alone_queue).await.with_replica_wait(wait),
        100,
    )
    .await;
    let ids = create_jobs(&pool, 1).await;
    assert_unreplicated_drains_keep_the_rows(&pool, &relay_on_alone, 1, 2).await;
    let found: Vec<String> = messages(&redis, alone_queue, Lane::Normal)
        .await
        .into_iter()
        .map(|m| m.job_id)
        .collect();
    assert_eq!(found, ids, "pushed once, not once per attempt");
}
