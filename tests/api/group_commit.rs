//! Group commit: concurrent creates stored by one statement and one commit,
//! each caller with its own outcome.

use std::{collections::HashSet, time::Duration};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::task::JoinHandle;
use tonic::Code;
use translation_jobs::{
    api::{ApiError, convert, proto::SubtaskSpec},
    jobs::{
        Collector, Created, GroupCommit, GroupCommitSettings, JobError, NewJob, create_job,
        fields::UserId,
    },
    queue::{JobMessage, Lane},
    supervise::Beat,
};
use uuid::Uuid;

use crate::support::{
    PATIENCE, SHARED_REDIS_URL, TestApp, counts, create_request, free_port, redis_client,
    wait_for_messages,
};

fn settings(max_jobs: usize) -> GroupCommitSettings {
    GroupCommitSettings {
        max_jobs,
        max_in_flight: 1,
        acquire_timeout: Duration::from_secs(10),
        call_timeout: Duration::from_secs(10),
    }
}

/// A job for novel `novel`, with `subtasks` chapters.
fn job(novel: Uuid, subtasks: usize) -> NewJob {
    let mut request = create_request();
    request.novel_id = novel.to_string();
    request.subtasks = (0..subtasks)
        .map(|i| SubtaskSpec {
            entity_type: "chapter".into(),
            entity_id: format!("chapter-{i}"),
        })
        .collect();
    convert::new_job(
        UserId::default(),
        request,
        &convert::CreateRules::with_max_subtasks(1000),
    )
    .expect("a valid request")
}

fn with_request_id(mut new: NewJob, request_id: &str) -> NewJob {
    let mut request = create_request();
    request.request_id = request_id.into();
    new.request_id = convert::new_job(
        UserId::default(),
        request,
        &convert::CreateRules::with_max_subtasks(10),
    )
    .expect("a valid request")
    .request_id;
    new
}

/// Hands every job over before the collector runs, so they form one group;
/// then runs the collector until every caller is answered.
async fn in_one_group(pool: &PgPool, jobs: Vec<NewJob>) -> Vec<Result<Created, JobError>> {
    let count = jobs.len();
    let (creates, collector) = GroupCommit::new(pool.clone(), settings(count));
    let callers = spawn_callers(&creates, jobs);
    wait_until_waiting(&creates, count).await;
    let (token, running) = run(collector.expect("grouping is on"));
    let mut outcomes = Vec::with_capacity(count);
    for caller in callers {
        outcomes.push(caller.await.expect("the caller ran"));
    }
    token.cancel();
    running.await.expect("the collector stops");
    outcomes
}

fn spawn_callers(
    creates: &GroupCommit,
    jobs: Vec<NewJob>,
) -> Vec<JoinHandle<Result<Created, JobError>>> {
    jobs.into_iter()
        .map(|new| {
            let creates = creates.clone();
            tokio::spawn(async move { creates.create(new).await })
        })
        .collect()
}

async fn wait_until_waiting(creates: &GroupCommit, count: usize) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while creates.waiting() < count {
        assert!(std::time::Instant::now() < deadline, "callers never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn run(collector: Collector) -> (tokio_util::sync::CancellationToken, JoinHandle<()>) {
    let token = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(collector.run(token.clone(), Beat::detached("group commit")));
    (token, running)
}

fn status(error: JobError) -> Code {
    tonic::Status::from(ApiError::Job(error)).code()
}

/// The outbox payloads, parsed, in outbox id order.
async fn outbox_messages(pool: &PgPool) -> Vec<(JobMessage, String)> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT payload, lane FROM outbox ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(payload, lane)| (serde_json::from_str(&payload).unwrap(), lane))
        .collect()
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn concurrent_creates_are_committed_together_with_their_subtasks_and_outbox_rows(
    pool: PgPool,
) {
    let novels: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    let jobs: Vec<NewJob> = novels
        .iter()
        .enumerate()
        .map(|(i, novel)| job(*novel, 1 + i % 7))
        .collect();
    let outcomes = in_one_group(&pool, jobs).await;

    let created: Vec<Created> = outcomes
        .into_iter()
        .map(|o| o.expect("every create succeeds"))
        .collect();
    for (i, (created, novel)) in created.iter().zip(&novels).enumerate() {
        assert!(!created.replayed);
        assert_eq!(created.job.novel_id, *novel, "each caller gets its own job");
        assert_eq!(created.job.subtasks.len(), 1 + i % 7);
    }
    let times: HashSet<_> = created.iter().map(|c| c.job.created_at).collect();
    assert_eq!(times.len(), 1, "one commit holds them all");

    let (jobs, subtasks, outbox) = counts(&pool).await;
    assert_eq!(jobs, 40);
    assert_eq!(subtasks, (0..40).map(|i| 1 + i % 7).sum::<i64>());
    assert_eq!(outbox, 40);
    // Every job's subtasks are its own, as asked.
    for created in &created {
        let stored: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT id, entity_id FROM translation_subtasks WHERE job_id = $1 ORDER BY entity_id",
        )
        .bind(created.job.id)
        .fetch_all(&pool)
        .await
        .unwrap();
        let mut expected: Vec<(Uuid, String)> = created
            .job
            .subtasks
            .iter()
            .map(|s| (s.id, s.entity_id.clone()))
            .collect();
        expected.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(stored, expected);
    }
    // One message per job, attempt 0, in the callers' order.
    let messages = outbox_messages(&pool).await;
    let ids: Vec<String> = messages.iter().map(|(m, _)| m.job_id.clone()).collect();
    let expected: Vec<String> = created.iter().map(|c| c.job.id.to_string()).collect();
    assert_eq!(ids, expected);
    for (message, lane) in &messages {
        assert_eq!(message.attempt, 0);
        assert_eq!(message.target_fields, ["title", "description", "content"]);
        assert_eq!(lane, "normal");
    }
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_request_id_seen_before_replays_or_fails_only_that_caller(pool: PgPool) {
    let earlier = create_job(&pool, &with_request_id(job(Uuid::new_v4(), 2), "r-1"))
        .await
        .unwrap()
        .job;
    let same = {
        let mut again = with_request_id(job(earlier.novel_id, 2), "r-1");
        again.novel_id = earlier.novel_id;
        again
    };
    let different = with_request_id(job(Uuid::new_v4(), 2), "r-1");
    let twin = with_request_id(job(Uuid::new_v4(), 3), "r-2");
    let fresh = job(Uuid::new_v4(), 1);
    let outcomes = in_one_group(
        &pool,
        vec![same, different, twin.clone(), fresh, twin.clone()],
    )
    .await;
    let mut outcomes = outcomes.into_iter();

    let replayed = outcomes.next().unwrap().expect("the same request replays");
    assert!(replayed.replayed);
    assert_eq!(replayed.job.id, earlier.id);
    let refused = outcomes
        .next()
        .unwrap()
        .expect_err("another request with r-1");
    assert!(
        matches!(refused, JobError::RequestIdReused { .. }),
        "{refused:?}"
    );
    assert_eq!(status(refused), Code::AlreadyExists);
    let first_twin = outcomes.next().unwrap().expect("r-2 is new");
    assert!(!first_twin.replayed);
    let fresh = outcomes.next().unwrap().expect("a job without request_id");
    assert!(!fresh.replayed);
    let second_twin = outcomes.next().unwrap().expect("r-2 again replays");
    assert!(second_twin.replayed);
    assert_eq!(second_twin.job.id, first_twin.job.id);
    assert_eq!(second_twin.job.subtasks.len(), 3);

    let (jobs, _, outbox) = counts(&pool).await;
    assert_eq!(
        (jobs, outbox),
        (3, 3),
        "the earlier job, r-2 once, the fresh one"
    );
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_job_the_database_refuses_does_not_fail_its_neighbours(pool: PgPool) {
    let mut bad = job(Uuid::new_v4(), 2);
    // Two subtasks for the same entity: the unique key refuses the second.
    bad.subtasks[1] = bad.subtasks[0].clone();
    let good: Vec<NewJob> = (0..3).map(|_| job(Uuid::new_v4(), 2)).collect();
    let jobs = vec![
        good[0].clone(),
        bad.clone(),
        good[1].clone(),
        good[2].clone(),
    ];
    let outcomes = in_one_group(&pool, jobs).await;

    assert!(outcomes[0].is_ok() && outcomes[2].is_ok() && outcomes[3].is_ok());
    let Err(JobError::Database(_)) = &outcomes[1] else {
        panic!("the bad job fails: {:?}", outcomes[1]);
    };
    let novels: HashSet<Uuid> = sqlx::query_scalar("SELECT novel_id FROM translation_jobs")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let expected: HashSet<Uuid> = good.iter().map(|j| j.novel_id).collect();
    assert_eq!(
        novels, expected,
        "the neighbours are stored, the bad job is not"
    );
    assert_eq!(counts(&pool).await, (3, 6, 3));
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn every_caller_of_a_group_that_cannot_reach_postgresql_gets_unavailable(_: PgPool) {
    // Nothing listens there.
    let unreachable = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy_with(
            PgConnectOptions::new()
                .host("127.0.0.1")
                .port(free_port())
                .username("postgres"),
        );
    let jobs: Vec<NewJob> = (0..4).map(|_| job(Uuid::new_v4(), 1)).collect();
    let outcomes = in_one_group(&unreachable, jobs).await;
    assert_eq!(outcomes.len(), 4);
    for outcome in outcomes {
        let error = outcome.expect_err("nothing can be stored");
        assert_eq!(status(error), Code::Unavailable);
    }
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn callers_that_go_away_neither_lose_nor_duplicate_the_jobs_of_others(pool: PgPool) {
    let (creates, collector) = GroupCommit::new(
        pool.clone(),
        GroupCommitSettings {
            max_jobs: 8,
            ..settings(8)
        },
    );
    let novels: Vec<Uuid> = (0..30).map(|_| Uuid::new_v4()).collect();
    let callers = spawn_callers(&creates, novels.iter().map(|n| job(*n, 3)).collect());
    wait_until_waiting(&creates, 30).await;
    // Five give up before any group is formed, five more while groups run.
    for caller in &callers[..5] {
        caller.abort();
    }
    let (token, running) = run(collector.expect("grouping is on"));
    for caller in &callers[5..10] {
        caller.abort();
    }
    let mut kept = HashSet::new();
    for (index, caller) in callers.into_iter().enumerate() {
        match caller.await {
            Ok(outcome) => {
                let created = outcome.expect("a caller that stayed is answered");
                assert_eq!(created.job.novel_id, novels[index]);
                kept.insert(novels[index]);
            }
            Err(error) => assert!(error.is_cancelled() && index < 10),
        }
    }
    token.cancel();
    running.await.unwrap();

    let stored: Vec<Uuid> = sqlx::query_scalar("SELECT novel_id FROM translation_jobs")
        .fetch_all(&pool)
        .await
        .unwrap();
    let distinct: HashSet<Uuid> = stored.iter().copied().collect();
    assert_eq!(distinct.len(), stored.len(), "no job stored twice");
    assert!(kept.is_subset(&distinct), "every answered job is stored");
    for novel in &novels[..5] {
        assert!(
            !distinct.contains(novel),
            "a caller gone before its group formed is left out"
        );
    }
    let (jobs, subtasks, outbox) = counts(&pool).await;
    assert_eq!(
        (subtasks, outbox),
        (jobs * 3, jobs),
        "each stored job is whole"
    );
    assert!(jobs >= 20, "at least the callers that stayed: {jobs}");
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_collector_stopped_with_jobs_handed_over_still_commits_and_answers_them(pool: PgPool) {
    let (creates, collector) = GroupCommit::new(pool.clone(), settings(4));
    let callers = spawn_callers(&creates, (0..10).map(|_| job(Uuid::new_v4(), 1)).collect());
    wait_until_waiting(&creates, 10).await;
    // Cancelled before it ever ran: it stops taking jobs, commits those
    // already handed over, then returns.
    let token = tokio_util::sync::CancellationToken::new();
    token.cancel();
    collector
        .expect("grouping is on")
        .run(token, Beat::detached("group commit"))
        .await;
    for caller in callers {
        caller.await.unwrap().expect("answered with its job");
    }
    assert_eq!(counts(&pool).await.0, 10);
    let error = creates
        .create(job(Uuid::new_v4(), 1))
        .await
        .expect_err("no collector runs any more");
    assert_eq!(status(error), Code::Unavailable);
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn concurrent_creates_through_the_service_each_reach_redis_once(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let app = TestApp::ready(database).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let callers: Vec<_> = (0..64)
        .map(|_| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                client
                    .create_translation_job(create_request())
                    .await
                    .map(|r| r.into_inner().id)
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for caller in callers {
        ids.insert(caller.await.unwrap().expect("create succeeds"));
    }
    assert_eq!(ids.len(), 64);
    let found = wait_for_messages(&redis, &app.queue, Lane::Normal, 64).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let found_after = crate::support::messages(&redis, &app.queue, Lane::Normal).await;
    assert_eq!(found_after.len(), 64, "no duplicates");
    let pushed: HashSet<String> = found.into_iter().map(|m| m.job_id).collect();
    assert_eq!(pushed, ids);
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn callers_queued_behind_groups_waiting_for_postgresql_fail_within_the_acquire_timeout(
    _: PgPool,
) {
    // Nothing listens there: every group waits the pool's whole acquire
    // timeout for a connection. A caller arriving while the only commit slot
    // waits must not wait for that group and then its own on top.
    let wait = Duration::from_millis(800);
    let unreachable = PgPoolOptions::new()
        .acquire_timeout(wait)
        .connect_lazy_with(
            PgConnectOptions::new()
                .host("127.0.0.1")
                .port(free_port())
                .username("postgres"),
        );
    let (creates, collector) = GroupCommit::new(
        unreachable,
        GroupCommitSettings {
            acquire_timeout: wait,
            ..settings(8)
        },
    );
    let (token, running) = run(collector.expect("grouping is on"));
    let mut callers = Vec::new();
    for _ in 0..6 {
        let creates = creates.clone();
        callers.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let outcome = creates.create(job(Uuid::new_v4(), 1)).await;
            (outcome, started.elapsed())
        }));
        tokio::time::sleep(wait / 4).await;
    }
    for caller in callers {
        let (outcome, took) = caller.await.expect("the caller ran");
        let error = outcome.expect_err("nothing can be stored");
        assert_eq!(status(error), Code::Unavailable);
        // The acquire timeout bounds the whole wait for a connection, the
        // wait for a commit slot included (with a margin for scheduling).
        assert!(
            took < wait + wait / 2,
            "a caller waited {took:?} with an acquire timeout of {wait:?}"
        );
    }
    token.cancel();
    running.await.expect("the collector stops");
}
