//! The one window the push-once markers leave: a round pushed but never
//! committed, retried after its marker key expired, is pushed a second time
//! (a second message of the same attempt), and the worker's claim refuses
//! the copy. Pinned here with a one-second `RELAY_MARKER_TTL`; the README's
//! Guarantees say when it opens.

use std::time::Duration;

use sqlx::PgPool;
use translation_jobs::queue::Lane;

use crate::support::{
    SHARED_REDIS_URL, cleanup, counts, create_jobs, messages, queue, redis_client, relay_settings,
    relay_with, unique_queue, wait_for_rollbacks,
};

/// The worker's claim at the message's attempt.
async fn claim(pool: &PgPool, job_id: &str, attempt: i32) -> bool {
    sqlx::query(
        "UPDATE translation_jobs SET status = 'IN_PROGRESS' \
         WHERE id = $1::uuid AND status = 'PENDING' AND attempts = $2",
    )
    .bind(job_id)
    .bind(attempt)
    .execute(pool)
    .await
    .unwrap()
    .rows_affected()
        == 1
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_round_retried_after_its_marker_expired_is_pushed_again_and_the_claim_refuses_the_copy(
    pool: PgPool,
) {
    let name = unique_queue();
    let redis = redis_client(SHARED_REDIS_URL).await;
    let mut settings = relay_settings(10);
    settings.marker_ttl = Duration::from_secs(1);
    let relay = relay_with(&pool, queue(&name).await, settings).await;

    // Within the marker's lifetime: a round pushed and rolled back (its
    // relay died before the commit) is skipped by the retry.
    let early = create_jobs(&pool, 1).await;
    let claimed = relay.claim().await.unwrap();
    relay.publish(&claimed).await.unwrap();
    drop(claimed);
    wait_for_rollbacks(&pool).await;
    let retried = relay.drain_once().await.unwrap();
    assert_eq!(
        (retried.claimed, retried.pushed),
        (1, 0),
        "the marker skips the copy"
    );

    // After it: the same round is pushed again.
    let late = create_jobs(&pool, 1).await;
    let claimed = relay.claim().await.unwrap();
    relay.publish(&claimed).await.unwrap();
    drop(claimed);
    wait_for_rollbacks(&pool).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let retried = relay.drain_once().await.unwrap();
    assert_eq!(
        (retried.claimed, retried.pushed),
        (1, 1),
        "the marker expired: pushed again"
    );
    assert_eq!(counts(&pool).await.2, 0, "committed");

    let lane = messages(&redis, &name, Lane::Normal).await;
    let ids: Vec<&str> = lane.iter().map(|m| m.job_id.as_str()).collect();
    assert_eq!(
        ids,
        [&early[0], &late[0], &late[0]],
        "one copy of the late round"
    );
    assert!(
        lane.iter().all(|m| m.attempt == 0),
        "the copy is of the same attempt"
    );
    // Both copies reach workers; the claim takes the first and refuses the
    // second: the attempt runs once.
    assert!(claim(&pool, &late[0], 0).await);
    assert!(!claim(&pool, &late[0], 0).await, "the copy claims nothing");
    cleanup(&redis, &name).await;
}
