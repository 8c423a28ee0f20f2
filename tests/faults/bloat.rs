//! Bloat: a transaction held open (it pins the xmin horizon, so no row
//! deleted after it started can be vacuumed or even skipped cheaply) while
//! a 100,000-job backlog drains, against the same drain without it.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use crate::{
    common::proxy::{Mode, Proxy},
    consumer::Consumer,
    count::{Bulk, report},
    load::Ledger,
    rig::{Rig, serial},
};

const JOBS: i64 = 100_000;
/// How much slower the drain may get with the horizon pinned. The relay's
/// claim walks the outbox's index from its oldest end; with the horizon
/// pinned, the index entries of every row deleted since cannot be marked
/// dead, so each claim steps over all of them again.
const MAX_SLOWDOWN: f64 = 4.0;
const DRAIN_PATIENCE: Duration = Duration::from_secs(240);

/// `(n_live_tup, n_dead_tup)` of the outbox, once the statistics settled.
async fn outbox_tuples(rig: &Rig) -> (i64, i64) {
    // Backends report their counts at most once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sqlx::query_as(
        "SELECT n_live_tup, n_dead_tup FROM pg_stat_user_tables WHERE relname = 'outbox'",
    )
    .fetch_one(&rig.pool)
    .await
    .expect("pg_stat_user_tables")
}

struct Drain {
    took: Duration,
    dead_before: i64,
    dead_after: i64,
}

impl Drain {
    fn rate(&self) -> f64 {
        JOBS as f64 / self.took.as_secs_f64()
    }
}

/// Writes the backlog while the relay cannot reach Redis, then lets it
/// drain and times it.
async fn drain(rig: &Rig, proxy: &Proxy, bulk: &mut Bulk) -> Drain {
    proxy.set(Mode::Cut);
    bulk.job_ids.extend(rig.bulk_backlog(JOBS).await);
    sqlx::query("ANALYZE translation_jobs, outbox")
        .execute(&rig.pool)
        .await
        .expect("ANALYZE");
    let (_, dead_before) = outbox_tuples(rig).await;
    let started = Instant::now();
    proxy.set(Mode::Pass);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&rig.pool)
            .await
            .expect("count");
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < DRAIN_PATIENCE,
            "{left} rows still wait after {DRAIN_PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let (_, dead_after) = outbox_tuples(rig).await;
    Drain {
        took,
        dead_before,
        dead_after,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_xmin_horizon_slows_a_100k_drain_by_less_than_the_stated_factor() {
    let _serial = serial().await;
    let rig = Rig::plain().await;
    let proxy = Proxy::start(format!("127.0.0.1:{}", rig.redis.port).parse().unwrap()).await;
    let service = rig.service_at(
        "replica",
        &rig.postgres.url("postgres"),
        &format!("redis://127.0.0.1:{}/0", proxy.port()),
        &[],
    );
    service.wait_ready().await;
    let mut bulk = Bulk::default();

    let free = drain(&rig, &proxy, &mut bulk).await;

    // A session that started a repeatable-read transaction and went idle
    // (a forgotten psql, a long report, a stuck migration).
    let mut pin = PgConnection::connect_with(&rig.postgres.options("postgres"))
        .await
        .expect("connect");
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut pin)
        .await
        .unwrap();
    sqlx::query("SELECT count(*) FROM translation_jobs")
        .execute(&mut pin)
        .await
        .unwrap();
    let pinned = drain(&rig, &proxy, &mut bulk).await;
    let horizon_held: bool = sqlx::query_scalar(
        "SELECT backend_xmin IS NOT NULL FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    )
    .fetch_one(&mut pin)
    .await
    .unwrap();
    sqlx::query("COMMIT").execute(&mut pin).await.unwrap();
    pin.close().await.unwrap();
    sqlx::query("VACUUM outbox")
        .execute(&rig.pool)
        .await
        .unwrap();
    let (_, dead_vacuumed) = outbox_tuples(&rig).await;

    let consumer = Consumer::mover(&rig.redis.url(), &rig.queue).await;
    let counts = rig.count("bloat", &Ledger::default(), &bulk).await;
    consumer.stop().await;
    let slowdown = free.rate() / pinned.rate();
    report(
        "bloat",
        &format!(
            "jobs={JOBS} drain free {:.0}/s ({}ms), horizon pinned {:.0}/s ({}ms), slowdown {slowdown:.2}x \
             (allowed {MAX_SLOWDOWN}x); outbox dead tuples free {}->{}, pinned {}->{}, after VACUUM {}",
            free.rate(),
            free.took.as_millis(),
            pinned.rate(),
            pinned.took.as_millis(),
            free.dead_before,
            free.dead_after,
            pinned.dead_before,
            pinned.dead_after,
            dead_vacuumed
        ),
    );
    assert!(horizon_held, "the pinning transaction held no snapshot");
    assert!(
        slowdown < MAX_SLOWDOWN,
        "the drain was {slowdown:.1}x slower with the xmin horizon pinned"
    );
    counts.assert_exactly_once(false);
    service.assert_no_panic();
    drop(service);
    rig.stop().await;
}
