//! Change notifications cost nothing for jobs nobody watches: the triggers
//! notify only jobs recorded in `watched_jobs`, which the watch streams
//! write and delete (and a crashed process's rows expire). And the watch
//! streams built on them: one state per transaction, re-reads after the
//! LISTEN connection was replaced, at most `REREADS_AT_ONCE` at a time.

use std::time::{Duration, Instant};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use translation_jobs::{
    api::{
        convert,
        proto::{
            CancelTranslationJobRequest, CreateTranslationJobRequest, JobStatus, SubtaskSpec,
            TranslationJob, WatchTranslationJobRequest,
        },
    },
    jobs::{self, Scope, fields::UserId},
    supervise::Beat,
    wake::Wake,
    watch::{
        Change, HubEvent, JOB_EVENTS_CHANNEL, JobChange, Listener, REREADS_AT_ONCE, WatchHub,
        follow,
        listener::{MAX_LAG, PROBE_INTERVAL},
        registry,
    },
};
use uuid::Uuid;

use crate::{
    common::proxy::Proxy,
    support::{PATIENCE, SHARED_REDIS_URL, TestApp, create_request, http_get, unique_queue},
};

type Events = tonic::Streaming<TranslationJob>;

/// Sent by the test after its changes: notifications arrive in commit
/// order, so whatever a change notified arrives before it.
const MARKER: &str = "marker";

/// A job with `subtasks` subtasks, created through the domain (no service).
async fn job_with_subtasks(pool: &PgPool, subtasks: usize) -> Uuid {
    let new = convert::new_job(
        UserId::default(),
        request_with_subtasks(subtasks),
        &convert::CreateRules::with_max_subtasks(subtasks.max(1)),
    )
    .expect("valid request");
    jobs::create_job(pool, &new).await.expect("create").job.id
}

fn request_with_subtasks(subtasks: usize) -> CreateTranslationJobRequest {
    let mut request = create_request();
    request.subtasks = (0..subtasks)
        .map(|i| SubtaskSpec {
            entity_type: "chapter".into(),
            entity_id: i.to_string(),
        })
        .collect();
    request
}

/// A LISTEN session of the test's own on the change events' channel.
async fn listen(pool: &PgPool) -> PgListener {
    let mut listener = PgListener::connect_with(pool).await.expect("listen");
    listener.listen(JOB_EVENTS_CHANNEL).await.expect("listen");
    listener
}

/// The job ids of every change notified before the marker this sends.
async fn notified_jobs(listener: &mut PgListener, pool: &PgPool) -> Vec<Uuid> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(JOB_EVENTS_CHANNEL)
        .bind(MARKER)
        .execute(pool)
        .await
        .expect("marker");
    let mut jobs = Vec::new();
    loop {
        let notification = tokio::time::timeout(PATIENCE, listener.recv())
            .await
            .expect("the marker arrives")
            .expect("a notification");
        if notification.payload() == MARKER {
            return jobs;
        }
        let change = Change::parse(notification.payload()).expect("a change event");
        jobs.push(change.job_id());
    }
}

/// A worker's statements on one job: claim, start and fail one subtask,
/// finish; each its own transaction.
async fn work_on(pool: &PgPool, job_id: Uuid) {
    for statement in [
        "UPDATE translation_jobs SET status = 'IN_PROGRESS' WHERE id = $1 AND status = 'PENDING'",
        "UPDATE translation_subtasks SET status = 'IN_PROGRESS', attempts = attempts + 1, error = NULL \
         WHERE id = (SELECT id FROM translation_subtasks WHERE job_id = $1 ORDER BY id LIMIT 1) \
           AND job_attempt = 0",
        "UPDATE translation_subtasks SET status = 'FAILED', error = 'no' \
         WHERE job_id = $1 AND status = 'IN_PROGRESS'",
        "UPDATE translation_jobs SET error = 'worker note' WHERE id = $1",
    ] {
        sqlx::query(statement)
            .bind(job_id)
            .execute(pool)
            .await
            .unwrap();
    }
}

async fn rows_of(pool: &PgPool, job_id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM watched_jobs WHERE job_id = $1")
        .bind(job_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn only_changes_of_watched_jobs_are_notified_and_only_while_watched(pool: PgPool) {
    let watched = job_with_subtasks(&pool, 2).await;
    let unwatched = job_with_subtasks(&pool, 2).await;
    let mut listener = listen(&pool).await;
    let hub = WatchHub::new(pool.clone());

    let subscription = hub.subscribe(watched, &Scope::All).await.unwrap();
    assert_eq!(rows_of(&pool, watched).await, 1);
    work_on(&pool, unwatched).await;
    work_on(&pool, watched).await;
    let notified = notified_jobs(&mut listener, &pool).await;
    assert_eq!(
        notified,
        vec![watched; 4],
        "the watched job's four changes (claim, start, fail, note), nothing of the other"
    );

    // The last stream closes: the row goes, and so do the notifications.
    drop(subscription);
    assert_eq!(hub.release_closed().await, 1);
    assert_eq!(rows_of(&pool, watched).await, 0);
    sqlx::query("UPDATE translation_jobs SET error = 'unwatched now' WHERE id = $1")
        .bind(watched)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        notified_jobs(&mut listener, &pool).await,
        Vec::<Uuid>::new()
    );
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_job_outside_the_callers_scope_is_not_recorded(pool: PgPool) {
    let job = job_with_subtasks(&pool, 1).await;
    let hub = WatchHub::new(pool.clone());
    let stranger = Scope::Owner(UserId::parse("user_id", "someone-else").unwrap());
    let _subscription = hub.subscribe(job, &stranger).await.unwrap();
    assert_eq!(rows_of(&pool, job).await, 0);
    let missing = hub.open(job, &stranger).await.err().expect("not found");
    assert!(
        matches!(missing, jobs::JobError::NotFound(_)),
        "{missing:?}"
    );
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn the_rows_of_a_crashed_watcher_expire_and_its_jobs_stop_notifying(pool: PgPool) {
    let crashed_job = job_with_subtasks(&pool, 1).await;
    let live_job = job_with_subtasks(&pool, 1).await;
    let mut listener = listen(&pool).await;

    // A process records its job, then dies without deleting the row.
    let crashed = WatchHub::new(pool.clone());
    std::mem::forget(crashed.subscribe(crashed_job, &Scope::All).await.unwrap());
    let live = WatchHub::new(pool.clone());
    let _stream = live.subscribe(live_job, &Scope::All).await.unwrap();
    work_on(&pool, crashed_job).await;
    assert_eq!(notified_jobs(&mut listener, &pool).await.len(), 4);

    // The live process renews its lease; the dead one's runs out.
    live.heartbeat().await.unwrap();
    assert_eq!(
        registry::expire_once(&pool).await.unwrap(),
        0,
        "nothing expires within the lease"
    );
    sqlx::query(
        "UPDATE watched_jobs SET expires_at = now() - interval '1 second' WHERE watcher = $1",
    )
    .bind(crashed.watcher())
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(registry::expire_once(&pool).await.unwrap(), 1);
    assert_eq!(rows_of(&pool, crashed_job).await, 0);
    assert_eq!(rows_of(&pool, live_job).await, 1);
    sqlx::query("UPDATE translation_jobs SET error = 'after the crash' WHERE id = ANY($1)")
        .bind([crashed_job, live_job])
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(notified_jobs(&mut listener, &pool).await, vec![live_job]);
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_process_whose_rows_expired_records_them_again_and_its_streams_read_again(pool: PgPool) {
    let job = job_with_subtasks(&pool, 1).await;
    let mut listener = listen(&pool).await;
    let hub = WatchHub::new(pool.clone());
    let mut stream = hub.subscribe(job, &Scope::All).await.unwrap();

    // Another process took the row for expired (this one could not renew
    // it in time): changes meanwhile are not notified.
    sqlx::query("UPDATE watched_jobs SET expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    registry::expire_once(&pool).await.unwrap();
    work_on(&pool, job).await;
    assert_eq!(
        notified_jobs(&mut listener, &pool).await,
        Vec::<Uuid>::new()
    );

    hub.heartbeat().await.unwrap();
    assert_eq!(rows_of(&pool, job).await, 1, "recorded again");
    assert!(
        matches!(stream.events.try_recv(), Ok(HubEvent::Resync)),
        "the stream is told to read the job again"
    );
    sqlx::query("UPDATE translation_jobs SET error = 'seen again' WHERE id = $1")
        .bind(job)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(notified_jobs(&mut listener, &pool).await, vec![job]);
}

/// Sessions of this database waiting for a lock, by application name
/// (`None`: any).
async fn waiting_for_locks(pool: &PgPool, application: Option<&str>) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND wait_event_type = 'Lock' AND ($1::text IS NULL OR application_name = $1)",
    )
    .bind(application)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn wait_for_lock_waiters(pool: &PgPool, application: Option<&str>, count: i64) {
    let deadline = Instant::now() + PATIENCE;
    while waiting_for_locks(pool, application).await < count {
        assert!(Instant::now() < deadline, "nobody waits for the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_worker_update_that_waits_for_a_registration_is_notified(pool: PgPool) {
    let job = job_with_subtasks(&pool, 1).await;
    let mut listener = listen(&pool).await;
    // A registration half done, as `registry::register` makes it in one
    // statement: the job's row held FOR SHARE, the row inserted.
    let mut registration = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM translation_jobs WHERE id = $1 FOR SHARE")
        .bind(job)
        .execute(&mut *registration)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO watched_jobs (job_id, watcher, expires_at) \
         VALUES ($1, gen_random_uuid(), now() + interval '1 minute')",
    )
    .bind(job)
    .execute(&mut *registration)
    .await
    .unwrap();
    // A worker starts the subtask meanwhile: its heartbeat trigger waits for
    // the job's row, and only then does its notify trigger look for the
    // job in watched_jobs (an earlier look would have found nothing).
    let worker = tokio::spawn({
        let pool = pool.clone();
        async move {
            sqlx::query(
                "UPDATE translation_subtasks SET status = 'IN_PROGRESS', attempts = attempts + 1 \
                 WHERE job_id = $1 AND job_attempt = 0",
            )
            .bind(job)
            .execute(&pool)
            .await
            .unwrap();
        }
    });
    wait_for_lock_waiters(&pool, None, 1).await;
    registration.commit().await.unwrap();
    worker.await.unwrap();
    assert_eq!(notified_jobs(&mut listener, &pool).await, vec![job]);
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_change_in_flight_when_a_stream_opens_reaches_the_stream(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database.clone()).await;
    let pool = PgPool::connect_with(database).await.unwrap();
    wait_for_listener(&pool).await;
    let job = app
        .client
        .create_translation_job(request_with_subtasks(1))
        .await
        .unwrap()
        .into_inner();
    // A worker's update, not yet committed: its trigger found nobody
    // watching.
    let mut worker = pool.begin().await.unwrap();
    sqlx::query(
        "UPDATE translation_subtasks SET status = 'IN_PROGRESS', attempts = attempts + 1 \
         WHERE job_id = $1::uuid AND job_attempt = 0",
    )
    .bind(&job.id)
    .execute(&mut *worker)
    .await
    .unwrap();
    // The stream opens meanwhile; its registration waits for the worker.
    let opening = tokio::spawn({
        let mut client = app.client.clone();
        let id = job.id.clone();
        async move {
            client
                .watch_translation_job(WatchTranslationJobRequest { id })
                .await
                .unwrap()
                .into_inner()
        }
    });
    wait_for_lock_waiters(&pool, Some("translation-jobs"), 1).await;
    worker.commit().await.unwrap();
    let mut stream = opening.await.unwrap();
    // The change is in the first state (the read came after the commit) or
    // in a later one (notified): never lost.
    loop {
        let state = next(&mut stream).await.expect("the stream goes on");
        if state.subtasks[0].status() == JobStatus::InProgress {
            break;
        }
    }
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_job_that_ends_through_events_is_read_once_more_before_its_last_state(pool: PgPool) {
    let job_id = job_with_subtasks(&pool, 3).await;
    let hub = WatchHub::new(pool.clone());
    let (subscription, job, snapshot) = hub.open(job_id, &Scope::All).await.unwrap();
    let (sender, mut states) = tokio::sync::mpsc::channel(4);
    let follow = tokio::spawn(follow(
        subscription,
        job,
        snapshot,
        sender,
        |state| state.cloned().map_err(|error| error.to_string()),
        CancellationToken::new(),
    ));
    let first = states.recv().await.unwrap().unwrap();
    assert_eq!(first.status, jobs::JobStatus::Pending);

    // The cancel commits; of its events, only the job's has come through
    // yet (its subtasks' follow): no listener runs here, the test hands it
    // over itself.
    let cancelled = jobs::cancel_job(&pool, job_id, &Scope::All).await.unwrap();
    hub.publish(Change::Job(JobChange {
        job_id,
        xid: u64::MAX / 2,
        status: "CANCELLED".into(),
        attempts: cancelled.attempts,
        error: None,
        reread: false,
        updated_at: cancelled.updated_at.timestamp_micros(),
    }));
    let last = states.recv().await.unwrap().unwrap();
    assert_eq!(last.status, jobs::JobStatus::Cancelled);
    assert!(
        last.subtasks
            .iter()
            .all(|s| s.status.0 == jobs::JobStatus::Cancelled),
        "the subtasks as the cancel left them: {:?}",
        last.subtasks
    );
    assert!(states.recv().await.is_none(), "the stream ends");
    follow.await.unwrap();
}

/// Waits until the service's LISTEN connection listens. A stream opened
/// before that sees the changes made meanwhile only through the re-read
/// that follows the connection, as one state.
async fn wait_for_listener(pool: &PgPool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'translation-jobs-listener' AND query LIKE 'LISTEN%'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if listening > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the service never listened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `/metrics` reports `streams` open watch streams.
async fn wait_for_open_streams(app: &TestApp, streams: usize) {
    let url = format!("http://{}/metrics", app.http_addr);
    let line = format!("translation_watch_streams {streams}\n");
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some((200, body)) = http_get(&url).await
            && body.contains(&line)
        {
            return;
        }
        assert!(Instant::now() < deadline, "never {streams} open streams");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn watch(app: &mut TestApp, id: &str) -> Events {
    let mut stream = app
        .client
        .watch_translation_job(WatchTranslationJobRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner();
    next(&mut stream).await.expect("the first state");
    stream
}

async fn next(stream: &mut Events) -> Option<TranslationJob> {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("a state in time")
        .map(|state| state.expect("a state, not an error"))
}

/// Every state until the stream ends.
async fn rest(stream: &mut Events) -> Vec<TranslationJob> {
    let mut states = Vec::new();
    while let Some(state) = next(stream).await {
        states.push(state);
    }
    states
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_service_records_a_watched_job_once_and_deletes_the_row_when_its_last_stream_closes(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database.clone()).await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let job = app.create().await;
    let id: Uuid = job.id.parse().unwrap();
    assert_eq!(rows_of(&pool, id).await, 0, "a new job is nobody's");

    let first = watch(&mut app, &job.id).await;
    let second = watch(&mut app, &job.id).await;
    assert_eq!(rows_of(&pool, id).await, 1, "one row per process");
    drop(first);
    wait_for_open_streams(&app, 1).await;
    assert_eq!(rows_of(&pool, id).await, 1, "a stream of the job is open");

    drop(second);
    let deadline = Instant::now() + PATIENCE;
    while rows_of(&pool, id).await > 0 {
        assert!(Instant::now() < deadline, "the row outlived the streams");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn cancelling_a_watched_job_of_many_subtasks_sends_its_whole_final_state_once(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    const SUBTASKS: usize = 500;
    let mut app = TestApp::ready(database.clone()).await;
    wait_for_listener(&PgPool::connect_with(database).await.unwrap()).await;
    let job = app
        .client
        .create_translation_job(request_with_subtasks(SUBTASKS))
        .await
        .unwrap()
        .into_inner();
    let mut stream = watch(&mut app, &job.id).await;
    app.client
        .cancel_translation_job(CancelTranslationJobRequest { id: job.id.clone() })
        .await
        .unwrap();

    let states = rest(&mut stream).await;
    assert!(
        states.len() <= 2,
        "one state for the cancel's transaction (two at most when its events \
         came in two runs), not one per subtask: {}",
        states.len()
    );
    let last = states.last().expect("the end");
    assert_eq!(last.status(), JobStatus::Cancelled);
    assert!(
        last.subtasks
            .iter()
            .all(|s| s.status() == JobStatus::Cancelled),
        "every subtask in the last state is cancelled"
    );
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_transaction_that_changes_every_subtask_is_sent_as_far_fewer_states_than_subtasks(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    const SUBTASKS: usize = 200;
    let mut app = TestApp::ready(database.clone()).await;
    let pool = PgPool::connect_with(database).await.unwrap();
    wait_for_listener(&pool).await;
    let job = app
        .client
        .create_translation_job(request_with_subtasks(SUBTASKS))
        .await
        .unwrap()
        .into_inner();
    let mut stream = watch(&mut app, &job.id).await;
    // A worker that starts every subtask in one statement, then finishes.
    for statement in [
        "UPDATE translation_subtasks SET status = 'IN_PROGRESS', attempts = attempts + 1 \
         WHERE job_id = $1::uuid",
        "UPDATE translation_jobs SET status = 'COMPLETED' WHERE id = $1::uuid",
    ] {
        sqlx::query(statement)
            .bind(&job.id)
            .execute(&pool)
            .await
            .unwrap();
    }
    let states = rest(&mut stream).await;
    let (last, before) = states.split_last().expect("the end");
    assert_eq!(last.status(), JobStatus::Completed);
    assert!(
        !before.is_empty() && before.len() <= SUBTASKS / 10,
        "the subtasks' transaction in far fewer states than subtasks: {}",
        before.len()
    );
    assert!(
        before
            .last()
            .unwrap()
            .subtasks
            .iter()
            .all(|s| s.status() == JobStatus::InProgress && s.attempts == 1),
        "its last state holds the whole transaction"
    );
    app.stop().await;
}

/// Changes a job without notifying anyone, as if the notification had been
/// lost: only a re-read shows it.
async fn change_silently(pool: &PgPool, id: &str, error: &str) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE translation_jobs SET error = $2 WHERE id = $1::uuid")
        .bind(id)
        .bind(error)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// Ends the service's LISTEN session; how many there were.
async fn terminate_listener(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'translation-jobs-listener') \
         AS ended",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn when_the_listen_connection_is_replaced_every_stream_reads_its_job_again(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database.clone()).await;
    let pool = PgPool::connect_with(database).await.unwrap();
    wait_for_listener(&pool).await;
    let job = app.create().await;
    let mut stream = watch(&mut app, &job.id).await;

    change_silently(&pool, &job.id, "missed").await;
    assert_eq!(terminate_listener(&pool).await, 1, "one LISTEN session");
    let state = next(&mut stream).await.expect("a state after the re-read");
    assert_eq!(state.error, "missed");
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn after_the_listen_connection_is_replaced_only_a_few_streams_read_at_a_time(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    const STREAMS: usize = 40;
    let mut app = TestApp::spawn_with(
        database.clone(),
        SHARED_REDIS_URL,
        unique_queue(),
        &[("DATABASE_POOL_SIZE", "64"), ("REAPER_ENABLED", "false")],
    )
    .await;
    app.wait_ready().await;
    let pool = PgPool::connect_with(database).await.unwrap();
    wait_for_listener(&pool).await;
    let job = app.create().await;
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        streams.push(watch(&mut app, &job.id).await);
    }
    change_silently(&pool, &job.id, "missed").await;

    // Every re-read waits behind this lock, so those in flight pile up.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE translation_jobs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    assert_eq!(terminate_listener(&pool).await, 1);
    let reading = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'translation-jobs' AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let deadline = Instant::now() + PATIENCE;
    while reading().await < REREADS_AT_ONCE as i64 {
        assert!(Instant::now() < deadline, "the streams never read again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Longer than the spread of the re-reads: all of them have queued.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(reading().await, REREADS_AT_ONCE as i64, "capped");
    blocker.rollback().await.unwrap();

    for stream in &mut streams {
        let state = next(stream).await.expect("a state after the re-read");
        assert_eq!(state.error, "missed");
    }
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_listen_connection_that_goes_silent_is_replaced_and_the_streams_read_again(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let proxy = Proxy::start(
        format!("{}:{}", database.get_host(), database.get_port())
            .parse()
            .expect("a numeric address"),
    )
    .await;
    let mut app = TestApp::spawn_with(
        database.clone().port(proxy.port()),
        SHARED_REDIS_URL,
        unique_queue(),
        &[("DATABASE_STATEMENT_TIMEOUT", "1s")],
    )
    .await;
    app.wait_ready().await;
    let pool = PgPool::connect_with(database).await.unwrap();
    wait_for_listener(&pool).await;
    let job = app.create().await;
    let mut stream = watch(&mut app, &job.id).await;

    // The open connections, the LISTEN one among them, go silent for good
    // (as when a firewall forgets them); new ones pass.
    proxy.strand_open_connections();
    let stranded = Instant::now();
    sqlx::query("UPDATE translation_jobs SET error = 'while silent' WHERE id = $1::uuid")
        .bind(&job.id)
        .execute(&pool)
        .await
        .unwrap();
    let state = next(&mut stream).await.expect("a state");
    assert_eq!(state.error, "while silent");
    assert!(
        stranded.elapsed() < Duration::from_secs(25),
        "replaced within the probe's limits: {:?}",
        stranded.elapsed()
    );
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_listen_connection_whose_probe_does_not_come_through_is_replaced(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let proxy = Proxy::start(
        format!("{}:{}", database.get_host(), database.get_port())
            .parse()
            .expect("a numeric address"),
    )
    .await;
    // The probes' pool opens its first connection with the first probe.
    let pool = PgPoolOptions::new().connect_lazy_with(database.port(proxy.port()));
    let wake = Wake::new();
    let token = CancellationToken::new();
    let running = tokio::spawn(
        Listener::new(pool.clone(), WatchHub::new(pool.clone()), wake.clone())
            .run(token.clone(), Beat::detached("listener")),
    );
    // Woken when the connection opens.
    tokio::time::timeout(PATIENCE, wake.woken())
        .await
        .expect("the LISTEN connection opens");
    // Only the LISTEN connection is open: it alone goes silent, and the
    // probes, on new connections, are sent but never come back through it.
    proxy.strand_open_connections();
    let stranded = Instant::now();
    tokio::time::timeout(PROBE_INTERVAL + MAX_LAG + PATIENCE, wake.woken())
        .await
        .expect("a new LISTEN connection");
    assert!(
        stranded.elapsed() >= MAX_LAG,
        "replaced for its late probe, not for anything else: {:?}",
        stranded.elapsed()
    );
    token.cancel();
    running.await.unwrap();
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn metrics_report_the_notification_queue_usage(_: PgPoolOptions, database: PgConnectOptions) {
    let app = TestApp::ready(database).await;
    let (status, body) = http_get(&format!("http://{}/metrics", app.http_addr))
        .await
        .expect("a scrape");
    assert_eq!(status, 200);
    let usage: f64 = body
        .lines()
        .find_map(|line| line.strip_prefix("translation_notification_queue_usage "))
        .expect("the gauge")
        .parse()
        .expect("a number");
    assert!((0.0..=1.0).contains(&usage), "{usage}");
    app.stop().await;
}
