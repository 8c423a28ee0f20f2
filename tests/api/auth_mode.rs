//! Safe by default: the real binary refuses to run open beyond loopback
//! unless asked (`AUTH_MODE=none`), and says so when it does run open.

use std::{process::Command, time::Duration};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use translation_jobs::queue::QueueName;

use crate::{
    binary::{Binary, database_url},
    support::{SHARED_REDIS_URL, cleanup, http_get, redis_client, unique_queue},
};

const AUTH_VARIABLES: [&str; 5] = [
    "AUTH_MODE",
    "AUTH_JWT_SECRET",
    "AUTH_JWT_PUBLIC_KEY",
    "AUTH_JWT_ISSUER",
    "AUTH_JWT_AUDIENCE",
];

/// Runs the binary with `env` (and no other authentication variable) until
/// it exits: (exit code, everything it printed).
async fn run_to_exit(env: Vec<(&'static str, String)>) -> (Option<i32>, String) {
    let run = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_translation-jobs"));
        for name in AUTH_VARIABLES {
            command.env_remove(name);
        }
        let output = command
            .envs(env)
            .env("LOG_FORMAT", "json")
            .output()
            .expect("the binary runs");
        (
            output.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    });
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the binary refused at once instead of serving")
        .unwrap()
}

/// The binary on loopback, ready, with `auth` as its only authentication
/// variables.
async fn start_with_auth(
    database: &PgConnectOptions,
    queue: &QueueName,
    auth: Vec<(&'static str, String)>,
) -> Binary {
    let mut env = vec![
        ("DATABASE_URL", database_url(database)),
        ("REDIS_URL", SHARED_REDIS_URL.into()),
        ("TRANSLATION_QUEUE", queue.as_str().into()),
    ];
    env.extend(auth);
    let unset: Vec<&str> = AUTH_VARIABLES
        .into_iter()
        .filter(|name| !env.iter().any(|(set, _)| set == name))
        .collect();
    Binary::start_ready(&env, &unset).await
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn without_a_key_the_binary_refuses_to_listen_beyond_loopback(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    for (grpc, http) in [("0.0.0.0:0", "127.0.0.1:0"), ("127.0.0.1:0", "[::]:0")] {
        let (code, output) = run_to_exit(vec![
            ("DATABASE_URL", database_url(&database)),
            ("GRPC_ADDR", grpc.into()),
            ("HTTP_ADDR", http.into()),
        ])
        .await;
        assert_eq!(code, Some(2), "a configuration error: {output}");
        for named in [
            "AUTH_MODE",
            "AUTH_JWT_SECRET",
            "AUTH_JWT_PUBLIC_KEY",
            "AUTH_MODE=none",
        ] {
            assert!(output.contains(named), "names {named}: {output}");
        }
    }
    // A key in the wrong variable, or a half configuration, is refused too.
    for (name, value) in [
        ("AUTH_MODE", "jwt"),
        ("AUTH_JWT_AUDIENCE", "translation-jobs"),
        (
            "AUTH_JWT_SECRET",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
        ),
    ] {
        let (code, output) = run_to_exit(vec![
            ("DATABASE_URL", database_url(&database)),
            ("GRPC_ADDR", "127.0.0.1:0".into()),
            ("HTTP_ADDR", "127.0.0.1:0".into()),
            (name, value.into()),
        ])
        .await;
        assert_eq!(code, Some(2), "{name}: {output}");
        assert!(output.contains(name), "names {name}: {output}");
    }
}

/// Open on loopback without a word, open anywhere when asked: either way
/// a warning at start-up and `translation_auth_open 1`.
#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn running_open_is_logged_and_exported(_: PgPoolOptions, database: PgConnectOptions) {
    // One database serves one queue: both starts use it.
    let queue = unique_queue();
    for (mode, warning) in [
        (None, "every listener is on loopback"),
        (Some("none"), "AUTH_MODE=none"),
    ] {
        let auth: Vec<(&str, String)> = mode.map(|m| ("AUTH_MODE", m.into())).into_iter().collect();
        let mut binary = start_with_auth(&database, &queue, auth).await;
        let (status, metrics) = http_get(&format!("http://127.0.0.1:{}/metrics", binary.http_port))
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert!(
            metrics
                .lines()
                .any(|line| line == "translation_auth_open 1"),
            "{metrics}"
        );
        let output = binary.output();
        assert!(
            output
                .lines()
                .any(|line| line.contains("\"WARN\"") && line.contains(warning)),
            "{mode:?}: {output}"
        );
        binary.terminate(Duration::from_secs(30)).await;
        cleanup(&redis_client(SHARED_REDIS_URL).await, &queue).await;
    }
}

/// With a key but no audience, a start-up warning says tokens for any
/// audience are accepted; with one, no such warning.
#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_key_without_an_audience_is_warned_about(_: PgPoolOptions, database: PgConnectOptions) {
    let queue = unique_queue();
    for (audience, warned) in [(None, true), (Some("translation-jobs"), false)] {
        let mut auth = vec![("AUTH_JWT_SECRET", "0123456789abcdef0123456789abcdef".into())];
        auth.extend(audience.map(|a| ("AUTH_JWT_AUDIENCE", a.into())));
        let mut binary = start_with_auth(&database, &queue, auth).await;
        let output = binary.output();
        let warning = output
            .lines()
            .any(|line| line.contains("\"WARN\"") && line.contains("AUTH_JWT_AUDIENCE is not set"));
        assert_eq!(warning, warned, "{audience:?}: {output}");
        binary.terminate(Duration::from_secs(30)).await;
        cleanup(&redis_client(SHARED_REDIS_URL).await, &queue).await;
    }
}
