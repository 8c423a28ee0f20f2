//! Migrations are online: applying the newest ones to a database with a few
//! hundred thousand jobs, while the previous version's creates run against
//! it (a rolling deploy), makes no create wait longer than a second.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{PgPool, migrate::Migrator};
use uuid::Uuid;

/// The first migration of this round: everything before it is the schema
/// the running (older) version uses.
const FIRST_NEW: i64 = 20261208000001;

/// The create of the version before: job, subtask and outbox row in one
/// statement, naming only the columns that version knew.
const OLD_CREATE: &str = r#"
WITH job AS (
    INSERT INTO translation_jobs (id, novel_id, target_lang, target_fields, output_dir)
    VALUES ($1, $2, 'en', '{title}', 'outputs/novel_jobs')
    RETURNING id, created_at
),
subtasks AS (
    INSERT INTO translation_subtasks (id, job_id, entity_type, entity_id)
    SELECT $3, job.id, 'novel', $2::text FROM job
)
INSERT INTO outbox (job_id, lane, payload) SELECT job.id, 'normal', '{}' FROM job
"#;

#[sqlx::test(migrations = false)]
async fn applying_the_new_migrations_under_creates_holds_no_create_up(pool: PgPool) {
    let old = Migrator {
        migrations: translation_jobs::app::MIGRATOR
            .migrations
            .iter()
            .filter(|m| m.version < FIRST_NEW)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..Migrator::DEFAULT
    };
    assert!(
        old.migrations.len() < translation_jobs::app::MIGRATOR.migrations.len(),
        "there are new migrations to apply"
    );
    old.run(&pool).await.unwrap();

    // 200,000 finished jobs and 20,000 waiting ones, each with a subtask.
    for (status, count) in [("COMPLETED", 200_000), ("PENDING", 20_000)] {
        sqlx::query(
            "WITH j AS ( \
                 INSERT INTO translation_jobs (id, novel_id, target_lang, target_fields, \
                                               output_dir, status) \
                 SELECT gen_random_uuid(), gen_random_uuid(), 'en', '{title}', 'out', $1 \
                 FROM generate_series(1, $2) RETURNING id) \
             INSERT INTO translation_subtasks (id, job_id, entity_type, entity_id) \
             SELECT gen_random_uuid(), id, 'novel', id::text FROM j",
        )
        .bind(status)
        .bind(count)
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query("ANALYZE").execute(&pool).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let creators: Vec<_> = (0..4)
        .map(|_| {
            let (pool, stop) = (pool.clone(), stop.clone());
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                let mut count = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    sqlx::query(OLD_CREATE)
                        .bind(Uuid::now_v7())
                        .bind(Uuid::new_v4())
                        .bind(Uuid::now_v7())
                        .execute(&pool)
                        .await
                        .unwrap();
                    slowest = slowest.max(started.elapsed());
                    count += 1;
                }
                (slowest, count)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    translation_jobs::app::MIGRATOR.run(&pool).await.unwrap();
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);

    let mut slowest = Duration::ZERO;
    let mut creates = 0;
    for creator in creators {
        let (worst, count) = creator.await.unwrap();
        slowest = slowest.max(worst);
        creates += count;
    }
    eprintln!(
        "new migrations applied in {} ms under {creates} creates; slowest create {} ms",
        took.as_millis(),
        slowest.as_millis()
    );
    assert!(creates > 0);
    assert!(
        slowest < Duration::from_secs(1),
        "a create waited {} ms while the migrations ran",
        slowest.as_millis()
    );
    // The backfill reached the jobs in flight.
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM translation_jobs WHERE max_attempts = 3")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(kept >= 20_000, "{kept}");
}
