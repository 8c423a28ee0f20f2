//! The relay on its own: crash between push and commit, concurrent relays,
//! NOTIFY wake-ups.

use std::{collections::HashSet, time::Duration};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_util::sync::CancellationToken;
use translation_jobs::{
    outbox::OUTBOX_CHANNEL,
    queue::Lane,
    supervise::Beat,
    wake::Wake,
    watch::{Listener, WatchHub},
};

use crate::support::{
    SHARED_REDIS_URL, TestApp, cleanup, counts, create_jobs, drain_claiming, messages, queue,
    redis_client, relay, unique_queue, wait_for_messages,
};

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_relay_killed_between_push_and_commit_causes_no_duplicate_and_no_loss(pool: PgPool) {
    let name = unique_queue();
    let relay = relay(&pool, queue(&name).await, 100).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let created = create_jobs(&pool, 5).await;

    // The first attempt reaches Redis, then dies before its commit.
    let claimed = relay.claim().await.unwrap();
    let published = relay.publish(&claimed).await.unwrap();
    assert_eq!((claimed.rows.len(), published.pushed()), (5, 5));
    drop(claimed);
    assert_eq!(counts(&pool).await.2, 5, "rows are back in the outbox");
    assert_eq!(messages(&redis, &name, Lane::Normal).await.len(), 5);

    // The retry claims the same rows (once the dropped transaction's
    // rollback has run); the markers stop a second push.
    let drained = drain_claiming(&relay).await.unwrap();
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
        tokio::spawn(first.run(token.clone(), Wake::new(), Beat::detached("relay"))),
        tokio::spawn(second.run(token.clone(), Wake::new(), Beat::detached("relay"))),
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
    let wake = Wake::new();
    let token = CancellationToken::new();
    let listener = Listener::new(pool.clone(), WatchHub::new(pool.clone()), wake.clone());
    let running = tokio::spawn(listener.run(token.clone(), Beat::detached("listener")));
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
