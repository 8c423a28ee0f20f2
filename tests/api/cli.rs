//! The admin commands of the real binary, against PostgreSQL and Redis
//! directly (no service running).

use std::process::Command;

use sqlx::PgPool;
use translation_jobs::queue::QueueName;
use uuid::Uuid;

use crate::{
    binary::database_url,
    redrive::dead_jobs,
    support::{SHARED_REDIS_URL, cleanup, create_jobs, queue, redis_client, unique_queue},
};

/// What one run of the binary did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

/// Runs `translation-jobs ARGS` with the environment of a service on this
/// database and queue.
async fn run(database: Option<&str>, queue: &QueueName, args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_translation-jobs"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("DATABASE_DSN")
        .env("REDIS_URL", SHARED_REDIS_URL)
        .env("TRANSLATION_QUEUE", queue.as_str());
    if let Some(url) = database {
        command.env("DATABASE_URL", url);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("the binary runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn get_list_cancel_retry_and_stats_work_without_a_service(pool: PgPool) {
    let options = pool.connect_options();
    let url = database_url(&options);
    let url = Some(url.as_str());
    let name = unique_queue();
    let ids = create_jobs(&pool, 2).await;

    let got = run(url, &name, &["get", &ids[0], "--json"]).await;
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert_eq!(got.json()["id"], ids[0].as_str());
    assert_eq!(got.json()["status"], "PENDING");

    let table = run(url, &name, &["get", &ids[0]]).await;
    assert!(table.stdout.contains("status") && table.stdout.contains("PENDING"));
    assert!(table.stdout.contains("SUBTASK"), "{}", table.stdout);

    let listed = run(url, &name, &["list", "--status", "pending", "--json"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let jobs = listed.json()["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0]["id"], ids[1].as_str(), "newest first");
    let listed = run(url, &name, &["list", "--limit", "1"]).await;
    assert!(listed.stdout.starts_with("ID "), "{}", listed.stdout);
    assert!(listed.stdout.contains(&ids[1]));
    assert!(listed.stdout.contains("more jobs follow"));

    let cancelled = run(url, &name, &["cancel", &ids[0]]).await;
    assert_eq!(cancelled.code, 0, "{}", cancelled.stderr);
    assert!(cancelled.stdout.contains("CANCELLED"));
    let again = run(url, &name, &["cancel", &ids[0]]).await;
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("is CANCELLED"), "{}", again.stderr);
    let retried = run(url, &name, &["retry", &ids[0], "--json"]).await;
    assert_eq!(retried.code, 0, "{}", retried.stderr);
    assert_eq!(retried.json()["status"], "PENDING");
    assert_eq!(retried.json()["attempts"], 1);

    let stats = run(url, &name, &["stats", "--json"]).await;
    assert_eq!(stats.code, 0, "{}", stats.stderr);
    let stats = stats.json();
    assert_eq!(stats["queue"], name.as_str());
    assert_eq!(stats["redis_reachable"], true);
    assert_eq!(
        stats["outbox_backlog"], 2,
        "nothing relays: both wait in the outbox"
    );
    assert_eq!(stats["lanes"].as_array().unwrap().len(), 4);
    let table = run(url, &name, &["stats"]).await;
    assert!(table.stdout.contains("outbox backlog"), "{}", table.stdout);
    assert!(
        table
            .stdout
            .contains(&format!("{{{}}}:dead", name.as_str()))
    );

    let unknown = run(url, &name, &["get", &Uuid::now_v7().to_string()]).await;
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("not found"), "{}", unknown.stderr);
    let malformed = run(url, &name, &["get", "nope"]).await;
    assert_eq!(malformed.code, 2);
    assert!(malformed.stderr.contains("id: must be a UUID"));
    let bad_status = run(url, &name, &["list", "--status", "done"]).await;
    assert_eq!(bad_status.code, 2);
    assert!(
        bad_status.stderr.contains("--status"),
        "{}",
        bad_status.stderr
    );
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn redrive_dead_queues_dead_letters_again(pool: PgPool) {
    let url = database_url(&pool.connect_options());
    let name = unique_queue();
    let queue = queue(&name).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let ids = dead_jobs(&pool, &queue, &redis, &name, 2).await;

    let first = run(
        Some(&url),
        &name,
        &["redrive-dead", "--limit", "1", "--json"],
    )
    .await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    let first = first.json();
    assert_eq!(first["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(first["jobs"][0]["status"], "PENDING");
    assert_eq!(first["jobs"][0]["attempts"], 1);
    assert_eq!(first["dead_letters_remaining"], 1);

    let rest = run(Some(&url), &name, &["redrive-dead"]).await;
    assert_eq!(rest.code, 0, "{}", rest.stderr);
    assert!(
        rest.stdout.starts_with("redriven 1 jobs"),
        "{}",
        rest.stdout
    );
    let statuses: Vec<String> =
        sqlx::query_scalar("SELECT status FROM translation_jobs WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(statuses, ["PENDING", "PENDING"]);
    cleanup(&redis, &name).await;
}

#[sqlx::test(migrations = false)]
async fn migrate_runs_the_migrations_and_exits(pool: PgPool) {
    let url = database_url(&pool.connect_options());
    let name = unique_queue();
    let before = run(Some(&url), &name, &["list"]).await;
    assert_eq!(before.code, 1);
    assert!(
        before.stderr.contains("translation-jobs migrate"),
        "{}",
        before.stderr
    );

    let migrated = run(Some(&url), &name, &["migrate"]).await;
    assert_eq!(migrated.code, 0, "{}", migrated.stderr);
    assert!(migrated.stdout.starts_with("database migrated"));
    let after = run(Some(&url), &name, &["list", "--json"]).await;
    assert_eq!(after.code, 0, "{}", after.stderr);
    assert_eq!(after.json()["jobs"], serde_json::json!([]));
}

#[tokio::test]
async fn without_database_url_the_binary_refuses_to_start_and_says_why() {
    // What `cargo run` does in a fresh checkout: no DATABASE_URL at all.
    for args in [&[][..], &["stats"][..]] {
        let refused = run(None, &unique_queue(), args).await;
        assert_eq!(refused.code, 2, "{args:?}");
        assert!(
            refused.stderr.contains("DATABASE_URL: must be set"),
            "{}",
            refused.stderr
        );
    }
}
