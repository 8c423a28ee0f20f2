//! Retention: finished jobs past `RETAIN_*` are deleted with everything of
//! theirs; nothing else is, and nothing waits for a lock.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use translation_jobs::{
    api::proto::GetTranslationJobRequest,
    jobs::RetentionPolicy,
    metrics::{Gauges, Metrics},
    queue::Lane,
    retention::{Pruned, Retention, RetentionSettings},
};
use uuid::Uuid;

use crate::support::{
    PATIENCE, SHARED_REDIS_URL, TestApp, http_get, redis_client, unique_queue, wait_for_messages,
};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The defaults: a week for COMPLETED and CANCELLED, a month for FAILED.
const POLICY: RetentionPolicy = RetentionPolicy {
    completed: Some(Duration::from_secs(7 * 24 * 3600)),
    failed: Some(Duration::from_secs(30 * 24 * 3600)),
    cancelled: Some(Duration::from_secs(7 * 24 * 3600)),
    batch_size: 1000,
    max_batches: 100,
};

fn retention(pool: &PgPool, policy: RetentionPolicy) -> Retention {
    Retention::new(
        pool.clone(),
        RetentionSettings {
            interval: Duration::from_secs(3600),
            policy,
            call_timeout: Duration::from_secs(10),
            pause_ratio: 0,
        },
    )
}

/// One pass, which must end well within the test's patience (it never
/// waits for a lock).
async fn prune(retention: &Retention) -> Pruned {
    tokio::time::timeout(PATIENCE, retention.prune_once())
        .await
        .expect("the pass ends without waiting")
        .expect("the pass succeeds")
}

/// A job as a worker leaves it, inserted directly: `status`, created
/// `created_ago` ago (its UUIDv7 id drawn then) and last updated
/// `updated_ago` ago, with two subtasks and a publication.
async fn job_updated(
    pool: &PgPool,
    status: &str,
    created_ago: Duration,
    updated_ago: Duration,
) -> Uuid {
    let now = Utc::now();
    let created = now - chrono::Duration::from_std(created_ago).unwrap();
    let updated = now - chrono::Duration::from_std(updated_ago).unwrap();
    let mut random = [0u8; 10];
    fastrand::fill(&mut random);
    let id = uuid::Builder::from_unix_timestamp_millis(
        u64::try_from(created.timestamp_millis()).unwrap(),
        &random,
    )
    .into_uuid();
    sqlx::query(
        "INSERT INTO translation_jobs \
             (id, novel_id, target_lang, target_fields, output_dir, status, created_at, updated_at) \
         VALUES ($1, gen_random_uuid(), 'en', '{title}', 'outputs/novel_jobs', $2, $3, $4)",
    )
    .bind(id)
    .bind(status)
    .bind(created)
    .bind(updated)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO translation_subtasks (id, job_id, entity_type, entity_id, status) \
         SELECT gen_random_uuid(), $1, 'chapter', e, $2 FROM UNNEST('{c-0,c-1}'::text[]) AS e",
    )
    .bind(id)
    .bind(status)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO job_publications (job_id, published_at, lane) VALUES ($1, $2, 'normal')",
    )
    .bind(id)
    .bind(created)
    .execute(pool)
    .await
    .unwrap();
    id
}

/// A job created and last updated `ago` ago.
async fn job(pool: &PgPool, status: &str, ago: Duration) -> Uuid {
    job_updated(pool, status, ago + Duration::from_secs(60), ago).await
}

/// Messages of the job still waiting: a dead letter in the outbox and one
/// in `outbox_scheduled`, as a relay and a scheduler that were down leave
/// them.
async fn waiting_messages(pool: &PgPool, id: Uuid) {
    sqlx::query("INSERT INTO outbox (job_id, lane, payload) VALUES ($1, 'dead', '{}')")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO outbox_scheduled (job_id, attempt, lane, due_at) VALUES ($1, 0, 'dead', now())",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
}

/// Rows of the job in each table: job, subtasks, publication, outbox,
/// outbox_scheduled.
async fn rows_of(pool: &PgPool, id: Uuid) -> [i64; 5] {
    let (a, b, c, d, e) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM translation_jobs WHERE id = $1), \
                (SELECT count(*) FROM translation_subtasks WHERE job_id = $1), \
                (SELECT count(*) FROM job_publications WHERE job_id = $1), \
                (SELECT count(*) FROM outbox WHERE job_id = $1), \
                (SELECT count(*) FROM outbox_scheduled WHERE job_id = $1)",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    [a, b, c, d, e]
}

async fn exists(pool: &PgPool, id: Uuid) -> bool {
    rows_of(pool, id).await[0] == 1
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn old_finished_jobs_go_with_their_subtasks_publications_and_waiting_messages(pool: PgPool) {
    let mut old = Vec::new();
    for status in ["COMPLETED", "FAILED", "CANCELLED"] {
        let id = job(&pool, status, 40 * DAY).await;
        waiting_messages(&pool, id).await;
        old.push(id);
    }
    let pending = job(&pool, "PENDING", DAY).await;
    waiting_messages(&pool, pending).await;

    let pruned = prune(&retention(&pool, POLICY)).await;
    assert_eq!(
        (pruned.completed, pruned.failed, pruned.cancelled),
        (1, 1, 1)
    );
    assert_eq!(pruned.held, 0);
    assert!(!pruned.cut_short);
    for id in old {
        assert_eq!(
            rows_of(&pool, id).await,
            [0; 5],
            "everything of {id} is gone"
        );
    }
    assert_eq!(
        rows_of(&pool, pending).await,
        [1, 2, 1, 1, 1],
        "another job's rows stay"
    );
    assert_eq!(prune(&retention(&pool, POLICY)).await, Pruned::default());
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn pending_and_in_progress_jobs_are_kept_however_old(pool: PgPool) {
    let pending = job(&pool, "PENDING", 400 * DAY).await;
    let working = job(&pool, "IN_PROGRESS", 400 * DAY).await;
    waiting_messages(&pool, pending).await;
    let everything = RetentionPolicy {
        completed: Some(Duration::from_secs(1)),
        failed: Some(Duration::from_secs(1)),
        cancelled: Some(Duration::from_secs(1)),
        ..POLICY
    };
    assert_eq!(
        prune(&retention(&pool, everything)).await,
        Pruned::default()
    );
    assert_eq!(rows_of(&pool, pending).await, [1, 2, 1, 1, 1]);
    assert_eq!(rows_of(&pool, working).await, [1, 2, 1, 0, 0]);
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn finished_jobs_younger_than_their_retention_are_kept(pool: PgPool) {
    let young = [
        job(&pool, "COMPLETED", 6 * DAY).await,
        job(&pool, "CANCELLED", 6 * DAY).await,
        job(&pool, "FAILED", 29 * DAY).await,
        // Created long ago, finished recently: the age counts from the
        // last update.
        job_updated(&pool, "COMPLETED", 90 * DAY, DAY).await,
    ];
    let old = [
        job(&pool, "COMPLETED", 8 * DAY).await,
        job(&pool, "CANCELLED", 8 * DAY).await,
        job(&pool, "FAILED", 31 * DAY).await,
    ];
    let pruned = prune(&retention(&pool, POLICY)).await;
    assert_eq!(pruned.total(), 3);
    for id in young {
        assert!(exists(&pool, id).await, "{id} is kept");
    }
    for id in old {
        assert!(!exists(&pool, id).await, "{id} is deleted");
    }
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn jobs_created_long_ago_but_finished_recently_do_not_stop_a_pass(pool: PgPool) {
    // The oldest ids, each batch's window full of them.
    let mut young = Vec::new();
    for _ in 0..5 {
        young.push(job_updated(&pool, "COMPLETED", 90 * DAY, DAY).await);
    }
    let old = [
        job(&pool, "COMPLETED", 20 * DAY).await,
        job(&pool, "COMPLETED", 20 * DAY).await,
    ];
    let small = RetentionPolicy {
        batch_size: 2,
        ..POLICY
    };
    let pruned = prune(&retention(&pool, small)).await;
    assert_eq!((pruned.completed, pruned.batches), (2, 4), "{pruned:?}");
    for id in young {
        assert!(exists(&pool, id).await);
    }
    for id in old {
        assert!(!exists(&pool, id).await);
    }
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_retention_of_zero_keeps_that_status_forever(pool: PgPool) {
    let completed = job(&pool, "COMPLETED", 3000 * DAY).await;
    let failed = job(&pool, "FAILED", 3000 * DAY).await;
    let policy = RetentionPolicy {
        completed: None,
        ..POLICY
    };
    let pruned = prune(&retention(&pool, policy)).await;
    assert_eq!((pruned.completed, pruned.failed), (0, 1));
    assert!(exists(&pool, completed).await);
    assert!(!exists(&pool, failed).await);
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn jobs_whose_rows_another_transaction_holds_are_skipped_without_waiting_then_deleted(
    pool: PgPool,
) {
    let free = job(&pool, "COMPLETED", 10 * DAY).await;
    // A job row held (a transition, a session left open), a subtask held (a
    // worker's statement), a waiting message held (a relay pushing it), a
    // scheduled message held (the scheduler promoting it).
    let job_held = job(&pool, "COMPLETED", 10 * DAY).await;
    let subtask_held = job(&pool, "COMPLETED", 10 * DAY).await;
    let message_held = job(&pool, "FAILED", 40 * DAY).await;
    let scheduled_held = job(&pool, "FAILED", 40 * DAY).await;
    waiting_messages(&pool, message_held).await;
    waiting_messages(&pool, scheduled_held).await;

    let mut holder = pool.begin().await.unwrap();
    for (statement, id) in [
        (
            "SELECT 1 FROM translation_jobs WHERE id = $1 FOR UPDATE",
            job_held,
        ),
        (
            "SELECT 1 FROM translation_subtasks WHERE job_id = $1 AND entity_id = 'c-1' FOR UPDATE",
            subtask_held,
        ),
        (
            "SELECT 1 FROM outbox WHERE job_id = $1 FOR UPDATE",
            message_held,
        ),
        (
            "SELECT 1 FROM outbox_scheduled WHERE job_id = $1 FOR UPDATE",
            scheduled_held,
        ),
    ] {
        sqlx::query(statement)
            .bind(id)
            .execute(&mut *holder)
            .await
            .unwrap();
    }

    let retention = retention(&pool, POLICY);
    let pruned = prune(&retention).await;
    assert_eq!(pruned.total(), 1, "{pruned:?}");
    assert_eq!(pruned.held, 3, "the job row held is not even seen");
    assert!(!exists(&pool, free).await);
    for id in [job_held, subtask_held, message_held, scheduled_held] {
        assert!(exists(&pool, id).await, "{id} is kept while held");
    }
    assert_eq!(rows_of(&pool, message_held).await, [1, 2, 1, 1, 1]);

    holder.rollback().await.unwrap();
    let pruned = prune(&retention).await;
    assert_eq!(pruned.total(), 4, "{pruned:?}");
    for id in [job_held, subtask_held, message_held, scheduled_held] {
        assert_eq!(rows_of(&pool, id).await, [0; 5], "{id} is gone");
    }
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_failed_job_retried_while_a_pass_runs_is_kept(pool: PgPool) {
    let id = job(&pool, "FAILED", 40 * DAY).await;
    // A retry in flight: the job is PENDING again once it commits.
    let mut retry = pool.begin().await.unwrap();
    sqlx::query(
        "UPDATE translation_jobs SET status = 'PENDING', attempts = attempts + 1 WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *retry)
    .await
    .unwrap();
    let retention = retention(&pool, POLICY);
    assert_eq!(prune(&retention).await.total(), 0);
    retry.commit().await.unwrap();
    assert_eq!(prune(&retention).await.total(), 0);
    assert!(exists(&pool, id).await, "the retried job stays");
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_pass_is_bounded_and_later_passes_delete_the_rest(pool: PgPool) {
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(job(&pool, "COMPLETED", 10 * DAY).await);
    }
    let newest = *ids.iter().max().unwrap();
    let small = RetentionPolicy {
        batch_size: 3,
        max_batches: 2,
        ..POLICY
    };
    let retention = retention(&pool, small);

    let first = prune(&retention).await;
    assert_eq!((first.completed, first.batches), (6, 2));
    assert!(first.cut_short, "jobs were left for the next pass");
    assert!(exists(&pool, newest).await, "oldest first");

    let second = prune(&retention).await;
    assert_eq!((second.completed, second.batches), (4, 2));
    assert!(!second.cut_short);
    for id in ids {
        assert!(!exists(&pool, id).await);
    }
    assert_eq!(prune(&retention).await, Pruned::default());
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_pass_pauses_after_each_batch_that_deleted_for_a_multiple_of_its_time(pool: PgPool) {
    for _ in 0..10 {
        job(&pool, "COMPLETED", 10 * DAY).await;
    }
    let paced = Retention::new(
        pool.clone(),
        RetentionSettings {
            interval: Duration::from_secs(3600),
            policy: RetentionPolicy {
                batch_size: 3,
                ..POLICY
            },
            call_timeout: Duration::from_secs(10),
            pause_ratio: 4,
        },
    );
    let started = std::time::Instant::now();
    let pass = prune(&paced).await;
    let took = started.elapsed();
    // Batches of 3, 3, 3 and 1: each deleted, each followed by its pause.
    assert_eq!((pass.completed, pass.batches), (10, 4));
    assert_eq!(pass.paused, pass.busy * 4);
    assert!(
        took >= pass.busy + pass.paused,
        "the pass took {took:?}, less than its batches ({:?}) and pauses ({:?})",
        pass.busy,
        pass.paused
    );

    // Nothing left: no batch deleted, no pause.
    let idle = prune(&paced).await;
    assert_eq!((idle.total(), idle.paused), (0, Duration::ZERO));
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn deleted_jobs_are_counted_by_status(pool: PgPool) {
    for status in ["COMPLETED", "COMPLETED", "CANCELLED"] {
        job(&pool, status, 10 * DAY).await;
    }
    let metrics = Arc::new(Metrics::default());
    let retention = retention(&pool, POLICY).with_metrics(metrics.clone());
    prune(&retention).await;
    job(&pool, "FAILED", 40 * DAY).await;
    prune(&retention).await;
    let text = metrics.render(&Gauges::default());
    for line in [
        "translation_jobs_pruned_total{status=\"COMPLETED\"} 2\n",
        "translation_jobs_pruned_total{status=\"CANCELLED\"} 1\n",
        "translation_jobs_pruned_total{status=\"FAILED\"} 1\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn each_batch_reads_a_window_of_the_status_index_bounded_by_the_cutoff_s_first_id(
    pool: PgPool,
) {
    // Mostly COMPLETED, as a real table is: the share that would tempt the
    // planner to walk the primary key and filter the status.
    sqlx::query(
        "INSERT INTO translation_jobs (id, novel_id, target_lang, target_fields, output_dir, status) \
         SELECT gen_random_uuid(), gen_random_uuid(), 'en', '{title}', 'out', \
                CASE WHEN g % 20 < 17 THEN 'COMPLETED' WHEN g % 20 < 19 THEN 'FAILED' ELSE 'CANCELLED' END \
         FROM generate_series(1, 20000) AS g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE translation_jobs")
        .execute(&pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    // As on the service's connections (see db.rs). The statement is
    // jobs::prune_batch's first.
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        "PREPARE prune_window(text, uuid, uuid, timestamptz, bigint) AS \
         WITH window_ids AS MATERIALIZED ( \
                  SELECT id FROM translation_jobs \
                   WHERE status = $1 AND id > $2 AND id < $3 \
                   ORDER BY id LIMIT $5), \
              locked AS MATERIALIZED ( \
                  SELECT j.id FROM translation_jobs AS j \
                   WHERE j.id IN (SELECT id FROM window_ids) AND j.status = $1 AND j.updated_at < $4 \
                   ORDER BY j.id FOR UPDATE OF j SKIP LOCKED) \
         SELECT (SELECT count(*) FROM window_ids), \
                (SELECT id FROM window_ids ORDER BY id DESC LIMIT 1), \
                ARRAY(SELECT id FROM locked ORDER BY id)",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let bound = "019a0000-0000-7000-8000-000000000000";
    for (mode, index_cond) in [
        (
            "force_custom_plan",
            format!(
                "Index Cond: ((status = 'COMPLETED'::text) AND (id > '00000000-0000-0000-0000-000000000000'::uuid) AND (id < '{bound}'::uuid))"
            ),
        ),
        (
            "force_generic_plan",
            "Index Cond: ((status = $1) AND (id > $2) AND (id < $3))".to_owned(),
        ),
    ] {
        sqlx::query(&format!("SET plan_cache_mode = {mode}"))
            .execute(&mut *conn)
            .await
            .unwrap();
        let plan: Vec<String> = sqlx::query_scalar(&format!(
            "EXPLAIN EXECUTE prune_window('COMPLETED', '00000000-0000-0000-0000-000000000000', \
             '{bound}', now() - interval '7 days', 1000)"
        ))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains("Index Only Scan Backward using translation_jobs_status_id_idx"),
            "{mode}: the window comes from the (status, id DESC) index alone:\n{plan}"
        );
        assert!(
            plan.contains(&index_cond),
            "{mode}: bounded by the ids in the index condition:\n{plan}"
        );
        assert!(
            plan.contains("id = window_ids.id)"),
            "{mode}: the window's jobs are read one by one by their id:\n{plan}"
        );
    }
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn the_running_service_deletes_a_completed_job_once_past_its_retention(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::spawn_with(
        database.clone(),
        SHARED_REDIS_URL,
        unique_queue(),
        &[("REAPER_INTERVAL", "100ms"), ("RETAIN_COMPLETED", "1s")],
    )
    .await;
    app.wait_ready().await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let redis = redis_client(SHARED_REDIS_URL).await;

    let done = app.create().await;
    let waiting = app.create().await;
    wait_for_messages(&redis, &app.queue, Lane::Normal, 2).await;
    // A worker claims and completes the first job.
    for status in ["IN_PROGRESS", "COMPLETED"] {
        sqlx::query("UPDATE translation_jobs SET status = $2 WHERE id = $1::uuid")
            .bind(&done.id)
            .bind(status)
            .execute(&pool)
            .await
            .unwrap();
    }

    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let found = app
            .client
            .get_translation_job(GetTranslationJobRequest {
                id: done.id.clone(),
                ..Default::default()
            })
            .await;
        match found {
            Err(status) if status.code() == tonic::Code::NotFound => break,
            found => {
                assert!(found.is_ok(), "{found:?}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "the completed job was never deleted"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM translation_subtasks WHERE job_id = $1::uuid")
            .bind(&done.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(left, 0, "its subtasks went with it");
    let pending = app
        .client
        .get_translation_job(GetTranslationJobRequest {
            id: waiting.id.clone(),
            ..Default::default()
        })
        .await
        .expect("the PENDING job stays")
        .into_inner();
    assert_eq!(pending.id, waiting.id);
    let (_, metrics) = http_get(&format!("http://{}/metrics", app.http_addr))
        .await
        .expect("metrics answer");
    assert!(
        metrics.contains("translation_jobs_pruned_total{status=\"COMPLETED\"} 1\n"),
        "{metrics}"
    );
    app.stop().await;
}
