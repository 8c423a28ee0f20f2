//! Dead-letter redrive: back to PENDING under a new attempt, exactly once,
//! and out of the dead lane, whatever step a redrive dies after.

use std::time::Duration;

use fred::prelude::{Client, KeysInterface, ListInterface};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use translation_jobs::{
    api::proto::{RedriveDeadLettersRequest, RetryTranslationJobRequest},
    jobs::{RescuePolicy, finish_interrupted_redrive, redrive_dead_letters, rescue_stuck_jobs},
    queue::{Lane, QueueName, RedisQueue},
    reaper::{Reaper, ReaperSettings},
    wake::Wake,
};
use uuid::Uuid;

use crate::support::{
    SHARED_REDIS_URL, TestApp, cleanup, create_jobs, messages, queue, redis_client, relay,
    unique_queue, wait_for_messages,
};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Gives up on the jobs at their first rescue: FAILED, message to the dead
/// lane (through the outbox and the relay, as in production).
async fn dead_letter(pool: &PgPool, queue: &RedisQueue, ids: &[Uuid]) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE translation_jobs SET status = 'IN_PROGRESS', \
         updated_at = now() - interval '1 hour' WHERE id = ANY($1)",
    )
    .bind(ids)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("UPDATE translation_subtasks SET status = 'IN_PROGRESS' WHERE job_id = ANY($1)")
        .bind(ids)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let rescued = rescue_stuck_jobs(
        pool,
        RescuePolicy {
            stuck_after: Duration::from_secs(60),
            batch_size: 100,
        },
    )
    .await
    .unwrap();
    assert_eq!(rescued.dead.len(), ids.len());
    // Publish everything in the outbox (the creates, then the dead letters);
    // a service's relay on the same queue may take some of it.
    let relay = relay(pool, queue.clone(), 500).await;
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    loop {
        relay.drain_once().await.unwrap();
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(pool)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the outbox never emptied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn job_state(pool: &PgPool, id: Uuid) -> (String, i32, i32, Option<String>) {
    sqlx::query_as("SELECT status, attempts, rescues, error FROM translation_jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn subtask_statuses(pool: &PgPool, id: Uuid) -> Vec<String> {
    sqlx::query_scalar("SELECT status FROM translation_subtasks WHERE job_id = $1")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn list(redis: &Client, key: String) -> Vec<String> {
    redis.lrange(key, 0, -1).await.unwrap()
}

/// Jobs created, published, popped by a worker (the normal lane emptied),
/// then dead-lettered. Returns their ids.
pub async fn dead_jobs(
    pool: &PgPool,
    queue: &RedisQueue,
    redis: &Client,
    name: &QueueName,
    count: usize,
) -> Vec<Uuid> {
    let ids: Vec<Uuid> = create_jobs(pool, count)
        .await
        .iter()
        .map(|id| Uuid::parse_str(id).unwrap())
        .collect();
    dead_letter(pool, queue, &ids).await;
    wait_for_messages(redis, name, Lane::Dead, count).await;
    // Every push is done (the outbox is empty): the workers had popped the
    // jobs' first messages.
    let _: i64 = redis.del(name.key(Lane::Normal)).await.unwrap();
    ids
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn redrive_moves_dead_jobs_back_to_pending_exactly_once(pool: PgPool) {
    let name = unique_queue();
    let queue = queue(&name).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let ids = dead_jobs(&pool, &queue, &redis, &name, 3).await;
    let (status, attempt, _, error) = job_state(&pool, ids[0]).await;
    assert_eq!((status.as_str(), attempt), ("FAILED", 0));
    assert!(error.is_some());

    let redriven = redrive_dead_letters(&pool, &queue, 2, CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(redriven.jobs.len(), 2, "the limit holds");
    assert_eq!(redriven.remaining, 1);
    assert_eq!((redriven.stale, redriven.unreadable), (0, 0));
    let rest = redrive_dead_letters(&pool, &queue, 0, CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(rest.jobs.len(), 1);
    assert_eq!(rest.remaining, 0);

    for id in &ids {
        assert_eq!(
            job_state(&pool, *id).await,
            ("PENDING".to_owned(), 1, 0, None),
            "a new attempt, a fresh budget, the error cleared"
        );
        assert_eq!(subtask_statuses(&pool, *id).await, ["PENDING"]);
    }
    assert!(messages(&redis, &name, Lane::Dead).await.is_empty());
    assert!(list(&redis, queue.redriving_key()).await.is_empty());

    relay(&pool, queue.clone(), 500)
        .await
        .drain_once()
        .await
        .unwrap();
    let queued = messages(&redis, &name, Lane::Normal).await;
    assert_eq!(queued.len(), 3, "one message per redriven job");
    for message in &queued {
        assert_eq!(message.attempt, 1);
    }

    let again = redrive_dead_letters(&pool, &queue, 0, CALL_TIMEOUT)
        .await
        .unwrap();
    assert!(again.jobs.is_empty(), "nothing is redriven twice");
    cleanup(&redis, &name).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_redrive_that_died_after_taking_is_finished_at_start(pool: PgPool) {
    let name = unique_queue();
    let queue = queue(&name).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let ids = dead_jobs(&pool, &queue, &redis, &name, 2).await;

    // Died right after step 1: the messages sit in the processing list.
    let taken = queue.take_dead_letters(10, true).await.unwrap();
    assert_eq!(taken.len(), 2);
    assert!(messages(&redis, &name, Lane::Dead).await.is_empty());
    assert_eq!(list(&redis, queue.redriving_key()).await.len(), 2);

    let finished = finish_interrupted_redrive(&pool, &queue, CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(finished.jobs.len(), 2, "nothing was lost");
    for id in &ids {
        assert_eq!(job_state(&pool, *id).await.0, "PENDING");
    }
    assert!(list(&redis, queue.redriving_key()).await.is_empty());
    cleanup(&redis, &name).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_redrive_that_died_after_committing_redrives_nothing_twice(pool: PgPool) {
    let name = unique_queue();
    let queue = queue(&name).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let ids = dead_jobs(&pool, &queue, &redis, &name, 1).await;
    let taken = queue.take_dead_letters(10, true).await.unwrap();

    // Steps 1 and 2 done, step 3 not: put the message back in the processing
    // list after a complete redrive, as if its removal never happened.
    let done = redrive_dead_letters(&pool, &queue, 0, CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(done.jobs.len(), 1);
    let _: i64 = redis
        .rpush(queue.redriving_key(), taken[0].clone())
        .await
        .unwrap();

    let finished = finish_interrupted_redrive(&pool, &queue, CALL_TIMEOUT)
        .await
        .unwrap();
    assert!(
        finished.jobs.is_empty(),
        "the job moved on: not redriven again"
    );
    assert_eq!(finished.stale, 1);
    assert_eq!(
        job_state(&pool, ids[0]).await.1,
        1,
        "still the one new attempt"
    );
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(outbox, 1, "one message for the one new attempt");
    assert!(list(&redis, queue.redriving_key()).await.is_empty());
    cleanup(&redis, &name).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn stale_and_unreadable_dead_letters_are_told_apart(pool: PgPool) {
    let name = unique_queue();
    let queue = queue(&name).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let ids = dead_jobs(&pool, &queue, &redis, &name, 1).await;
    // Retried by hand: its dead letter is stale now.
    translation_jobs::jobs::retry_job(&pool, ids[0], &translation_jobs::jobs::Scope::All)
        .await
        .unwrap();
    let _: i64 = redis
        .rpush(name.key(Lane::Dead), "not a job message")
        .await
        .unwrap();

    let redriven = redrive_dead_letters(&pool, &queue, 0, CALL_TIMEOUT)
        .await
        .unwrap();
    assert!(redriven.jobs.is_empty());
    assert_eq!((redriven.stale, redriven.unreadable), (1, 1));
    assert_eq!(
        list(&redis, name.key(Lane::Dead)).await,
        ["not a job message"],
        "what cannot be read stays in the dead lane"
    );
    assert_eq!(
        job_state(&pool, ids[0]).await.1,
        1,
        "only the retry's attempt"
    );
    cleanup(&redis, &name).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn the_redrive_rpc_and_http_route_queue_dead_jobs_again(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database.clone()).await;
    let pool = PgPoolOptions::new().connect_with(database).await.unwrap();
    let queue = queue(&app.queue).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let ids = dead_jobs(&pool, &queue, &redis, &app.queue, 2).await;

    let response = app
        .client
        .redrive_dead_letters(RedriveDeadLettersRequest { limit: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.jobs.len(), 1);
    assert_eq!(response.jobs[0].attempts, 1);
    assert_eq!(response.dead_letters_remaining, 1);
    let negative = app
        .client
        .redrive_dead_letters(RedriveDeadLettersRequest { limit: -1 })
        .await
        .unwrap_err();
    assert_eq!(negative.code(), tonic::Code::InvalidArgument);
    assert!(negative.message().starts_with("limit: "));

    let (status, body) = crate::support::http_request(
        "POST",
        &format!("http://{}/api/v1/dead-letters/redrive", app.http_addr),
        Some(""),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(body["jobs"][0]["status"], "PENDING");
    assert_eq!(body["dead_letters_remaining"], 0);

    // The service's relay queues both again, each as attempt 1.
    let queued = wait_for_messages(&redis, &app.queue, Lane::Normal, 2).await;
    let mut queued_ids: Vec<String> = queued.iter().map(|m| m.job_id.clone()).collect();
    queued_ids.sort();
    let mut expected: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    expected.sort();
    assert_eq!(queued_ids, expected);
    assert!(queued.iter().all(|m| m.attempt == 1));

    // A retry of a redriven job is refused: it is PENDING.
    let refused = app
        .client
        .retry_translation_job(RetryTranslationJobRequest {
            id: ids[0].to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let _ = app.create().await;
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn dead_letters_survive_redis_losing_its_data(pool: PgPool) {
    let name = unique_queue();
    let queue = queue(&name).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let ids = dead_jobs(&pool, &queue, &redis, &name, 2).await;

    // Redis loses its data (FLUSHALL, a restart without persistence): here
    // only this test's keys, as other tests share this Redis.
    cleanup(&redis, &name).await;
    // The reaper's next pass notices and starts a new generation.
    let reaper = Reaper::new(
        pool.clone(),
        queue.clone(),
        ReaperSettings {
            interval: Duration::from_secs(3600),
            policy: RescuePolicy {
                stuck_after: Duration::from_secs(3600),
                batch_size: 100,
            },
            lost_scan: translation_jobs::config::REAPER_LOST_SCAN,
            call_timeout: CALL_TIMEOUT,
        },
        Wake::new(),
    );
    reaper.reap_once().await.unwrap();
    relay(&pool, queue.clone(), 500)
        .await
        .drain_once()
        .await
        .unwrap();

    let redriven = redrive_dead_letters(&pool, &queue, 0, CALL_TIMEOUT)
        .await
        .unwrap();
    let mut redriven_ids: Vec<Uuid> = redriven.jobs.iter().map(|job| job.id).collect();
    redriven_ids.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(redriven_ids, expected, "both dead letters are found again");
    relay(&pool, queue.clone(), 500)
        .await
        .drain_once()
        .await
        .unwrap();
    let queued = messages(&redis, &name, Lane::Normal).await;
    let mut queued_ids: Vec<String> = queued.iter().map(|m| m.job_id.clone()).collect();
    queued_ids.sort();
    let expected: Vec<String> = expected.iter().map(Uuid::to_string).collect();
    assert_eq!(queued_ids, expected, "each with a message");
    for id in &ids {
        assert_eq!(job_state(&pool, *id).await.0, "PENDING");
    }
    assert!(queued.iter().all(|m| m.attempt == 1));
    cleanup(&redis, &name).await;
}
