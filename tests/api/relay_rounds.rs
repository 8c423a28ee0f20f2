//! The relay's rounds: a round claimed by several transactions at once keeps
//! outbox order in every lane; publications recorded by a plain insert
//! still cope with a job that already has one.

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use translation_jobs::{outbox::FULL_SCAN_EVERY, queue::Lane, supervise::Beat, wake::Wake};

use crate::support::{
    SHARED_REDIS_URL, cleanup, counts, create_in_lanes, messages, queue, redis_client, relay,
    relay_settings, relay_with, unique_queue, wait_for_messages,
};

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_round_claimed_by_several_transactions_is_the_oldest_rows_in_id_order(pool: PgPool) {
    let name = unique_queue();
    let relay = relay(&pool, queue(&name).await, 90).await;
    crate::support::create_jobs(&pool, 200).await;
    let all: Vec<i64> = sqlx::query_scalar("SELECT id FROM outbox ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();

    let claimed = relay.claim_split(3, 0).await.unwrap();
    let ids: Vec<i64> = claimed.rows.iter().map(|r| r.id).collect();
    assert_eq!(ids, all[..90], "the 90 oldest, in order, none twice");
    drop(claimed);
    assert_eq!(counts(&pool).await.2, 200, "rolled back with the round");
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_round_claimed_in_parts_after_a_hint_is_the_next_rows_in_id_order_across_gaps(
    pool: PgPool,
) {
    let name = unique_queue();
    let relay = relay(&pool, queue(&name).await, 90).await;
    crate::support::create_jobs(&pool, 200).await;
    // Gaps, as rolled-back creates leave: ids the parts' staggered starts
    // would expect are missing.
    sqlx::query(
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id OFFSET 20 LIMIT 15)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let all: Vec<i64> = sqlx::query_scalar("SELECT id FROM outbox ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();

    let claimed = relay.claim_split(3, all[9]).await.unwrap();
    let ids: Vec<i64> = claimed.rows.iter().map(|r| r.id).collect();
    assert_eq!(
        ids,
        all[10..100],
        "the 90 rows after the hint, in order, none twice, none skipped"
    );
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_backlog_drained_in_split_rounds_reaches_every_lane_in_creation_order(pool: PgPool) {
    let name = unique_queue();
    let redis = redis_client(SHARED_REDIS_URL).await;
    let created = create_in_lanes(&pool, 900).await;

    // Rounds of 40 rows, each claimed by 4 transactions at once.
    let mut settings = relay_settings(40);
    settings.claimers = 4;
    let relay = relay_with(&pool, queue(&name).await, settings).await;
    let token = CancellationToken::new();
    let running = tokio::spawn(relay.run(token.clone(), Wake::new(), Beat::detached("relay")));
    for (lane, expected) in [Lane::High, Lane::Normal, Lane::Low].iter().zip(&created) {
        let found = wait_for_messages(&redis, &name, *lane, expected.len()).await;
        let ids: Vec<&str> = found.iter().map(|m| m.job_id.as_str()).collect();
        assert_eq!(ids, *expected, "lane {lane:?} in creation order, once each");
    }
    token.cancel();
    running.await.unwrap();
    assert_eq!(counts(&pool).await.2, 0);
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_publications WHERE seq IS NOT NULL AND generation IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(recorded, 900, "every job's publication recorded");
    cleanup(&redis, &name).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_message_for_a_job_that_already_has_a_publication_is_recorded_on_retry(pool: PgPool) {
    let name = unique_queue();
    let relay = relay(&pool, queue(&name).await, 100).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let created = crate::support::create_jobs(&pool, 1).await;
    assert_eq!(relay.drain_once().await.unwrap().pushed, 1);

    // An outbox row written by hand for the published job, as a manual fix
    // might: its publication row is still there.
    sqlx::query(
        "INSERT INTO outbox (job_id, attempt, lane, payload) \
         SELECT id, 1, 'normal', '{\"job_id\":\"' || id || '\",\"attempt\":1}' FROM translation_jobs",
    )
    .execute(&pool)
    .await
    .unwrap();
    relay
        .drain_once()
        .await
        .expect_err("the plain insert meets the existing publication");
    assert_eq!(counts(&pool).await.2, 1, "the row is back in the outbox");
    let drained = relay.drain_once().await.unwrap();
    assert_eq!(
        (drained.claimed, drained.pushed),
        (1, 0),
        "recorded now, not pushed twice"
    );
    let found = messages(&redis, &name, Lane::Normal).await;
    assert_eq!(found.len(), 2);
    assert!(found.iter().all(|m| m.job_id == created[0]));
    let (attempt, seq): (i32, i64) = sqlx::query_as("SELECT attempt, seq FROM job_publications")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((attempt, seq), (1, 2), "the newer attempt at its position");

    // Later rounds go back to the plain insert.
    crate::support::create_jobs(&pool, 3).await;
    assert_eq!(relay.drain_once().await.unwrap().pushed, 3);
    cleanup(&redis, &name).await;
}

/// A row whose transaction commits while a backlog drains, with an id below
/// where the claims scan from: taken within `FULL_SCAN_EVERY` rounds, not
/// stranded until the backlog ends or the next poll.
#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_row_committed_late_below_the_scan_start_is_taken_while_the_backlog_lasts(pool: PgPool) {
    let name = unique_queue();
    let redis = redis_client(SHARED_REDIS_URL).await;
    // Its outbox id is taken now, below every row of the backlog; it becomes
    // visible only at the commit.
    let late_job = uuid::Uuid::now_v7();
    let mut late = pool.begin().await.unwrap();
    sqlx::query(
        "WITH job AS (INSERT INTO translation_jobs (id, novel_id, source_lang, target_lang, target_fields, output_dir) \
             VALUES ($1, gen_random_uuid(), 'ja', 'en', '{title}', 'out') RETURNING id) \
         INSERT INTO outbox (job_id, lane, payload) \
         SELECT id, 'normal', '{\"job_id\":\"' || id || '\",\"attempt\":0}' FROM job",
    )
    .bind(late_job)
    .execute(&mut *late)
    .await
    .unwrap();
    let backlog = 3000;
    crate::support::create_jobs(&pool, backlog).await;

    let batch = 10;
    let mut settings = relay_settings(batch);
    settings.claimers = 1;
    // Nothing wakes the relay but its own loop: a poll would hide a row the
    // drain left behind.
    settings.poll_interval = std::time::Duration::from_secs(3600);
    let relay = relay_with(&pool, queue(&name).await, settings).await;
    let token = CancellationToken::new();
    let running = tokio::spawn(relay.run(token.clone(), Wake::new(), Beat::detached("relay")));
    wait_for_messages(&redis, &name, Lane::Normal, 100).await;
    late.commit().await.unwrap();
    let pushed_at_commit: usize = {
        use fred::interfaces::ListInterface as _;
        redis.llen(name.key(Lane::Normal)).await.unwrap()
    };
    assert!(
        pushed_at_commit < backlog,
        "the backlog drained before the late commit ({pushed_at_commit} pushed): nothing tested"
    );

    let found = wait_for_messages(&redis, &name, Lane::Normal, backlog + 1).await;
    token.cancel();
    running.await.unwrap();
    let position = found
        .iter()
        .position(|m| m.job_id == late_job.to_string())
        .expect("the late row is pushed");
    // Rounds already claimed when it committed, then at most FULL_SCAN_EVERY
    // rounds claimed from the hint before one scans from the start.
    let bound = pushed_at_commit + (FULL_SCAN_EVERY as usize + 3) * batch as usize;
    assert!(
        position <= bound,
        "the late row went out at position {position}, after more than {FULL_SCAN_EVERY} hinted rounds (pushed at its commit: {pushed_at_commit})"
    );
    assert_eq!(found.len(), backlog + 1, "once each");
    cleanup(&redis, &name).await;
}

/// A claim that fails while the previous round's commit is still running
/// (the drain's last claim from 0, after a full round) lets that commit
/// finish instead of aborting it: the round was pushed, and aborting its
/// commit would put every row back in the outbox.
#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_failed_claim_lets_the_previous_round_commit(pool: PgPool) {
    let name = unique_queue();
    let redis = redis_client(SHARED_REDIS_URL).await;
    let batch = 5;
    let created = crate::support::create_jobs(&pool, batch as usize).await;
    // The drain's third claim fails: the first takes the full round, the
    // second (after the round's last id) finds nothing, the third (from 0,
    // before the drain ends) is refused.
    for statement in [
        "CREATE SEQUENCE test_claims",
        "CREATE FUNCTION test_refuse_third_claim() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF nextval('test_claims') = 3 THEN RAISE EXCEPTION 'third claim refused by the test'; END IF; \
         RETURN NULL; END $$",
        "CREATE TRIGGER test_refuse_third_claim BEFORE DELETE ON outbox \
         FOR EACH STATEMENT EXECUTE FUNCTION test_refuse_third_claim()",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    // The round's commit waits: another transaction inserts the first job's
    // publication and holds it until the third claim has failed.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO job_publications (job_id, published_at) VALUES ($1::uuid, now())")
        .bind(&created[0])
        .execute(&mut *holder)
        .await
        .unwrap();

    let mut settings = relay_settings(batch);
    settings.claimers = 1;
    let relay = relay_with(&pool, queue(&name).await, settings).await;
    let draining = tokio::spawn(async move {
        relay
            .drain_until_idle(&CancellationToken::new(), &Beat::detached("relay"))
            .await
    });
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    loop {
        let claims: i64 = sqlx::query_scalar("SELECT last_value FROM test_claims")
            .fetch_one(&pool)
            .await
            .unwrap();
        if claims >= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the third claim never came"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Time for a drain that gives up at once to have dropped the commit.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    holder.rollback().await.unwrap();
    let error = draining.await.unwrap().unwrap_err();
    assert!(
        format!("{error:?}").contains("third claim refused"),
        "the claim's error is returned: {error:?}"
    );
    crate::support::wait_for_rollbacks(&pool).await;
    let (_, _, outbox) = counts(&pool).await;
    assert_eq!(outbox, 0, "the pushed round committed");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM job_publications")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(recorded, i64::from(batch), "every publication recorded");
    assert_eq!(
        messages(&redis, &name, Lane::Normal).await.len(),
        batch as usize,
        "pushed once"
    );
    cleanup(&redis, &name).await;
}
