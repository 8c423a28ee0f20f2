//! Statements keep their indexes at any size and after any number of
//! executions: the outbox by job id (built online by its migration), and
//! every filter combination of a List page.

use std::process::Command;

use sqlx::{
    Connection, Executor, PgConnection, PgPool, Row,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use translation_jobs::jobs::{self, JobStatus, JobView, ListQuery, Scope, fields::UserId};
use uuid::Uuid;

use crate::binary::database_url;

/// Jobs in the table the List plans are checked on: enough that walking
/// them costs hundreds of pages, against a few for an index.
const JOBS: i64 = 40_000;

/// The oldest jobs, the only ones of one caller, one novel and FAILED: a
/// plan that walks the primary key from the newest job steps over every
/// other job before it finds them.
const RARE: i64 = 30;

/// Pages of `translation_jobs` a page of 20 may read through an index (a
/// visit per row fetched, and the index pages); a walk of the table reads
/// ten times that and more.
const PAGE_BUFFERS: i64 = 150;

const RARE_USER: &str = "rare-user";
const RARE_NOVEL: &str = "00000000-0000-4000-8000-00000000000a";
/// The values the pages ask for most: a share of the jobs just under the
/// average share of their column's values, so that PostgreSQL finds a
/// generic plan (priced at that average) no dearer than the custom ones.
const COMMON_USER: &str = "user-a";
const COMMON_NOVEL: &str = "00000000-0000-4000-8000-00000000000b";

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

/// `JOBS` jobs in creation order (UUIDv7-like ids). The oldest `RARE` are
/// FAILED, of `RARE_NOVEL` and `RARE_USER`; of the rest, three in ten are
/// CANCELLED, of `COMMON_NOVEL` and `COMMON_USER` (30%: each column has
/// three values, an average share of 33%), the others COMPLETED, of
/// another novel and another caller.
async fn fill_jobs(pool: &PgPool) {
    sqlx::query(
        "INSERT INTO translation_jobs \
             (id, user_id, novel_id, target_lang, target_fields, output_dir, status) \
         SELECT (lpad(to_hex(1700000000000 + g), 12, '0') || '7000' || '8000' \
                 || lpad(to_hex(g), 12, '0'))::uuid, \
                CASE WHEN g <= $2 THEN $3 WHEN g % 10 < 3 THEN $6 ELSE 'user-b' END, \
                CASE WHEN g <= $2 THEN $4::uuid WHEN g % 10 < 3 THEN $5::uuid \
                     ELSE '00000000-0000-4000-8000-00000000000c'::uuid END, \
                'en', '{}', '/out', \
                CASE WHEN g <= $2 THEN 'FAILED' WHEN g % 10 < 3 THEN 'CANCELLED' \
                     ELSE 'COMPLETED' END \
         FROM generate_series(1, $1) AS g",
    )
    .bind(JOBS)
    .bind(RARE)
    .bind(RARE_USER)
    .bind(RARE_NOVEL)
    .bind(COMMON_NOVEL)
    .bind(COMMON_USER)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE translation_jobs")
        .execute(pool)
        .await
        .unwrap();
}

/// One combination of List's filters.
#[derive(Debug, Clone, Copy)]
struct Combination {
    status: bool,
    novel: bool,
    owner: bool,
    before: bool,
}

impl Combination {
    fn all() -> Vec<Self> {
        let mut all = Vec::new();
        for bits in 0..16u8 {
            all.push(Self {
                status: bits & 1 != 0,
                novel: bits & 2 != 0,
                owner: bits & 4 != 0,
                before: bits & 8 != 0,
            });
        }
        all
    }

    /// The page query and scope, with the common values (`rare: false`,
    /// what most calls ask for) or the rare ones.
    fn query(self, rare: bool) -> (ListQuery, Scope) {
        let query = ListQuery {
            status: self.status.then_some(if rare {
                JobStatus::Failed
            } else {
                JobStatus::Cancelled
            }),
            novel_id: self
                .novel
                .then(|| Uuid::parse_str(if rare { RARE_NOVEL } else { COMMON_NOVEL }).unwrap()),
            before: self.before.then_some(Uuid::max()),
            // Large pages with the common values: the generic plan, priced
            // for a tenth of the rows (its LIMIT unknown), looks no dearer.
            limit: if rare { 20 } else { 500 },
            view: JobView::Basic,
        };
        let scope = if self.owner {
            let user = if rare { RARE_USER } else { COMMON_USER };
            Scope::Owner(UserId::parse("user_id", user).unwrap())
        } else {
            Scope::All
        };
        (query, scope)
    }
}

/// Pages of `translation_jobs` (its rows and its indexes) read or found
/// in the buffer cache so far, as PostgreSQL's statistics count them. The
/// session flushes its own counts first (otherwise at most once a second):
/// `conn` must be the connection that ran what is measured.
async fn job_pages(conn: &mut PgConnection) -> i64 {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT coalesce(heap_blks_read, 0) + coalesce(heap_blks_hit, 0) \
              + coalesce(idx_blks_read, 0) + coalesce(idx_blks_hit, 0) \
         FROM pg_statio_user_tables WHERE relname = 'translation_jobs'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap()
}

/// A pool of one connection: [`job_pages`] counts what the session that
/// ran the pages read.
async fn one_connection(database: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .connect_with(database)
        .await
        .unwrap()
}

/// Each combination of filters runs more often than the five executions
/// after which PostgreSQL may switch a prepared statement to a generic
/// plan, with common values and large pages (which make a generic plan
/// look no dearer than the custom ones), on one connection without
/// `enable_seqscan = off`. Then a page of each with the rare values (the
/// oldest jobs: a walk of the primary key from the newest reads every job)
/// reads a few pages of `translation_jobs` only, as PostgreSQL's own counts
/// of the pages read show. Before, every filtered combination read all
/// 1,078 pages; with a prepared statement per combination, eleven of them.
#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn every_list_filter_combination_reads_through_its_index_after_many_executions(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let pool = one_connection(database).await;
    fill_jobs(&pool).await;

    for combination in Combination::all() {
        for _ in 0..8 {
            let (query, scope) = combination.query(false);
            let page = jobs::list_jobs(&pool, &query, &scope).await.unwrap();
            assert_eq!(page.jobs.len(), 500, "{combination:?}");
        }
    }
    let mut walked = Vec::new();
    for combination in Combination::all() {
        let before = job_pages(&mut pool.acquire().await.unwrap()).await;
        let (query, scope) = combination.query(true);
        let page = jobs::list_jobs(&pool, &query, &scope).await.unwrap();
        let read = job_pages(&mut pool.acquire().await.unwrap()).await - before;
        assert_eq!(page.jobs.len(), 20, "{combination:?}");
        let filtered = combination.status || combination.novel || combination.owner;
        assert!(
            !filtered || page.jobs.iter().all(|job| job.status == JobStatus::Failed),
            "{combination:?}: the rare values are the FAILED jobs"
        );
        if read >= PAGE_BUFFERS {
            walked.push((combination, read));
        }
    }
    assert!(
        walked.is_empty(),
        "pages that read {PAGE_BUFFERS} pages of translation_jobs or more: {walked:?}"
    );
    // A walk of the table, for scale: what the guard above tells apart.
    let before = job_pages(&mut pool.acquire().await.unwrap()).await;
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SELECT count(*) FROM translation_jobs WHERE output_dir <> ''")
        .execute(&mut *conn)
        .await
        .unwrap();
    let walk = job_pages(&mut conn).await - before;
    assert!(walk > 5 * PAGE_BUFFERS, "a walk read only {walk} pages");
}

/// A status (or novel) common in the table but absent from its newest
/// jobs: 30,000 finished jobs (one in ten FAILED, of one novel), then the
/// 10,000 newest PENDING (a busy queue, or a Redis outage's backlog). The
/// planner prices a walk of the primary key from the newest job at about
/// ten rows per row wanted (the status's share) and prefers it to the
/// status's index; the walk steps over every PENDING job first. Found by
/// bench/statements.sh at 10 million jobs: the first page of FAILED jobs
/// took 0.44 s (p50), the pages after it 4 ms. Each first page, with and
/// without its filter's values in the newest jobs, reads a few pages.
#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_first_page_finds_its_filter_through_its_index_when_the_newest_jobs_do_not_match(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let pool = one_connection(database).await;
    const FINISHED: i64 = 30_000;
    const NEWEST: i64 = 10_000;
    sqlx::query(
        "INSERT INTO translation_jobs \
             (id, user_id, novel_id, target_lang, target_fields, output_dir, status) \
         SELECT (lpad(to_hex(1700000000000 + g), 12, '0') || '7000' || '8000' \
                 || lpad(to_hex(g), 12, '0'))::uuid, \
                'user-' || (g % 3), \
                CASE WHEN g <= $1 AND g % 10 = 0 THEN $3::uuid ELSE gen_random_uuid() END, \
                'en', '{}', '/out', \
                CASE WHEN g > $1 THEN 'PENDING' WHEN g % 10 = 0 THEN 'FAILED' \
                     ELSE 'COMPLETED' END \
         FROM generate_series(1, $1 + $2) AS g",
    )
    .bind(FINISHED)
    .bind(NEWEST)
    .bind(COMMON_NOVEL)
    .execute(&pool)
    .await
    .unwrap();
    // As autovacuum leaves a table whose old rows no longer change.
    sqlx::query("VACUUM (ANALYZE) translation_jobs")
        .execute(&pool)
        .await
        .unwrap();

    let novel = Uuid::parse_str(COMMON_NOVEL).unwrap();
    let pages = [
        ("FAILED", Some(JobStatus::Failed), None),
        ("COMPLETED", Some(JobStatus::Completed), None),
        ("PENDING", Some(JobStatus::Pending), None),
        ("the novel", None, Some(novel)),
        ("the novel, FAILED", Some(JobStatus::Failed), Some(novel)),
    ];
    let mut walked = Vec::new();
    for (name, status, novel_id) in pages {
        let query = ListQuery {
            status,
            novel_id,
            limit: 20,
            ..ListQuery::default()
        };
        let before = job_pages(&mut pool.acquire().await.unwrap()).await;
        let page = jobs::list_jobs(&pool, &query, &Scope::All).await.unwrap();
        let read = job_pages(&mut pool.acquire().await.unwrap()).await - before;
        assert_eq!(page.jobs.len(), 20, "{name}");
        if let Some(status) = status {
            assert!(page.jobs.iter().all(|job| job.status == status), "{name}");
        }
        if read >= PAGE_BUFFERS {
            walked.push((name, read));
        }
    }
    assert!(
        walked.is_empty(),
        "first pages that read {PAGE_BUFFERS} pages of translation_jobs or more: {walked:?}"
    );
}
