//! The relay on its own: crash between push and commit, concurrent relays,
//! NOTIFY wake-ups.

use std::{collections::HashSet, sync::Arc, time::Duration};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_util::sync::CancellationToken;
use translation_jobs::{
    api::convert,
    jobs::{create_job, fields::UserId},
    metrics::Metrics,
    outbox::{OUTBOX_CHANNEL, Relay, RelaySettings, RelayWake},
    queue::{Lane, QueueName, RedisQueue, RedisSettings},
    watch::{Listener, WatchHub},
};

use crate::support::{
    SHARED_REDIS_URL, TestApp, cleanup, counts, create_request, messages, redis_client,
    unique_queue, wait_for_messages,
};

async fn queue(name: &QueueName) -> RedisQueue {
    let queue = RedisQueue::connect(
        &RedisSettings {
            url: SHARED_REDIS_URL.into(),
            command_timeout: Duration::from_secs(2),
        },
        name.clone(),
    )
    .unwrap();
    queue.wait_connected(Duration::from_secs(10)).await.unwrap();
    queue
}

async fn relay(pool: &PgPool, queue: RedisQueue, batch_size: u32) -> Relay {
    Relay::new(
        pool.clone(),
        queue,
        RelaySettings {
            batch_size,
            poll_interval: Duration::from_millis(50),
            max_backoff: Duration::from_millis(100),
            linger: Duration::ZERO,
            marker_ttl: Duration::from_secs(600),
        },
        Arc::new(Metrics::default()),
    )
    .await
    .unwrap()
}

async fn create_jobs(pool: &PgPool, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let new = convert::new_job(UserId::default(), create_request(), 10).unwrap();
        ids.push(create_job(pool, &new).await.unwrap().job.id.to_string());
    }
    ids
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_relay_killed_between_push_and_commit_causes_no_duplicate_and_no_loss(pool: PgPool) {
    let name = unique_queue();
    let relay = relay(&pool, queue(&name).await, 100).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let created = create_jobs(&pool, 5).await;

    // The first attempt reaches Redis, then dies before its commit.
    assert_eq!(relay.push_then_crash().await.unwrap(), 5);
    assert_eq!(counts(&pool).await.2, 5, "rows are back in the outbox");
    assert_eq!(messages(&redis, &name, Lane::Normal).await.len(), 5);

    // The retry claims the same rows; the markers stop a second push.
    let drained = relay.drain_once().await.unwrap();
    assert_eq!(drained.claimed, 5);
    assert_eq!(drained.pushed, 0);
    assert_eq!(counts(&pool).await.2, 0);

    let ids: Vec<String> = messages(&redis, &name, Lane::Normal)
        .await
        .into_iter()
        .map(|m| m.job_id)
        .collect();
    assert_eq!(ids, created);

    // Later rows are pushed normally.
    let more = create_jobs(&pool, 2).await;
    assert_eq!(relay.drain_once().await.unwrap().pushed, 2);
    let all = messages(&redis, &name, Lane::Normal).await;
    assert_eq!(all.len(), 7);
    assert_eq!(all[5].job_id, more[0]);
    cleanup(&redis, &name).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn two_relays_on_one_outbox_publish_every_row_exactly_once(pool: PgPool) {
    let name = unique_queue();
    let redis = redis_client(SHARED_REDIS_URL).await;
    let created = create_jobs(&pool, 600).await;

    let first = relay(&pool, queue(&name).await, 25).await;
    let second = relay(&pool, queue(&name).await, 25).await;
    let token = CancellationToken::new();
    let runs = [
        tokio::spawn(first.run(token.clone(), RelayWake::new())),
        tokio::spawn(second.run(token.clone(), RelayWake::new())),
    ];
    let found = wait_for_messages(&redis, &name, Lane::Normal, created.len()).await;
    // Let any stray second push land before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel();
    for run in runs {
        run.await.unwrap();
    }

    let found_after = messages(&redis, &name, Lane::Normal).await;
    assert_eq!(found_after.len(), created.len(), "no duplicates");
    let distinct: HashSet<&str> = found.iter().map(|m| m.job_id.as_str()).collect();
    let expected: HashSet<&str> = created.iter().map(String::as_str).collect();
    assert_eq!(distinct, expected);
    assert_eq!(counts(&pool).await.2, 0);
    cleanup(&redis, &name).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_notify_on_the_outbox_channel_wakes_the_relay(pool: PgPool) {
    let wake = RelayWake::new();
    let token = CancellationToken::new();
    let listener = Listener::new(pool.clone(), WatchHub::new(), wake.clone());
    let running = tokio::spawn(listener.run(token.clone()));
    // The listener wakes the relay once when it connects (rows may have
    // arrived unannounced before); after that only a NOTIFY does.
    tokio::time::timeout(Duration::from_secs(10), wake.woken())
        .await
        .expect("woken on connect");
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(OUTBOX_CHANNEL)
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), wake.woken())
        .await
        .expect("the notification wakes the relay");
    token.cancel();
    running.await.unwrap();
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn rows_written_elsewhere_are_published_on_notify_without_waiting_for_a_poll(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let app = TestApp::spawn_with(
        database.clone(),
        SHARED_REDIS_URL,
        unique_queue(),
        &[("RELAY_POLL_INTERVAL", "1h")],
    )
    .await;
    app.wait_ready().await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let pool = PgPool::connect_with(database).await.unwrap();

    // Another writer: a job and its outbox row inserted by plain SQL.
    let job_id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO translation_jobs (id, novel_id, target_lang, target_fields, output_dir) \
         VALUES ($1, $1, 'de', '{title}', 'outputs/novel_jobs')",
    )
    .bind(job_id)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO outbox (job_id, lane, payload) VALUES ($1, 'normal', $2)")
        .bind(job_id)
        .bind(format!(r#"{{"job_id":"{job_id}","target_lang":"de"}}"#))
        .execute(&pool)
        .await
        .unwrap();

    // The relay may not be listening yet right after start-up, so notify
    // until the row is published; the hour-long poll never fires here.
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    loop {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(OUTBOX_CHANNEL)
            .execute(&pool)
            .await
            .unwrap();
        if !messages(&redis, &app.queue, Lane::Normal).await.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "NOTIFY never woke the relay"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let found = messages(&redis, &app.queue, Lane::Normal).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].job_id, job_id.to_string());

    app.stop().await;
}
