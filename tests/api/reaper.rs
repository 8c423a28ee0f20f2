//! Stuck-job rescue: re-queue through the outbox, dead letters, heartbeat.

use std::time::Duration;

use fred::prelude::{HashesInterface, ListInterface};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use translation_jobs::{
    api::convert,
    jobs::{RescuePolicy, create_job, fields::UserId, rescue_stuck_jobs},
    queue::{Lane, RedisQueue},
    reaper::{Reaper, ReaperSettings},
    wake::Wake,
};
use uuid::Uuid;

use crate::support::{
    PATIENCE, SHARED_REDIS_URL, TestApp, cleanup, create_request, queue, redis_client, relay,
    unique_queue, wait_for_messages,
};

const POLICY: RescuePolicy = RescuePolicy {
    stuck_after: Duration::from_secs(600),
    batch_size: 100,
};

async fn new_job(pool: &PgPool) -> Uuid {
    let mut request = create_request();
    // Two rescues, then the third failed attempt is the last.
    request.max_attempts = 3;
    let new = convert::new_job(
        UserId::default(),
        request,
        &convert::CreateRules::with_max_subtasks(10),
    )
    .unwrap();
    create_job(pool, &new).await.unwrap().job.id
}

/// A worker claimed the job and went silent `ago` ago. The timestamp is
/// written with triggers off, as if the clock had moved on.
pub async fn stuck_since(pool: &PgPool, id: Uuid, ago: Duration) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE translation_jobs SET status = 'IN_PROGRESS', \
         updated_at = now() - make_interval(secs => $2) WHERE id = $1",
    )
    .bind(id)
    .bind(ago.as_secs_f64())
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("UPDATE translation_subtasks SET status = 'IN_PROGRESS' WHERE job_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn job_state(pool: &PgPool, id: Uuid) -> (String, i32, Option<String>) {
    sqlx::query_as("SELECT status, attempts, error FROM translation_jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn outbox_attempts(pool: &PgPool, id: Uuid) -> Vec<i32> {
    sqlx::query_scalar("SELECT attempt FROM outbox WHERE job_id = $1 ORDER BY id")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn outbox_lanes(pool: &PgPool, id: Uuid) -> Vec<String> {
    sqlx::query_scalar("SELECT lane FROM outbox WHERE job_id = $1 ORDER BY id")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_stuck_job_is_requeued_then_dead_lettered_after_max_attempts(pool: PgPool) {
    let id = new_job(&pool).await;
    sqlx::query("DELETE FROM outbox")
        .execute(&pool)
        .await
        .unwrap();

    for attempt in 1..=2 {
        stuck_since(&pool, id, Duration::from_secs(3600)).await;
        let rescued = rescue_stuck_jobs(&pool, POLICY).await.unwrap();
        assert_eq!(rescued.requeued, [id], "attempt {attempt}");
        assert_eq!(
            outbox_attempts(&pool, id).await,
            [attempt],
            "one message, for the new attempt"
        );
        assert!(rescued.dead.is_empty());
        let (status, attempts, _) = job_state(&pool, id).await;
        assert_eq!((status.as_str(), attempts), ("PENDING", attempt));
        let subtask: String =
            sqlx::query_scalar("SELECT status FROM translation_subtasks WHERE job_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(subtask, "PENDING", "half-done subtasks are redone");
    }
    // The stale attempt's message never left the outbox; it was dropped.
    assert_eq!(outbox_lanes(&pool, id).await, ["normal"]);

    stuck_since(&pool, id, Duration::from_secs(3600)).await;
    let rescued = rescue_stuck_jobs(&pool, POLICY).await.unwrap();
    assert_eq!(rescued.dead, [id]);
    let (status, attempts, error) = job_state(&pool, id).await;
    assert_eq!(
        (status.as_str(), attempts),
        ("FAILED", 2),
        "the dead letter keeps the attempt"
    );
    assert!(error.unwrap().contains("last attempt"));
    assert_eq!(outbox_lanes(&pool, id).await, ["dead"]);

    // Nothing left to rescue.
    let rescued = rescue_stuck_jobs(&pool, POLICY).await.unwrap();
    assert!(rescued.requeued.is_empty() && rescued.dead.is_empty());
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn progress_on_a_subtask_is_a_heartbeat(pool: PgPool) {
    let id = new_job(&pool).await;
    stuck_since(&pool, id, Duration::from_secs(3600)).await;
    // The worker records progress with plain SQL, as workers do.
    sqlx::query("UPDATE translation_subtasks SET status = 'COMPLETED' WHERE job_id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let rescued = rescue_stuck_jobs(&pool, POLICY).await.unwrap();
    assert!(
        rescued.requeued.is_empty(),
        "a job making progress is left alone"
    );
    assert_eq!(job_state(&pool, id).await.0, "IN_PROGRESS");
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn jobs_not_yet_stuck_and_other_statuses_are_left_alone(pool: PgPool) {
    let recent = new_job(&pool).await;
    stuck_since(&pool, recent, Duration::from_secs(60)).await;
    let pending = new_job(&pool).await;
    let rescued = rescue_stuck_jobs(&pool, POLICY).await.unwrap();
    assert!(rescued.requeued.is_empty() && rescued.dead.is_empty());
    assert_eq!(job_state(&pool, recent).await.0, "IN_PROGRESS");
    assert_eq!(job_state(&pool, pending).await.0, "PENDING");
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn concurrent_reapers_rescue_each_job_once(pool: PgPool) {
    let mut ids = Vec::new();
    for _ in 0..40 {
        let id = new_job(&pool).await;
        stuck_since(&pool, id, Duration::from_secs(3600)).await;
        ids.push(id);
    }
    sqlx::query("DELETE FROM outbox")
        .execute(&pool)
        .await
        .unwrap();
    let policy = RescuePolicy {
        batch_size: 5,
        ..POLICY
    };
    let reaper = |pool: PgPool| async move {
        let mut all = Vec::new();
        loop {
            let rescued = rescue_stuck_jobs(&pool, policy).await.unwrap();
            if rescued.requeued.is_empty() {
                return all;
            }
            all.extend(rescued.requeued);
        }
    };
    let (a, b) = tokio::join!(reaper(pool.clone()), reaper(pool.clone()));
    let mut rescued: Vec<Uuid> = a.into_iter().chain(b).collect();
    rescued.sort();
    ids.sort();
    assert_eq!(rescued, ids, "every job exactly once");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 40);
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn the_running_service_requeues_a_stuck_job_to_redis(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::spawn_with(
        database.clone(),
        SHARED_REDIS_URL,
        crate::support::unique_queue(),
        &[
            ("REAPER_INTERVAL", "100ms"),
            ("STUCK_JOB_TIMEOUT", "1s"),
            ("JOB_MAX_ATTEMPTS", "2"),
        ],
    )
    .await;
    app.wait_ready().await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let redis = redis_client(SHARED_REDIS_URL).await;

    // JOB_MAX_ATTEMPTS=2: one rescue, then the second failed attempt is final.
    let id: Uuid = app.create().await.id.parse().unwrap();
    wait_for_messages(&redis, &app.queue, Lane::Normal, 1).await;
    stuck_since(&pool, id, Duration::from_secs(10)).await;
    let found = wait_for_messages(&redis, &app.queue, Lane::Normal, 2).await;
    assert_eq!(found[1].job_id, id.to_string());

    stuck_since(&pool, id, Duration::from_secs(10)).await;
    let dead = wait_for_messages(&redis, &app.queue, Lane::Dead, 1).await;
    assert_eq!(dead[0].job_id, id.to_string());
    assert_eq!(job_state(&pool, id).await.0, "FAILED");
    app.stop().await;
}

/// A reaper on `queue` that the test drives pass by pass; every call it
/// makes gives up after two seconds.
fn reaper_on(pool: &PgPool, queue: RedisQueue) -> Reaper {
    Reaper::new(
        pool.clone(),
        queue,
        ReaperSettings {
            interval: Duration::from_secs(3600),
            policy: POLICY,
            lost_scan: translation_jobs::config::REAPER_LOST_SCAN,
            call_timeout: Duration::from_secs(2),
        },
        Wake::new(),
    )
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_transaction_holding_a_stuck_job_s_subtask_stops_neither_other_rescues_nor_the_lost_message_pass(
    pool: PgPool,
) {
    let name = unique_queue();
    let queue = queue(&name).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let held = new_job(&pool).await;
    let free = new_job(&pool).await;
    let lost = new_job(&pool).await;
    relay(&pool, queue.clone(), 100)
        .await
        .drain_once()
        .await
        .unwrap();
    // Redis lost the last push (the lane's counter is behind `lost`'s
    // position, its message is gone).
    let _: String = redis.rpop(name.key(Lane::Normal), None).await.unwrap();
    let _: i64 = redis
        .hincrby(name.tagged("state"), "pushed:normal", -1)
        .await
        .unwrap();
    stuck_since(&pool, held, Duration::from_secs(3600)).await;
    stuck_since(&pool, free, Duration::from_secs(3600)).await;

    // Someone holds one stuck job's subtask in a transaction left open.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM translation_subtasks WHERE job_id = $1 FOR UPDATE")
        .bind(held)
        .execute(&mut *holder)
        .await
        .unwrap();

    let reaper = reaper_on(&pool, queue.clone());
    let rescued = tokio::time::timeout(PATIENCE, reaper.reap_once())
        .await
        .expect("the pass ends")
        .expect("the pass succeeds");
    assert_eq!(rescued.requeued, [free], "the other stuck job is rescued");
    assert_eq!(rescued.republished, [lost], "the lost message is found");
    assert_eq!(job_state(&pool, held).await.0, "IN_PROGRESS");

    // Once the transaction ends, the next pass takes the held job too.
    holder.rollback().await.unwrap();
    let rescued = reaper.reap_once().await.unwrap();
    assert_eq!(rescued.requeued, [held]);
    assert!(rescued.republished.is_empty(), "{rescued:?}");
    cleanup(&redis, &name).await;
}

/// Where the lost-message search of `queue` stands (`None` also before its
/// first pass).
async fn lost_search_after(pool: &PgPool, queue: &str) -> Option<Uuid> {
    sqlx::query_scalar("SELECT after_id FROM lost_message_sweeps WHERE queue = $1")
        .bind(queue)
        .fetch_optional(pool)
        .await
        .unwrap()
        .flatten()
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn the_lost_message_search_reads_a_bounded_window_per_pass_and_goes_on_where_it_stopped(
    pool: PgPool,
) {
    let name = unique_queue();
    let queue = queue(&name).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(new_job(&pool).await);
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "job ids are in creation order");
    relay(&pool, queue.clone(), 100)
        .await
        .drain_once()
        .await
        .unwrap();
    // Redis lost the last push: the newest job's message.
    let _: String = redis.rpop(name.key(Lane::Normal), None).await.unwrap();
    let _: i64 = redis
        .hincrby(name.tagged("state"), "pushed:normal", -1)
        .await
        .unwrap();

    // Batches of 2 PENDING jobs, at most 4 that need nothing per pass.
    let reaper = Reaper::new(
        pool.clone(),
        queue.clone(),
        ReaperSettings {
            interval: Duration::from_secs(3600),
            policy: RescuePolicy {
                batch_size: 2,
                ..POLICY
            },
            lost_scan: 4,
            call_timeout: Duration::from_secs(2),
        },
        Wake::new(),
    );
    let pass = || async { reaper.reap_lost_once().await.unwrap().republished };
    assert!(pass().await.is_empty());
    assert_eq!(lost_search_after(&pool, name.as_str()).await, Some(ids[3]));
    assert!(pass().await.is_empty());
    assert_eq!(lost_search_after(&pool, name.as_str()).await, Some(ids[7]));

    // Another replica's pass holds the search: this one leaves it alone.
    let mut other = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM lost_message_sweeps WHERE queue = $1 FOR UPDATE")
        .bind(name.as_str())
        .execute(&mut *other)
        .await
        .unwrap();
    assert!(pass().await.is_empty());
    other.rollback().await.unwrap();
    assert_eq!(lost_search_after(&pool, name.as_str()).await, Some(ids[7]));

    // The third pass reaches the lost message, and the last PENDING job:
    // the next one starts over.
    assert_eq!(pass().await, [ids[9]]);
    assert_eq!(lost_search_after(&pool, name.as_str()).await, None);
    assert!(pass().await.is_empty());
    assert_eq!(lost_search_after(&pool, name.as_str()).await, Some(ids[3]));
    cleanup(&redis, &name).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn the_lost_message_search_comes_back_sooner_until_it_reaches_the_last_pending_job(
    pool: PgPool,
) {
    let name = unique_queue();
    let queue = queue(&name).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(new_job(&pool).await);
    }
    relay(&pool, queue.clone(), 100)
        .await
        .drain_once()
        .await
        .unwrap();

    // Passes of one batch of 2 jobs; 10 s between passes once the search
    // has reached the last PENDING job, a tenth of that before.
    let interval = Duration::from_secs(10);
    let reaper = Reaper::new(
        pool.clone(),
        queue.clone(),
        ReaperSettings {
            interval,
            policy: RescuePolicy {
                batch_size: 2,
                ..POLICY
            },
            lost_scan: 2,
            call_timeout: Duration::from_secs(2),
        },
        Wake::new(),
    );
    let token = tokio_util::sync::CancellationToken::new();
    let lost_data = Wake::new();
    let running = tokio::spawn(reaper.run(
        token.clone(),
        lost_data.clone(),
        translation_jobs::supervise::Beat::detached("reaper"),
    ));
    // The first pass at once; the next three (ids 2-3, 4-5, then the end)
    // within a second each, long before the interval.
    lost_data.wake();
    let started = tokio::time::Instant::now();
    let mut seen = Vec::new();
    while seen.last() != Some(&None) || seen.len() < 2 {
        assert!(
            started.elapsed() < interval - Duration::from_secs(2),
            "the search went no further than {seen:?}"
        );
        let at = lost_search_after(&pool, name.as_str()).await;
        if seen.last() != Some(&at) && (at.is_some() || !seen.is_empty()) {
            seen.push(at);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, [Some(ids[1]), Some(ids[3]), Some(ids[5]), None]);

    // At the end the search waits the whole interval again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(lost_search_after(&pool, name.as_str()).await, None);
    token.cancel();
    running.await.unwrap();
    cleanup(&redis, &name).await;
}
