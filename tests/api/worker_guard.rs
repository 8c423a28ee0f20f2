//! The worker contract's guard after a lock wait.
//!
//! Under READ COMMITTED an UPDATE that waited for a row lock re-checks only
//! the row it updates. Each test pauses a transition (cancel, rescue, dead
//! letter, retry) half way, after it has locked the job's subtasks and
//! updated the job: a trigger makes it wait for an advisory lock this test
//! holds, the way a third session holding a row would. A stale worker's
//! statement then starts and waits behind the transition; the test lets the
//! transition commit and checks the worker's statement matched nothing.
//!
//! The statements are the reference worker's (examples/worker/worker.py)
//! and the README's contract.

use std::time::{Duration, Instant};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use translation_jobs::{
    api::convert,
    jobs::{
        RescuePolicy, Scope, cancel_job, create_job, fields::UserId, rescue_stuck_jobs, retry_job,
    },
};
use uuid::Uuid;

use crate::support::{PATIENCE, create_request};

/// The worker's claim: PENDING -> IN_PROGRESS at the message's attempt.
const CLAIM: &str = "UPDATE translation_jobs SET status = 'IN_PROGRESS' \
                     WHERE id = $1 AND status = 'PENDING' AND attempts = $2";
/// Start a subtask ($1 subtask, $2 the worker's attempt).
const START: &str = "UPDATE translation_subtasks \
                     SET status = 'IN_PROGRESS', attempts = attempts + 1, error = NULL \
                     WHERE id = $1 AND job_attempt = $2 AND status IN ('PENDING', 'FAILED')";
const COMPLETE: &str = "UPDATE translation_subtasks SET status = 'COMPLETED', error = NULL \
                        WHERE id = $1 AND job_attempt = $2 AND status = 'IN_PROGRESS'";
const FAIL: &str = "UPDATE translation_subtasks SET status = 'FAILED', error = 'no luck' \
                    WHERE id = $1 AND job_attempt = $2 AND status = 'IN_PROGRESS'";
/// Finish the job ($1 job, $2 the worker's attempt): on the job row itself.
const FINISH: &str = "UPDATE translation_jobs SET status = 'COMPLETED', error = NULL \
                      WHERE id = $1 AND status = 'IN_PROGRESS' AND attempts = $2";
/// The guard of the contract before this change, in a subquery on the job
/// ($1 subtask, $2 job, $3 attempt): PostgreSQL does not evaluate it again
/// after the wait.
const START_WITH_SUBQUERY_GUARD: &str = "UPDATE translation_subtasks \
     SET status = 'IN_PROGRESS', attempts = attempts + 1, error = NULL \
     WHERE id = $1 AND EXISTS (SELECT 1 FROM translation_jobs \
                               WHERE id = $2 AND status = 'IN_PROGRESS' AND attempts = $3)";

const PAUSE_KEY: i64 = 7_160_016;

/// A worker statement of the contract.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Start,
    Complete,
    Fail,
    Finish,
}

const STEPS: [Step; 4] = [Step::Start, Step::Complete, Step::Fail, Step::Finish];

/// A transition that takes a job away from its worker.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Transition {
    Cancel,
    Rescue,
    DeadLetter,
    Retry,
}

/// Makes every status or attempt change of a job wait, after its update,
/// for the advisory lock `PAUSE_KEY` (held by the test while it arranges
/// the interleaving).
async fn install_pause(pool: &PgPool) {
    sqlx::query(&format!(
        "CREATE FUNCTION test_pause_transition() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_advisory_xact_lock({PAUSE_KEY}); RETURN NULL; END $$"
    ))
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER test_pause_transition AFTER UPDATE ON translation_jobs FOR EACH ROW \
         WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.attempts IS DISTINCT FROM NEW.attempts) \
         EXECUTE FUNCTION test_pause_transition()",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// How many sessions of this database wait for a lock.
async fn waiters(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Waits until `count` sessions of this database wait for a lock.
async fn lock_waiters(pool: &PgPool, count: i64, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while waiters(pool).await < count {
        assert!(Instant::now() < deadline, "{what} never waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A job with one subtask, claimed at attempt 0 by the worker; the subtask
/// started when the step needs one in progress.
async fn claimed_job(pool: &PgPool, step: Step) -> (Uuid, Uuid) {
    let new = convert::new_job(
        UserId::default(),
        create_request(),
        &convert::CreateRules::with_max_subtasks(10),
    )
    .unwrap();
    let job = create_job(pool, &new).await.unwrap().job;
    let subtask = job.subtasks[0].id;
    let claimed = sqlx::query(CLAIM)
        .bind(job.id)
        .bind(0)
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(claimed.rows_affected(), 1, "claimed");
    if matches!(step, Step::Complete | Step::Fail) {
        let started = sqlx::query(START)
            .bind(subtask)
            .bind(0)
            .execute(pool)
            .await
            .unwrap();
        assert_eq!(started.rows_affected(), 1, "started");
    }
    (job.id, subtask)
}

/// Brings the job to where the transition applies, without pausing.
async fn prepare(pool: &PgPool, transition: Transition, job: Uuid) {
    match transition {
        Transition::Cancel => {}
        Transition::Rescue | Transition::DeadLetter => {
            // The worker went silent an hour ago: the timestamp is written
            // with triggers off, as if the clock had moved on.
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("SET LOCAL session_replication_role = replica")
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query(
                "UPDATE translation_jobs SET updated_at = now() - interval '1 hour' WHERE id = $1",
            )
            .bind(job)
            .execute(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
        }
        Transition::Retry => {
            cancel_job(pool, job, &Scope::All).await.unwrap();
        }
    }
}

async fn run_transition(pool: PgPool, transition: Transition, job: Uuid) {
    match transition {
        Transition::Cancel => {
            cancel_job(&pool, job, &Scope::All).await.unwrap();
        }
        Transition::Rescue | Transition::DeadLetter => {
            // A rescue needs an attempt left; a dead letter is the last.
            let max_attempts = if transition == Transition::Rescue {
                3
            } else {
                1
            };
            // Written with triggers off: it is no heartbeat.
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("SET LOCAL session_replication_role = replica")
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query("UPDATE translation_jobs SET max_attempts = $2 WHERE id = $1")
                .bind(job)
                .bind(max_attempts)
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            let policy = RescuePolicy {
                stuck_after: Duration::from_secs(600),
                batch_size: 100,
            };
            let rescued = rescue_stuck_jobs(&pool, policy).await.unwrap();
            assert_eq!(rescued.len(), 1, "{transition:?} took the job: {rescued:?}");
        }
        Transition::Retry => {
            retry_job(&pool, job, &Scope::All).await.unwrap();
        }
    }
}

/// Runs `statement` (bound to `subtask` or `job`, and attempt 0) while
/// `transition` is paused half way; returns the rows it changed.
async fn interleave(
    database: &PgConnectOptions,
    transition: Transition,
    step: Step,
    statement: &'static str,
) -> u64 {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(database.clone())
        .await
        .unwrap();
    let (job, subtask) = claimed_job(&pool, step).await;
    prepare(&pool, transition, job).await;

    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PAUSE_KEY)
        .execute(&mut *holder)
        .await
        .unwrap();
    let running = tokio::spawn(run_transition(pool.clone(), transition, job));
    lock_waiters(&pool, 1, "the transition").await;

    let worker_pool = pool.clone();
    let worker = tokio::spawn(async move {
        let query = sqlx::query(statement);
        let query = match step {
            Step::Finish => query.bind(job).bind(0),
            _ if statement == START_WITH_SUBQUERY_GUARD => query.bind(subtask).bind(job).bind(0),
            _ => query.bind(subtask).bind(0),
        };
        query.execute(&worker_pool).await.unwrap().rows_affected()
    });
    // It waits behind the transition, unless the row it would update
    // already failed its guard in the statement's snapshot (a retry's
    // worker finds its subtasks closed by the cancel before it).
    let deadline = Instant::now() + PATIENCE;
    while !worker.is_finished() && waiters(&pool).await < 2 {
        assert!(
            Instant::now() < deadline,
            "the worker's statement never waited"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    holder.commit().await.unwrap();
    running.await.unwrap();
    let changed = worker.await.unwrap();
    pool.close().await;
    changed
}

fn statement(step: Step) -> &'static str {
    match step {
        Step::Start => START,
        Step::Complete => COMPLETE,
        Step::Fail => FAIL,
        Step::Finish => FINISH,
    }
}

async fn check_transition(database: PgConnectOptions, transition: Transition) {
    let pool = PgPool::connect_with(database.clone()).await.unwrap();
    install_pause(&pool).await;
    for step in STEPS {
        let changed = interleave(&database, transition, step, statement(step)).await;
        assert_eq!(
            changed, 0,
            "a stale worker's {step:?} that waited behind a {transition:?} changed a row"
        );
    }
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_worker_statement_waiting_behind_a_cancel_matches_nothing(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    check_transition(database, Transition::Cancel).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_worker_statement_waiting_behind_a_rescue_matches_nothing(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    check_transition(database, Transition::Rescue).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_worker_statement_waiting_behind_a_dead_letter_matches_nothing(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    check_transition(database, Transition::DeadLetter).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_worker_statement_waiting_behind_a_retry_matches_nothing(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    check_transition(database, Transition::Retry).await;
}

/// The test's own check: with the old guard (a subquery on the job), the
/// same interleaving lets a stale worker start a subtask of a cancelled
/// job and one of a rescued job. If this stopped failing, the interleaving
/// above would no longer be tested.
#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn the_old_subquery_guard_lets_a_waiting_start_through(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let pool = PgPool::connect_with(database.clone()).await.unwrap();
    install_pause(&pool).await;
    for transition in [Transition::Cancel, Transition::Rescue] {
        let changed = interleave(
            &database,
            transition,
            Step::Start,
            START_WITH_SUBQUERY_GUARD,
        )
        .await;
        assert_eq!(
            changed, 1,
            "the subquery guard was re-checked after waiting behind a {transition:?}"
        );
    }
}

/// A worker's own progress is its heartbeat; the service's rewrite of the
/// guard is not, and a job handed out again carries the new attempt on
/// every subtask, a cancelled one -1.
#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn every_hand_out_and_cancel_writes_the_guard_on_each_subtask(pool: PgPool) {
    let (job, subtask) = claimed_job(&pool, Step::Complete).await;
    let guard = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i32>("SELECT job_attempt FROM translation_subtasks WHERE id = $1")
            .bind(subtask)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(guard(pool.clone()).await, 0);
    cancel_job(&pool, job, &Scope::All).await.unwrap();
    assert_eq!(guard(pool.clone()).await, -1, "closed by the cancel");
    retry_job(&pool, job, &Scope::All).await.unwrap();
    assert_eq!(guard(pool.clone()).await, 1, "the retry's attempt");
    let stale = sqlx::query(START)
        .bind(subtask)
        .bind(0)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(stale.rows_affected(), 0, "attempt 0 is stale");
    let claimed = sqlx::query(CLAIM)
        .bind(job)
        .bind(1)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(claimed.rows_affected(), 1);
    let fresh = sqlx::query(START)
        .bind(subtask)
        .bind(1)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(fresh.rows_affected(), 1, "attempt 1 is the job's");
}
