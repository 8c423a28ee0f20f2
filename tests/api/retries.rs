//! Automatic retries: a worker's FAILED, guarded by its attempt, puts a job
//! with attempts left back to PENDING as a new attempt after an exponential
//! backoff; `retryable = false` or the last attempt makes the failure final
//! and sends the message to the dead lane, where RedriveDeadLetters finds
//! it; a rescue of a stuck job uses the same budget. The backoffs are
//! measured on the running service.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_stream::StreamExt;
use translation_jobs::{
    api::{
        convert,
        proto::{
            GetTranslationJobRequest, JobStatus, RedriveDeadLettersRequest, SubtaskSpec,
            TranslationJob, WatchTranslationJobRequest,
        },
    },
    jobs::{self, RescuePolicy, create_job, fields::UserId},
    queue::Lane,
};
use uuid::Uuid;

use crate::{
    reaper::stuck_since,
    support::{SHARED_REDIS_URL, TestApp, create_request, messages, redis_client, unique_queue},
};

const CLAIM: &str = "UPDATE translation_jobs SET status = 'IN_PROGRESS' \
                     WHERE id = $1 AND status = 'PENDING' AND attempts = $2";
const START: &str = "UPDATE translation_subtasks \
                     SET status = 'IN_PROGRESS', attempts = attempts + 1, error = NULL \
                     WHERE id = $1 AND job_attempt = $2 AND status IN ('PENDING', 'FAILED')";
const COMPLETE: &str = "UPDATE translation_subtasks SET status = 'COMPLETED', error = NULL \
                        WHERE id = $1 AND job_attempt = $2 AND status = 'IN_PROGRESS'";
const FAIL_SUBTASK: &str = "UPDATE translation_subtasks SET status = 'FAILED', error = 'no luck' \
                            WHERE id = $1 AND job_attempt = $2 AND status = 'IN_PROGRESS'";
/// The worker's failure, as the contract gives it; RETURNING shows what the
/// service made of it.
const FAIL_JOB: &str = "UPDATE translation_jobs SET status = 'FAILED', error = $3 \
                        WHERE id = $1 AND status = 'IN_PROGRESS' AND attempts = $2 \
                        RETURNING status, attempts";
const FAIL_JOB_FOR_GOOD: &str = "UPDATE translation_jobs \
                                 SET status = 'FAILED', error = $3, retryable = false \
                                 WHERE id = $1 AND status = 'IN_PROGRESS' AND attempts = $2 \
                                 RETURNING status, attempts";

async fn run(pool: &PgPool, statement: &str, id: Uuid, attempt: i32) -> u64 {
    sqlx::query(statement)
        .bind(id)
        .bind(attempt)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected()
}

async fn fail(pool: &PgPool, statement: &str, id: Uuid, attempt: i32) -> (String, i32) {
    sqlx::query_as(statement)
        .bind(id)
        .bind(attempt)
        .bind(format!("failed on attempt {attempt}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// When the job's current attempt is due, and when its row last changed.
async fn schedule(pool: &PgPool, id: Uuid) -> (Option<DateTime<Utc>>, DateTime<Utc>) {
    sqlx::query_as("SELECT scheduled_at, updated_at FROM translation_jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn subtasks(pool: &PgPool, id: Uuid) -> Vec<(String, String, i32)> {
    sqlx::query_as(
        "SELECT entity_id, status, job_attempt FROM translation_subtasks \
         WHERE job_id = $1 ORDER BY entity_id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Pops the lane's next message, polling every 5 ms; the time it was seen.
async fn pop(
    redis: &fred::prelude::Client,
    app: &TestApp,
    lane: Lane,
    patience: Duration,
) -> Option<(translation_jobs::queue::JobMessage, DateTime<Utc>)> {
    use fred::interfaces::ListInterface;
    let deadline = tokio::time::Instant::now() + patience;
    while tokio::time::Instant::now() < deadline {
        let raw: Option<String> = redis.lpop(app.queue.key(lane), None).await.unwrap();
        if let Some(raw) = raw {
            return Some((serde_json::from_str(&raw).unwrap(), Utc::now()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

async fn get(app: &mut TestApp, id: Uuid) -> TranslationJob {
    app.client
        .get_translation_job(GetTranslationJobRequest {
            id: id.to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn millis(delta: chrono::Duration) -> i64 {
    delta.num_milliseconds()
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_failed_job_is_retried_with_a_growing_backoff_then_dead_lettered(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::spawn_with(
        database.clone(),
        SHARED_REDIS_URL,
        unique_queue(),
        &[("RETRY_BACKOFF_BASE", "1s"), ("RETRY_BACKOFF_MAX", "1m")],
    )
    .await;
    app.wait_ready().await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let redis = redis_client(SHARED_REDIS_URL).await;

    let mut request = create_request();
    request.max_attempts = 3;
    request.subtasks = ["a", "b"]
        .iter()
        .map(|id| SubtaskSpec {
            entity_type: "chapter".into(),
            entity_id: (*id).into(),
        })
        .collect();
    let created = app
        .client
        .create_translation_job(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!((created.max_attempts, created.failed_attempts), (3, 0));
    let id: Uuid = created.id.parse().unwrap();
    let ids: Vec<Uuid> = created
        .subtasks
        .iter()
        .map(|s| s.id.parse().unwrap())
        .collect();
    let mut watch = app
        .client
        .watch_translation_job(WatchTranslationJobRequest { id: id.to_string() })
        .await
        .unwrap()
        .into_inner();

    let (message, _) = pop(&redis, &app, Lane::Normal, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(message.attempt, 0);

    // Attempt 0: chapter a done, chapter b fails, the job fails.
    assert_eq!(run(&pool, CLAIM, id, 0).await, 1);
    assert_eq!(run(&pool, START, ids[0], 0).await, 1);
    assert_eq!(run(&pool, COMPLETE, ids[0], 0).await, 1);
    assert_eq!(run(&pool, START, ids[1], 0).await, 1);
    assert_eq!(run(&pool, FAIL_SUBTASK, ids[1], 0).await, 1);

    let mut waits = Vec::new();
    for attempt in 0..2 {
        let (status, now) = fail(&pool, FAIL_JOB, id, attempt).await;
        assert_eq!(
            (status.as_str(), now),
            ("PENDING", attempt + 1),
            "the worker's FAILED became a new attempt"
        );
        let (due, failed_at) = schedule(&pool, id).await;
        let due = due.expect("the retry is scheduled");
        let job = get(&mut app, id).await;
        assert_eq!(job.status(), JobStatus::Pending);
        assert_eq!(
            (job.attempts, job.failed_attempts),
            (attempt + 1, attempt + 1)
        );
        assert_eq!(
            job.error,
            format!("failed on attempt {attempt}"),
            "the error is kept"
        );
        assert!(job.retryable);

        // base * 2^(n-1), within 20% either way.
        let planned = millis(due - failed_at);
        let base = 1000 * (1 << attempt);
        assert!(
            (base * 8 / 10..=base * 12 / 10).contains(&planned),
            "failure {}: backoff {planned} ms, expected {base} ms +-20%",
            attempt + 1
        );
        let (message, seen) = pop(&redis, &app, Lane::Normal, Duration::from_secs(10))
            .await
            .expect("the retry's message arrives");
        assert_eq!(message.attempt, attempt + 1);
        let waited = millis(seen - failed_at);
        let late = millis(seen - due);
        eprintln!(
            "failure {}: planned backoff {planned} ms, message seen after {waited} ms ({late} ms after due)",
            attempt + 1
        );
        assert!(late >= 0, "pushed {} ms before its backoff ended", -late);
        assert!(late < 1200, "pushed {late} ms after its backoff ended");
        waits.push(waited);

        // The promotion started the unfinished subtask again, under the new
        // attempt; the completed one stays done; the old attempt is shut out.
        assert_eq!(
            subtasks(&pool, id).await,
            [
                ("a".to_owned(), "COMPLETED".to_owned(), attempt + 1),
                ("b".to_owned(), "PENDING".to_owned(), attempt + 1),
            ]
        );
        assert_eq!(
            run(&pool, START, ids[1], attempt).await,
            0,
            "a stale worker"
        );
        assert_eq!(run(&pool, CLAIM, id, attempt + 1).await, 1);
        assert_eq!(run(&pool, START, ids[1], attempt + 1).await, 1);
        assert_eq!(run(&pool, FAIL_SUBTASK, ids[1], attempt + 1).await, 1);
    }
    assert!(waits[1] > waits[0], "the backoff grows: {waits:?}");

    // The third failure is the last: FAILED, closed, dead-lettered.
    let (status, attempts) = fail(&pool, FAIL_JOB, id, 2).await;
    assert_eq!((status.as_str(), attempts), ("FAILED", 2));
    let (dead, _) = pop(&redis, &app, Lane::Dead, Duration::from_secs(5))
        .await
        .expect("the final failure is dead-lettered");
    assert_eq!(
        (dead.job_id.as_str(), dead.attempt),
        (created.id.as_str(), 2)
    );
    let job = get(&mut app, id).await;
    assert_eq!((job.status(), job.failed_attempts), (JobStatus::Failed, 3));
    assert!(
        subtasks(&pool, id)
            .await
            .iter()
            .all(|(_, _, guard)| *guard == -1),
        "no worker may write the subtasks of a failed job"
    );

    // The watch stream saw both retries and ended at the final failure.
    let mut seen = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the stream moves")
    {
        let item = item.unwrap();
        seen.push((item.status(), item.attempts, item.failed_attempts));
    }
    assert!(seen.contains(&(JobStatus::Pending, 1, 1)), "{seen:?}");
    assert!(seen.contains(&(JobStatus::Pending, 2, 2)), "{seen:?}");
    assert_eq!(seen.last(), Some(&(JobStatus::Failed, 2, 3)), "{seen:?}");

    // The dead letter is where RedriveDeadLetters finds it (pushed back
    // first: the test popped it).
    let payload = serde_json::json!({"job_id": created.id, "target_lang": "en",
        "output_dir": "outputs/novel_jobs", "target_fields": ["title", "description", "content"],
        "attempt": 2});
    let _: i64 = fred::interfaces::ListInterface::rpush(
        &redis,
        app.queue.key(Lane::Dead),
        payload.to_string(),
    )
    .await
    .unwrap();
    let redriven = app
        .client
        .redrive_dead_letters(RedriveDeadLettersRequest { limit: 10 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(redriven.jobs.len(), 1, "{redriven:?}");
    assert_eq!(
        (
            redriven.jobs[0].status(),
            redriven.jobs[0].attempts,
            redriven.jobs[0].failed_attempts
        ),
        (JobStatus::Pending, 3, 0),
        "a redrive gives a fresh budget"
    );
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_failure_a_worker_marks_not_retryable_is_final(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::spawn_with(
        database.clone(),
        SHARED_REDIS_URL,
        unique_queue(),
        &[("JOB_MAX_ATTEMPTS", "5"), ("RETRY_BACKOFF_BASE", "100ms")],
    )
    .await;
    app.wait_ready().await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let redis = redis_client(SHARED_REDIS_URL).await;

    let job = app.create().await;
    assert_eq!(job.max_attempts, 5, "JOB_MAX_ATTEMPTS is the default");
    let id: Uuid = job.id.parse().unwrap();
    pop(&redis, &app, Lane::Normal, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(run(&pool, CLAIM, id, 0).await, 1);
    let (status, _) = fail(&pool, FAIL_JOB_FOR_GOOD, id, 0).await;
    assert_eq!(status, "FAILED");
    pop(&redis, &app, Lane::Dead, Duration::from_secs(5))
        .await
        .expect("dead-lettered");
    let job = get(&mut app, id).await;
    assert_eq!(
        (job.status(), job.failed_attempts, job.retryable),
        (JobStatus::Failed, 1, false)
    );
    // Nothing else comes.
    assert!(
        pop(&redis, &app, Lane::Normal, Duration::from_millis(500))
            .await
            .is_none()
    );

    // A retry by hand gives the job its budget and its retryable back.
    let retried = app
        .client
        .retry_translation_job(translation_jobs::api::proto::RetryTranslationJobRequest {
            id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            retried.status(),
            retried.failed_attempts,
            retried.retryable,
            retried.schedule_time
        ),
        (JobStatus::Pending, 0, true, None)
    );
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn by_default_a_failure_is_final_and_dead_lettered(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database.clone()).await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let redis = redis_client(SHARED_REDIS_URL).await;

    let job = app.create().await;
    assert_eq!(job.max_attempts, 1);
    let id: Uuid = job.id.parse().unwrap();
    assert_eq!(run(&pool, CLAIM, id, 0).await, 1);
    let (status, attempts) = fail(&pool, FAIL_JOB, id, 0).await;
    assert_eq!((status.as_str(), attempts), ("FAILED", 0));
    pop(&redis, &app, Lane::Dead, Duration::from_secs(5))
        .await
        .expect("dead-lettered");
    assert_eq!(messages(&redis, &app.queue, Lane::Normal).await.len(), 1);
    app.stop().await;
}

/// Rescues of a stuck job and a worker's failures share one budget.
#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_rescue_uses_an_attempt_of_the_same_budget(pool: PgPool) {
    let mut request = create_request();
    request.max_attempts = 2;
    let new = convert::new_job(
        UserId::default(),
        request,
        &convert::CreateRules::with_max_subtasks(10),
    )
    .unwrap();
    let id = create_job(&pool, &new).await.unwrap().job.id;
    // As if the relay had published the first message.
    sqlx::query("DELETE FROM outbox")
        .execute(&pool)
        .await
        .unwrap();
    let policy = RescuePolicy {
        stuck_after: Duration::from_secs(600),
        batch_size: 100,
    };

    assert_eq!(run(&pool, CLAIM, id, 0).await, 1);
    stuck_since(&pool, id, Duration::from_secs(3600)).await;
    let rescued = jobs::rescue_stuck_jobs(&pool, policy).await.unwrap();
    assert_eq!(rescued.requeued, [id]);

    assert_eq!(run(&pool, CLAIM, id, 1).await, 1);
    let (status, attempts) = fail(&pool, FAIL_JOB, id, 1).await;
    assert_eq!(
        (status.as_str(), attempts),
        ("FAILED", 1),
        "one rescue and one failure: two failed attempts of two"
    );
    let (failures, rescues): (i32, i32) =
        sqlx::query_as("SELECT failures, rescues FROM translation_jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((failures, rescues), (2, 1));
    let promoted = jobs::promote_due(&pool, 10).await.unwrap();
    assert_eq!(promoted.queued, 1);
    let lanes: Vec<String> = sqlx::query_scalar("SELECT lane FROM outbox WHERE job_id = $1")
        .bind(id)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(lanes, ["dead"]);
}

/// A retry scheduled for later, then cancelled: its row goes with the
/// cancel and nothing is queued when the time comes.
#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_retry_cancelled_during_its_backoff_is_never_queued(pool: PgPool) {
    let mut request = create_request();
    request.max_attempts = 2;
    let new = convert::new_job(
        UserId::default(),
        request,
        &convert::CreateRules::with_max_subtasks(10),
    )
    .unwrap();
    let id = create_job(&pool, &new).await.unwrap().job.id;
    sqlx::query("DELETE FROM outbox")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(run(&pool, CLAIM, id, 0).await, 1);
    fail(&pool, FAIL_JOB, id, 0).await;
    jobs::cancel_job(&pool, id, &jobs::Scope::All)
        .await
        .unwrap();
    sqlx::query("UPDATE outbox_scheduled SET due_at = now() - interval '1 hour'")
        .execute(&pool)
        .await
        .unwrap();
    let promoted = jobs::promote_due(&pool, 10).await.unwrap();
    assert_eq!(
        promoted,
        jobs::Promoted::default(),
        "the cancel took the row"
    );
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(queued, 0);
}

/// A due row whose job moved on without removing it (here: its row is
/// rewritten by hand) is dropped, not queued.
#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_due_row_of_a_job_that_moved_on_is_dropped(pool: PgPool) {
    let new = convert::new_job(
        UserId::default(),
        create_request(),
        &convert::CreateRules::with_max_subtasks(10),
    )
    .unwrap();
    let id = create_job(&pool, &new).await.unwrap().job.id;
    sqlx::query("DELETE FROM outbox")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO outbox_scheduled (job_id, attempt, lane, due_at) \
         VALUES ($1, 7, 'normal', now()), ($2, 0, 'normal', now())",
    )
    .bind(id)
    .bind(Uuid::now_v7())
    .execute(&pool)
    .await
    .unwrap();
    let promoted = jobs::promote_due(&pool, 10).await.unwrap();
    assert_eq!((promoted.queued, promoted.dropped), (0, 2));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_scheduled")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// `max_attempts` is checked and named.
#[test]
fn max_attempts_outside_its_range_is_refused_naming_the_field() {
    for bad in [-1, 101, i32::MAX] {
        let mut request = create_request();
        request.max_attempts = bad;
        let error = convert::new_job(
            UserId::default(),
            request,
            &convert::CreateRules::with_max_subtasks(10),
        )
        .unwrap_err();
        assert_eq!(error.field, "max_attempts", "{bad}");
    }
}
