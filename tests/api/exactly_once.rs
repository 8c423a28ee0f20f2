//! Exactly once under real operations: outbox ids handed out again, pushes
//! that fail half way, stale workers, copies of waiting messages, messages
//! lost with Redis's data.

use std::{collections::HashSet, time::Duration};

use fred::prelude::{Client, ClientLike, HashesInterface, KeysInterface, ListInterface};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use translation_jobs::{
    api::proto::{CancelTranslationJobRequest, RetryTranslationJobRequest},
    jobs::RescuePolicy,
    queue::{JobMessage, Lane, OutboxMessage, Placement, PushOutcome, QueueName},
    reaper::{Reaper, ReaperSettings},
    wake::Wake,
};
use uuid::Uuid;

use crate::support::{
    PATIENCE, SHARED_REDIS_URL, TestApp, TestRedis, cleanup, counts, create_in_lanes, create_jobs,
    messages, queue, queue_at, redis_client, relay, unique_queue, wait_for_messages,
};

const STUCK_AFTER: Duration = Duration::from_secs(3600);

fn reaper(pool: &PgPool, queue: translation_jobs::queue::RedisQueue) -> Reaper {
    Reaper::new(
        pool.clone(),
        queue,
        ReaperSettings {
            interval: Duration::from_secs(3600),
            policy: RescuePolicy {
                stuck_after: STUCK_AFTER,
                batch_size: 100,
            },
            lost_scan: translation_jobs::config::REAPER_LOST_SCAN,
            call_timeout: Duration::from_secs(10),
        },
        Wake::new(),
    )
}

/// Makes every publication look older than the reaper's timeout.
async fn publications_an_hour_and_more_ago(pool: &PgPool) {
    sqlx::query("UPDATE job_publications SET published_at = now() - interval '2 hours'")
        .execute(pool)
        .await
        .unwrap();
}

/// Makes every message a reaper has seen popped look popped longer ago than
/// the reaper's timeout.
async fn popped_an_hour_and_more_ago(pool: &PgPool) {
    sqlx::query(
        "UPDATE job_publications SET popped_seen_at = now() - interval '2 hours' \
         WHERE popped_seen_at IS NOT NULL",
    )
    .execute(pool)
    .await
    .unwrap();
}

async fn outbox_ids(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM outbox ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn ids(messages: &[JobMessage]) -> Vec<String> {
    messages.iter().map(|m| m.job_id.clone()).collect()
}

/// A failover to a replica that missed every push of the normal lane after
/// its first `kept` messages: the later ones are gone and the lane's push
/// counter is back at `kept`.
async fn fail_over_keeping(redis: &Client, name: &QueueName, kept: i64) {
    let _: () = redis
        .ltrim(name.key(Lane::Normal), 0, kept - 1)
        .await
        .unwrap();
    let _: () = redis
        .hset(name.tagged("state"), ("pushed:normal", kept))
        .await
        .unwrap();
}

/// The jobs a reaper pass queued again, as sorted id strings.
fn sorted_ids(jobs: &[Uuid]) -> Vec<String> {
    let mut ids: Vec<String> = jobs.iter().map(Uuid::to_string).collect();
    ids.sort();
    ids
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn an_outbox_id_handed_out_again_is_still_delivered(pool: PgPool) {
    let name = unique_queue();
    let relay = relay(&pool, queue(&name).await, 100).await;
    let redis = redis_client(SHARED_REDIS_URL).await;

    let first = create_jobs(&pool, 1).await;
    let first_id = outbox_ids(&pool).await[0];
    assert_eq!(relay.drain_once().await.unwrap().pushed, 1);

    // A point-in-time restore (or a failover to a standby that had not seen
    // the last nextval) rewinds the identity sequence: the next row gets the
    // id of a row that was already published.
    sqlx::query("SELECT setval(pg_get_serial_sequence('outbox', 'id'), $1, false)")
        .bind(first_id)
        .execute(&pool)
        .await
        .unwrap();
    let second = create_jobs(&pool, 1).await;
    assert_eq!(
        outbox_ids(&pool).await,
        [first_id],
        "the id is handed out again"
    );

    let drained = relay.drain_once().await.unwrap();
    assert_eq!(
        (drained.claimed, drained.pushed),
        (1, 1),
        "not taken for a duplicate"
    );
    let found = messages(&redis, &name, Lane::Normal).await;
    assert_eq!(ids(&found), [first[0].clone(), second[0].clone()]);
    cleanup(&redis, &name).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_push_that_fails_half_way_leaves_no_marker_and_the_retry_delivers_once(pool: PgPool) {
    let name = unique_queue();
    let relay = relay(&pool, queue(&name).await, 100).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let created = create_jobs(&pool, 3).await;

    // The lane's key holds a string: RPUSH fails with WRONGTYPE.
    let _: () = redis
        .set(name.key(Lane::Normal), "not a list", None, None, false)
        .await
        .unwrap();
    relay.drain_once().await.expect_err("the push fails");
    assert_eq!(counts(&pool).await.2, 3, "the rows stay in the outbox");

    let _: i64 = redis.del(name.key(Lane::Normal)).await.unwrap();
    // The failed drain's rows come back once its rollback has run.
    let drained = crate::support::drain_claiming(&relay).await.unwrap();
    assert_eq!((drained.claimed, drained.pushed), (3, 3));
    assert_eq!(ids(&messages(&redis, &name, Lane::Normal).await), created);
    assert_eq!(relay.drain_once().await.unwrap().claimed, 0);
    cleanup(&redis, &name).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_push_whose_second_lane_cannot_take_it_pushes_no_lane_and_the_retry_delivers_once(
    pool: PgPool,
) {
    let name = unique_queue();
    let relay = relay(&pool, queue(&name).await, 100).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    // High, normal and low: the normal lane comes after the high one.
    let [high, normal, low] = create_in_lanes(&pool, 4).await;

    // The high lane takes its push, the normal lane's key holds a string.
    let _: () = redis
        .set(name.key(Lane::Normal), "not a list", None, None, false)
        .await
        .unwrap();
    relay.drain_once().await.expect_err("the push fails");
    assert!(
        messages(&redis, &name, Lane::High).await.is_empty(),
        "nothing pushed onto the lane before the failing one"
    );
    assert_eq!(counts(&pool).await.2, 4, "the rows stay in the outbox");

    let _: i64 = redis.del(name.key(Lane::Normal)).await.unwrap();
    // The failed drain's rows come back once its rollback has run.
    let drained = crate::support::drain_claiming(&relay).await.unwrap();
    assert_eq!((drained.claimed, drained.pushed), (4, 4));
    assert_eq!(ids(&messages(&redis, &name, Lane::High).await), high);
    assert_eq!(ids(&messages(&redis, &name, Lane::Normal).await), normal);
    assert_eq!(ids(&messages(&redis, &name, Lane::Low).await), low);
    cleanup(&redis, &name).await;
}

#[tokio::test]
async fn a_batch_partly_pushed_before_gets_the_rest_pushed_and_every_position() {
    let name = unique_queue();
    let queue = queue(&name).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let _: () = redis
        .hset(name.tagged("state"), ("generation", 7))
        .await
        .unwrap();
    let ttl = Duration::from_secs(60);
    let message = |outbox_id: i64, token: i32, lane: Lane| OutboxMessage {
        outbox_id,
        token,
        lane,
        payload: "",
    };
    let payloads: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
    let batch: Vec<OutboxMessage<'_>> = [
        (998, 11, Lane::Normal),
        (999, 12, Lane::High),
        (1000, 13, Lane::Normal),
        (1001, 14, Lane::Normal),
        (1003, 15, Lane::High),
        (1004, 16, Lane::Normal),
    ]
    .iter()
    .zip(&payloads)
    .map(|(&(id, token, lane), payload)| OutboxMessage {
        payload,
        ..message(id, token, lane)
    })
    .collect();

    // An earlier attempt pushed ids 999 and 1001 (across two marker keys);
    // id 1004 was pushed from an earlier row with another token.
    let earlier = [batch[1], batch[3], message(1004, 99, Lane::Normal)];
    let PushOutcome::Done(first) = queue.push(7, ttl, &earlier).await.unwrap() else {
        panic!("the generation is 7");
    };
    let at = |seq, pushed| Placement { seq, pushed };
    assert_eq!(first, [at(1, true), at(1, true), at(2, true)]);

    let PushOutcome::Done(placements) = queue.push(7, ttl, &batch).await.unwrap() else {
        panic!("the generation is 7");
    };
    assert_eq!(
        placements,
        [
            at(3, true),  // 998: the normal lane's third
            at(2, false), // 999: pushed before; the high lane's counter is now 2
            at(4, true),  // 1000
            at(5, false), // 1001: pushed before
            at(2, true),  // 1003: the high lane's second
            at(5, true),  // 1004: another row than the one pushed from this id
        ]
    );
    let lane = |lane| {
        let redis = redis.clone();
        let key = name.key(lane);
        async move { redis.lrange::<Vec<String>, _>(key, 0, -1).await.unwrap() }
    };
    assert_eq!(lane(Lane::High).await, ["m1", "m4"]);
    assert_eq!(lane(Lane::Normal).await, ["m3", "", "m0", "m2", "m5"]);

    // Everything is marked now: a third push adds nothing.
    let PushOutcome::Done(again) = queue.push(7, ttl, &batch).await.unwrap() else {
        panic!("the generation is 7");
    };
    assert!(again.iter().all(|p| !p.pushed), "{again:?}");
    assert_eq!(lane(Lane::Normal).await.len(), 5);
    cleanup(&redis, &name).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn every_message_names_its_attempt_and_a_stale_attempt_cannot_claim(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database.clone()).await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let redis = redis_client(SHARED_REDIS_URL).await;

    let job = app.create().await;
    let first = wait_for_messages(&redis, &app.queue, Lane::Normal, 1).await;
    assert_eq!(first[0].attempt, 0);
    // A worker takes attempt 0 with the claim of the contract.
    let claim = |attempt: i32| {
        let pool = pool.clone();
        let id = job.id.clone();
        async move {
            sqlx::query(
                "UPDATE translation_jobs SET status = 'IN_PROGRESS' \
                 WHERE id = $1::uuid AND status = 'PENDING' AND attempts = $2",
            )
            .bind(id)
            .bind(attempt)
            .execute(&pool)
            .await
            .unwrap()
            .rows_affected()
        }
    };
    assert_eq!(claim(0).await, 1);

    // Cancelled and retried while that worker is still inside it.
    app.client
        .cancel_translation_job(CancelTranslationJobRequest { id: job.id.clone() })
        .await
        .unwrap();
    let retried = app
        .client
        .retry_translation_job(RetryTranslationJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.attempts, 1);
    let both = wait_for_messages(&redis, &app.queue, Lane::Normal, 2).await;
    assert_eq!(both[1].attempt, 1);

    // A stale copy of attempt 0 claims nothing; attempt 1 does. And the old
    // worker's guarded update matches nothing either.
    assert_eq!(claim(0).await, 0, "a stale attempt cannot claim");
    assert_eq!(claim(1).await, 1);
    let stale_update = sqlx::query(
        "UPDATE translation_jobs SET status = 'COMPLETED' \
         WHERE id = $1::uuid AND status = 'IN_PROGRESS' AND attempts = 0",
    )
    .bind(&job.id)
    .execute(&pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(stale_update, 0);
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_message_still_waiting_in_its_lane_is_never_copied(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::spawn_with(
        database.clone(),
        SHARED_REDIS_URL,
        unique_queue(),
        &[("REAPER_ENABLED", "false")],
    )
    .await;
    app.wait_ready().await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let redis = redis_client(SHARED_REDIS_URL).await;
    for _ in 0..5 {
        app.create().await;
    }
    wait_for_messages(&redis, &app.queue, Lane::Normal, 5).await;

    // No worker runs: the messages wait far longer than the stuck timeout.
    publications_an_hour_and_more_ago(&pool).await;
    let reaper = reaper(&pool, queue(&app.queue).await);
    for _ in 0..3 {
        let rescued = reaper.reap_once().await.unwrap();
        assert!(rescued.is_empty(), "{rescued:?}");
    }
    assert_eq!(messages(&redis, &app.queue, Lane::Normal).await.len(), 5);
    assert_eq!(
        counts(&pool).await.2,
        0,
        "nothing waits in the outbox either"
    );
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_message_popped_by_a_worker_that_died_is_queued_again_after_the_timeout(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::spawn_with(
        database.clone(),
        SHARED_REDIS_URL,
        unique_queue(),
        &[("REAPER_ENABLED", "false")],
    )
    .await;
    app.wait_ready().await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let redis = redis_client(SHARED_REDIS_URL).await;
    for _ in 0..3 {
        app.create().await;
    }
    wait_for_messages(&redis, &app.queue, Lane::Normal, 3).await;
    let reaper = reaper(&pool, queue(&app.queue).await);

    // A worker pops the first message and dies before claiming it.
    let popped: String = redis.lpop(app.queue.key(Lane::Normal), None).await.unwrap();
    let popped: JobMessage = serde_json::from_str(&popped).unwrap();
    assert!(
        reaper.reap_once().await.unwrap().is_empty(),
        "not before the timeout"
    );

    publications_an_hour_and_more_ago(&pool).await;
    popped_an_hour_and_more_ago(&pool).await;
    let rescued = reaper.reap_once().await.unwrap();
    assert_eq!(
        rescued.republished,
        [Uuid::parse_str(&popped.job_id).unwrap()]
    );
    let found = wait_for_messages(&redis, &app.queue, Lane::Normal, 3).await;
    assert_eq!(found.len(), 3);
    assert_eq!(found[2].job_id, popped.job_id, "queued again");
    assert_eq!(found[2].attempt, 1, "as a new attempt");

    publications_an_hour_and_more_ago(&pool).await;
    assert!(
        reaper.reap_once().await.unwrap().is_empty(),
        "once, not on every pass"
    );
    assert_eq!(messages(&redis, &app.queue, Lane::Normal).await.len(), 3);
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn when_redis_loses_its_data_every_pending_job_is_queued_again_once(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let redis_server = TestRedis::started().await;
    let mut app = TestApp::spawn_with(
        database.clone(),
        &redis_server.url(),
        unique_queue(),
        &[("REAPER_INTERVAL", "200ms")],
    )
    .await;
    app.wait_ready().await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let redis = redis_client(&redis_server.url()).await;
    for _ in 0..4 {
        app.create().await;
    }
    let queued = wait_for_messages(&redis, &app.queue, Lane::Normal, 4).await;

    // A worker pops and claims the first one.
    let _: String = redis.lpop(app.queue.key(Lane::Normal), None).await.unwrap();
    sqlx::query(
        "UPDATE translation_jobs SET status = 'IN_PROGRESS' \
         WHERE id = $1::uuid AND status = 'PENDING' AND attempts = 0",
    )
    .bind(&queued[0].job_id)
    .execute(&pool)
    .await
    .unwrap();

    // Redis restarts without persistence (or someone runs FLUSHALL).
    let _: () = redis.flushall(false).await.unwrap();

    let again = wait_for_messages(&redis, &app.queue, Lane::Normal, 3).await;
    let pending: HashSet<String> = ids(&queued[1..]).into_iter().collect();
    assert_eq!(ids(&again).into_iter().collect::<HashSet<_>>(), pending);
    assert!(again.iter().all(|m| m.attempt == 1), "{again:?}");
    // Several reaper passes later: still once each, and the job a worker
    // holds is left to it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(messages(&redis, &app.queue, Lane::Normal).await.len(), 3);
    let held: i32 = sqlx::query_scalar("SELECT attempts FROM translation_jobs WHERE id = $1::uuid")
        .bind(&queued[0].job_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(held, 0);
    app.stop().await;
    let _ = redis.quit().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn the_lanes_share_the_queue_s_slot_and_old_lane_keys_are_moved(pool: PgPool) {
    let name = unique_queue();
    let redis = redis_client(SHARED_REDIS_URL).await;
    // An older version left a high-priority message on the old key.
    let legacy = format!("{}:high", name.as_str());
    let _: i64 = redis
        .rpush(
            &legacy,
            r#"{"job_id":"00000000-0000-4000-8000-000000000001"}"#,
        )
        .await
        .unwrap();
    let relay = relay(&pool, queue_at(SHARED_REDIS_URL, &name).await, 100).await;
    create_jobs(&pool, 1).await;
    relay.drain_once().await.unwrap();

    assert_eq!(name.key(Lane::High), format!("{{{}}}:high", name.as_str()));
    let high = messages(&redis, &name, Lane::High).await;
    assert_eq!(high.len(), 1, "moved to {{queue}}:high");
    let exists: i64 = redis.exists(&legacy).await.unwrap();
    assert_eq!(exists, 0);
    assert!(PATIENCE > Duration::ZERO);
    cleanup(&redis, &name).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_message_popped_just_now_is_judged_from_its_pop_not_its_publication(pool: PgPool) {
    let name = unique_queue();
    let redis = redis_client(SHARED_REDIS_URL).await;
    let created = create_jobs(&pool, 2).await;
    relay(&pool, queue(&name).await, 100)
        .await
        .drain_once()
        .await
        .unwrap();
    let reaper = reaper(&pool, queue(&name).await);

    // A backlog older than the timeout: the messages waited an hour, and a
    // healthy worker pops the first one just now, a moment before its claim.
    publications_an_hour_and_more_ago(&pool).await;
    let _: String = redis.lpop(name.key(Lane::Normal), None).await.unwrap();
    let rescued = reaper.reap_once().await.unwrap();
    assert!(
        rescued.is_empty(),
        "a message popped just now is not queued again: {rescued:?}"
    );
    assert_eq!(messages(&redis, &name, Lane::Normal).await.len(), 1);

    // The worker died after all: a pass once the pop is older than the
    // timeout queues it again.
    popped_an_hour_and_more_ago(&pool).await;
    let rescued = reaper.reap_once().await.unwrap();
    assert_eq!(rescued.republished, [Uuid::parse_str(&created[0]).unwrap()]);
    cleanup(&redis, &name).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn messages_a_failover_lost_are_queued_again_once_even_after_later_pushes_reuse_their_positions(
    pool: PgPool,
) {
    let name = unique_queue();
    let redis = redis_client(SHARED_REDIS_URL).await;
    let first = create_jobs(&pool, 6).await;
    let drained = relay(&pool, queue(&name).await, 100)
        .await
        .drain_once()
        .await
        .unwrap();
    assert_eq!(drained.pushed, 6);

    // A failover to a replica that missed the last three pushes: the lane's
    // counter is back at 3 and the last three messages are gone.
    fail_over_keeping(&redis, &name, 3).await;

    // Later creates, pushed by another relay (another replica of the
    // service), land on positions 4 to 8: past the lost ones' positions.
    let later = create_jobs(&pool, 5).await;
    let drained = relay(&pool, queue(&name).await, 100)
        .await
        .drain_once()
        .await
        .unwrap();
    assert_eq!(drained.pushed, 5);

    let reaper = reaper(&pool, queue(&name).await);
    let rescued = reaper.reap_once().await.unwrap();
    let mut lost = first[3..].to_vec();
    lost.sort();
    assert_eq!(
        sorted_ids(&rescued.republished),
        lost,
        "the lost messages, and only they"
    );
    relay(&pool, queue(&name).await, 100)
        .await
        .drain_once()
        .await
        .unwrap();
    assert!(
        reaper.reap_once().await.unwrap().is_empty(),
        "once, not on every pass"
    );

    let found = messages(&redis, &name, Lane::Normal).await;
    let present: Vec<String> = first[..3].iter().chain(&later).cloned().collect();
    assert_eq!(ids(&found[..8]), present, "nothing present was copied");
    assert!(found[..8].iter().all(|m| m.attempt == 0));
    let mut again = ids(&found[8..]);
    again.sort();
    assert_eq!(again, lost, "each lost job once more");
    assert!(found[8..].iter().all(|m| m.attempt == 1));
    cleanup(&redis, &name).await;
}

/// The claim that starts a drain reads the lanes' record in its statement;
/// a backlog's rounds (`claim_split`) read it after theirs. A rollback must
/// be found either way.
#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_failover_is_found_by_a_backlog_round_claimed_in_parts(pool: PgPool) {
    let name = unique_queue();
    let redis = redis_client(SHARED_REDIS_URL).await;
    let first = create_jobs(&pool, 6).await;
    let drained = relay(&pool, queue(&name).await, 100)
        .await
        .drain_once()
        .await
        .unwrap();
    assert_eq!(drained.pushed, 6);
    // The failover of the test above: the last three pushes are gone.
    fail_over_keeping(&redis, &name, 3).await;

    // Another relay pushes the later jobs in a round of two transactions.
    create_jobs(&pool, 5).await;
    let other = relay(&pool, queue(&name).await, 100).await;
    let round = other.claim_split(2, 0).await.unwrap();
    assert_eq!(round.rows.len(), 5);
    let pushed = other.publish(&round).await.unwrap();
    other.commit(round, pushed).await.unwrap();

    let rescued = reaper(&pool, queue(&name).await).reap_once().await.unwrap();
    let mut lost = first[3..].to_vec();
    lost.sort();
    assert_eq!(
        sorted_ids(&rescued.republished),
        lost,
        "the lost messages, and only they"
    );
    cleanup(&redis, &name).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_round_pushed_before_a_failover_and_committed_after_the_next_push_is_still_found(
    pool: PgPool,
) {
    let name = unique_queue();
    let redis = redis_client(SHARED_REDIS_URL).await;
    let relay = relay(&pool, queue(&name).await, 100).await;
    let kept = create_jobs(&pool, 3).await;
    assert_eq!(relay.drain_once().await.unwrap().pushed, 3);

    // A round is pushed (positions 4 to 6) but not committed yet when
    // Redis fails over to a replica that missed it.
    let lost = create_jobs(&pool, 3).await;
    let round = relay.claim().await.unwrap();
    let pushed = relay.publish(&round).await.unwrap();
    fail_over_keeping(&redis, &name, 3).await;
    // The relay's next round takes positions 4 to 8 again; the lost round
    // commits only after that push.
    let later = create_jobs(&pool, 5).await;
    let next = relay.claim().await.unwrap();
    let next_pushed = relay.publish(&next).await.unwrap();
    relay.commit(round, pushed).await.unwrap();
    relay.commit(next, next_pushed).await.unwrap();

    let reaper = reaper(&pool, queue(&name).await);
    let rescued = reaper.reap_once().await.unwrap();
    let mut expected = lost.clone();
    expected.sort();
    assert_eq!(
        sorted_ids(&rescued.republished),
        expected,
        "the lost round, and only it"
    );
    relay.drain_once().await.unwrap();
    assert!(reaper.reap_once().await.unwrap().is_empty());
    let found = ids(&messages(&redis, &name, Lane::Normal).await);
    let present: Vec<String> = kept.iter().chain(&later).cloned().collect();
    assert_eq!(found[..8], present[..]);
    assert_eq!(found.len(), 11);
    cleanup(&redis, &name).await;
}
