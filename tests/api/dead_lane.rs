//! The dead lane stays bounded: the oldest dead letters leave once their
//! job is gone, moved on, or failed longer ago than DEAD_LETTER_MAX_AGE,
//! and the lane is cut to DEAD_LETTER_MAX_LENGTH; a message is dropped only
//! while it is still the lane's head.

use std::{sync::Arc, time::Duration};

use fred::interfaces::ListInterface;
use sqlx::PgPool;
use translation_jobs::{
    api::convert,
    dead_lane::{DeadLane, DeadLaneSettings},
    jobs::{create_job, fields::UserId},
    metrics::Metrics,
    queue::Lane,
};
use uuid::Uuid;

use crate::support::{
    SHARED_REDIS_URL, cleanup, create_request, queue, redis_client, unique_queue,
};

/// A job FAILED for good `ago` ago (written with triggers off, as if the
/// clock had moved on); its dead letter.
async fn failed_job(pool: &PgPool, ago: Duration) -> (Uuid, String) {
    let new = convert::new_job(
        UserId::default(),
        create_request(),
        &convert::CreateRules::with_max_subtasks(10),
    )
    .unwrap();
    let job = create_job(pool, &new).await.unwrap().job;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE translation_jobs SET status = 'FAILED', \
         updated_at = now() - make_interval(secs => $2) WHERE id = $1",
    )
    .bind(job.id)
    .bind(ago.as_secs_f64())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    (job.id, job.message().to_json())
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn old_gone_and_moved_on_dead_letters_leave_from_the_head_and_the_cap_holds(pool: PgPool) {
    let name = unique_queue();
    let queue = queue(&name).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let dead = name.key(Lane::Dead);

    let hour = Duration::from_secs(3600);
    let (_, old) = failed_job(&pool, hour * 2).await;
    let gone = format!(r#"{{"job_id":"{}","attempt":0}}"#, Uuid::now_v7());
    let (moved_id, moved) = failed_job(&pool, Duration::ZERO).await;
    sqlx::query("UPDATE translation_jobs SET attempts = 1, status = 'PENDING' WHERE id = $1")
        .bind(moved_id)
        .execute(&pool)
        .await
        .unwrap();
    let (_, young) = failed_job(&pool, Duration::from_secs(60)).await;
    let (_, old_behind_young) = failed_job(&pool, hour * 2).await;
    let (_, newest) = failed_job(&pool, Duration::ZERO).await;
    let lane = vec![
        old.clone(),
        gone.clone(),
        moved.clone(),
        young.clone(),
        old_behind_young.clone(),
        newest.clone(),
    ];
    let _: i64 = redis.rpush(&dead, lane).await.unwrap();

    let metrics = Arc::new(Metrics::default());
    let trim = DeadLane::new(
        pool.clone(),
        queue.clone(),
        DeadLaneSettings {
            max_age: Some(hour),
            max_length: 2,
        },
        Duration::from_secs(10),
        metrics.clone(),
    );
    let dropped = trim.trim_once().await.unwrap();
    let left: Vec<String> = redis.lrange(&dead, 0, -1).await.unwrap();
    // Three from the head (old, gone, moved on), stopping at the young one;
    // then the cap of 2 keeps the newest two.
    assert_eq!(left, [old_behind_young, newest]);
    assert_eq!(dropped, 4);
    assert!(
        metrics
            .render(&Default::default())
            .contains("translation_dead_letters_trimmed_total 4"),
        "the metric counts"
    );
    cleanup(&redis, &name).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_message_taken_meanwhile_stops_the_trim_and_nothing_else_is_dropped(pool: PgPool) {
    let name = unique_queue();
    let queue = queue(&name).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let dead = name.key(Lane::Dead);
    let (_, first) = failed_job(&pool, Duration::from_secs(7200)).await;
    let (_, second) = failed_job(&pool, Duration::from_secs(7200)).await;
    let _: i64 = redis
        .rpush(&dead, vec![first.clone(), second.clone()])
        .await
        .unwrap();

    // Read both as expired, then a redrive takes the first.
    let read = queue.oldest_dead_letters(10).await.unwrap();
    let _: Option<String> = redis.lpop(&dead, None).await.unwrap();
    let _: i64 = redis.rpush(&dead, "not json").await.unwrap();
    let dropped = queue.trim_dead_letters(&read, 0).await.unwrap();
    assert_eq!(dropped, 0, "the head was no longer what was read");
    let left: Vec<String> = redis.lrange(&dead, 0, -1).await.unwrap();
    assert_eq!(left, [second.clone(), "not json".to_owned()]);

    // A message that is not a job's stops the run from the head.
    let _: i64 = redis.lpush(&dead, "not json either").await.unwrap();
    let trim = DeadLane::new(
        pool.clone(),
        queue.clone(),
        DeadLaneSettings {
            max_age: Some(Duration::from_secs(60)),
            max_length: 0,
        },
        Duration::from_secs(10),
        Arc::new(Metrics::default()),
    );
    assert_eq!(trim.trim_once().await.unwrap(), 0);
    cleanup(&redis, &name).await;
}
