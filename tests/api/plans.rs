//! Statements keep their indexes at any size: the outbox by job id, built
//! online by its migration.

use std::process::Command;

use sqlx::{Connection, Executor, PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::binary::database_url;

/// The EXPLAIN of `statement` as JSON text (`EXPLAIN` answers with type
/// json, which sqlx does not decode as a string without being told).
async fn explain(conn: &mut PgConnection, statement: &str) -> serde_json::Value {
    let row = conn
        .fetch_one(&*format!(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}"
        ))
        .await
        .unwrap_or_else(|e| panic!("EXPLAIN {statement}: {e}"));
    let text: String = row.try_get_unchecked(0).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every node of a plan, depth first.
fn nodes(plan: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut all = vec![plan];
    if let Some(children) = plan["Plans"].as_array() {
        for child in children {
            all.extend(nodes(child));
        }
    }
    all
}

/// The indexes of `table` a plan reads through (the service names them
/// after their table), and whether it scans `table` sequentially.
fn access(plan: &serde_json::Value, table: &str) -> (Vec<String>, bool) {
    let mut indexes = Vec::new();
    let mut seq = false;
    for node in nodes(plan) {
        if node["Node Type"] == "Seq Scan" && node["Relation Name"] == table {
            seq = true;
        }
        if let Some(index) = node["Index Name"].as_str()
            && index.starts_with(table)
        {
            indexes.push(index.to_owned());
        }
    }
    (indexes, seq)
}

/// Shared buffers the whole statement touched.
fn buffers(plan: &serde_json::Value) -> i64 {
    plan["Shared Hit Blocks"].as_i64().unwrap() + plan["Shared Read Blocks"].as_i64().unwrap()
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn the_outbox_index_by_job_is_built_outside_a_transaction_and_deletes_by_job_use_it(
    pool: PgPool,
) {
    let migration = translation_jobs::app::MIGRATOR
        .iter()
        .find(|m| m.version == 20261209000002)
        .expect("the outbox index migration is embedded");
    assert!(migration.no_tx, "CREATE INDEX CONCURRENTLY needs no_tx");
    let valid: bool = sqlx::query_scalar(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'outbox_job_id_idx'::regclass",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(valid);

    // 50,000 messages of 50,000 jobs: the size where walking them shows.
    sqlx::query(
        "INSERT INTO outbox (job_id, lane, payload) \
         SELECT gen_random_uuid(), 'normal', '{}' FROM generate_series(1, 50000)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE outbox").execute(&pool).await.unwrap();
    let some: Vec<Uuid> = sqlx::query_scalar("SELECT job_id FROM outbox ORDER BY id LIMIT 3")
        .fetch_all(&pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let list = some
        .iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",");
    let plan = explain(
        &mut tx,
        &format!("DELETE FROM outbox WHERE job_id = ANY(ARRAY[{list}]::uuid[])"),
    )
    .await;
    let (indexes, seq) = access(&plan[0]["Plan"], "outbox");
    assert!(!seq, "{plan:#}");
    assert_eq!(indexes, ["outbox_job_id_idx"], "{plan:#}");
    assert!(buffers(&plan[0]["Plan"]) < 50, "{plan:#}");
    tx.rollback().await.unwrap();
}

/// Runs `translation-jobs migrate` against `url`; its exit code and stderr.
async fn migrate(url: String) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_translation-jobs"));
    command
        .arg("migrate")
        .env_remove("DATABASE_DSN")
        .env("DATABASE_URL", url)
        .env("REDIS_URL", "redis://127.0.0.1:6379/0");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("the binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Replicas that start together each run the migrations. The one that
/// waits for the other must not wait inside a statement: the concurrent
/// index build would wait for that statement while it waits for the build,
/// and PostgreSQL would end one of them as a deadlock.
#[sqlx::test(migrations = false)]
async fn three_migrate_commands_at_once_all_succeed_and_build_a_valid_index(pool: PgPool) {
    let url = database_url(&pool.connect_options());
    let runs = futures_util::future::join_all((0..3).map(|_| migrate(url.clone()))).await;
    for (code, stderr) in &runs {
        assert_eq!(*code, 0, "{stderr}");
    }
    let valid: bool = sqlx::query_scalar(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'outbox_job_id_idx'::regclass",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(valid);
    let applied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM _sqlx_migrations WHERE version = 20261209000002 AND success",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(applied, 1);
}

/// A transaction older than the concurrent build (a long report, a backup)
/// makes the build wait for it, not fail: the migrations' lock timeout, for
/// statements that would hold up creates queued behind them, does not cut
/// the build short (which would leave an invalid index that the
/// migration's `IF NOT EXISTS` then takes for built).
#[sqlx::test(migrations = false)]
async fn the_concurrent_build_waits_for_an_older_transaction_past_the_lock_timeout(pool: PgPool) {
    let mut report = pool.begin().await.unwrap();
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *report)
        .await
        .unwrap();
    sqlx::query("SELECT 1").execute(&mut *report).await.unwrap();

    let migrating = tokio::spawn(migrate(database_url(&pool.connect_options())));
    tokio::time::sleep(translation_jobs::db::MIGRATION_LOCK_TIMEOUT * 2).await;
    assert!(!migrating.is_finished(), "the build waits for the report");
    report.commit().await.unwrap();
    let (code, stderr) = migrating.await.unwrap();
    assert_eq!(code, 0, "{stderr}");
    let valid: bool = sqlx::query_scalar(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'outbox_job_id_idx'::regclass",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(valid);
}
