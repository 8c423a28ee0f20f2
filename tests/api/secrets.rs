//! Secret hygiene: the real binary runs with passwords in DATABASE_URL and
//! REDIS_URL (a sentinel password too) and an HS256 secret, meets a wrong
//! password, unreachable servers and bad tokens, and none of the secrets
//! (nor the tokens) shows up in anything it prints.

use std::{
    io::Read,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tonic::{Code, Request};
use translation_jobs::api::proto::{
    GetQueueStatsRequest, translation_job_service_client::TranslationJobServiceClient,
};

use crate::support::{PATIENCE, TestRedis, create_request, free_port, http_request};

const DB_PASSWORD: &str = "db-pw-Zq8vN3xK";
const REDIS_PASSWORD: &str = "redis-pw-Hf7wB2mD";
const SENTINEL_PASSWORD: &str = "sentinel-pw-Lp4tR9cJ";
const JWT_SECRET: &str = "jwt-secret-Xy5uE1gS-0123456789abcdef";

/// The binary with its output captured.
struct Service {
    child: Child,
    output: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    grpc_port: u16,
    http_port: u16,
}

impl Service {
    fn start(vars: &[(&str, String)]) -> Self {
        let (grpc_port, http_port) = (free_port(), free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_translation-jobs"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
            .env("HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("TRANSLATION_QUEUE", crate::support::unique_queue().as_str())
            .env("RELAY_POLL_INTERVAL", "100ms")
            .env("RELAY_MAX_BACKOFF", "200ms")
            .env("REDIS_COMMAND_TIMEOUT", "1s")
            .env("SHUTDOWN_TIMEOUT", "3s")
            // Everything the service and its libraries log.
            .env("RUST_LOG", "debug,h2=info,hyper=info,tower=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in vars {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the binary starts");
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for mut stream in [stdout, stderr] {
            let output = output.clone();
            readers.push(std::thread::spawn(move || {
                let mut buffer = [0_u8; 8192];
                while let Ok(n) = stream.read(&mut buffer) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
                    output.lock().unwrap().push_str(&text);
                }
            }));
        }
        Self {
            child,
            output,
            readers,
            grpc_port,
            http_port,
        }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until the output holds `needle`.
    async fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.output().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "never logged {needle:?}; output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn client(&self) -> TranslationJobServiceClient<tonic::transport::Channel> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match TranslationJobServiceClient::connect(format!(
                "http://127.0.0.1:{}",
                self.grpc_port
            ))
            .await
            {
                Ok(client) => return client,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("cannot reach the binary: {error}"),
            }
        }
    }

    /// Stops the binary (SIGTERM) and returns everything it printed.
    async fn stop(mut self) -> String {
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .status();
        let deadline = Instant::now() + PATIENCE;
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        self.output()
    }
}

impl Drop for Service {
    /// A failed assertion must not leave the binary running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for the binary to exit by itself (a start-up error).
fn exit_output(mut service: Service) -> (i32, String) {
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = service.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the binary did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    for reader in service.readers.drain(..) {
        let _ = reader.join();
    }
    (status.code().unwrap_or(-1), service.output())
}

fn assert_no_secret(output: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !output.contains(secret),
            "{secret:?} appears in the output:\n{output}"
        );
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: serde_json::Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Sends calls with a forged token, an expired one and a good one; returns
/// the tokens (which must not be logged either).
async fn provoke_auth_failures(service: &Service) -> Vec<String> {
    let forged = hs256(
        json!({"sub": "mallory", "exp": now() + 600}),
        "not-the-secret-0123456789abcdefghij",
    );
    let expired = hs256(json!({"sub": "alice", "exp": now() - 3600}), JWT_SECRET);
    let admin = hs256(
        json!({"sub": "ops", "exp": now() + 600, "scope": "translation.admin"}),
        JWT_SECRET,
    );
    let mut client = service.client().await;
    for token in [&forged, &expired] {
        let mut request = Request::new(create_request());
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let status = client.create_translation_job(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        let url = format!(
            "http://127.0.0.1:{}/api/v1/translation-jobs/{}",
            service.http_port,
            uuid::Uuid::now_v7()
        );
        let bearer = format!("Bearer {token}");
        let (code, _) = http_request("GET", &url, None, &[("authorization", &bearer)])
            .await
            .unwrap();
        assert_eq!(code, 401);
    }
    let mut request = Request::new(GetQueueStatsRequest {});
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {admin}").parse().unwrap());
    let _ = client.get_queue_stats(request).await;
    vec![forged, expired, admin]
}

/// A PostgreSQL look-alike that asks for the password in clear text,
/// refuses it as PostgreSQL does (28P01), and records what it was sent.
async fn wrong_password_server() -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let seen = received.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let _ = refuse_password(&mut socket, &seen).await;
            });
        }
    });
    (port, received)
}

async fn refuse_password(
    socket: &mut tokio::net::TcpStream,
    seen: &Mutex<Vec<u8>>,
) -> std::io::Result<()> {
    const SSL_REQUEST: i32 = 80_877_103;
    loop {
        let length = socket.read_i32().await?;
        let code = socket.read_i32().await?;
        let mut rest = vec![0; usize::try_from(length - 8).unwrap_or(0)];
        socket.read_exact(&mut rest).await?;
        if code == SSL_REQUEST {
            socket.write_all(b"N").await?;
            continue;
        }
        break;
    }
    // AuthenticationCleartextPassword.
    socket.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await?;
    let tag = socket.read_u8().await?;
    let length = socket.read_i32().await?;
    let mut password = vec![0; usize::try_from(length - 4).unwrap_or(0)];
    socket.read_exact(&mut password).await?;
    if tag == b'p' {
        seen.lock().unwrap().extend_from_slice(&password);
    }
    let mut fields = Vec::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "28P01"),
        (b'M', "password authentication failed for user \"app\""),
    ] {
        fields.push(field);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&(i32::try_from(fields.len()).unwrap() + 4).to_be_bytes());
    message.extend_from_slice(&fields);
    socket.write_all(&message).await?;
    socket.shutdown().await
}

#[tokio::test]
async fn a_wrong_database_password_an_unreachable_sentinel_and_bad_tokens_leak_no_secret() {
    let (pg_port, received) = wrong_password_server().await;
    let sentinel_port = free_port();
    let service = Service::start(&[
        (
            "DATABASE_URL",
            format!("postgres://app:{DB_PASSWORD}@127.0.0.1:{pg_port}/jobs"),
        ),
        (
            "REDIS_URL",
            format!(
                "redis-sentinel://:{REDIS_PASSWORD}@127.0.0.1:{sentinel_port}/0\
                 ?sentinelServiceName=main&sentinelPassword={SENTINEL_PASSWORD}"
            ),
        ),
        ("AUTH_JWT_SECRET", JWT_SECRET.to_owned()),
    ]);
    service.wait_for("password authentication failed").await;
    let tokens = provoke_auth_failures(&service).await;
    service.wait_for("Redis target").await;
    let output = service.stop().await;

    // The password really went through the client, and was refused.
    let sent = String::from_utf8_lossy(&received.lock().unwrap()).into_owned();
    assert!(sent.contains(DB_PASSWORD), "the fake server got {sent:?}");
    assert!(output.contains("sentinelPassword=***"), "{output}");
    let mut secrets = vec![DB_PASSWORD, REDIS_PASSWORD, SENTINEL_PASSWORD, JWT_SECRET];
    secrets.extend(tokens.iter().map(String::as_str));
    assert_no_secret(&output, &secrets);
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_wrong_redis_password_and_bad_tokens_leak_no_secret(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    // Trust authentication ignores the password, so the service runs; the
    // password is in the URL all the same.
    let database_url = format!(
        "postgres://{}:{DB_PASSWORD}@{}:{}/{}",
        database.get_username(),
        database.get_host(),
        database.get_port(),
        database.get_database().unwrap_or("postgres")
    );
    let redis = TestRedis::started_with(&["--requirepass", "the-right-one"]).await;
    let service = Service::start(&[
        ("DATABASE_URL", database_url),
        (
            "REDIS_URL",
            format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/0", redis.port),
        ),
        ("AUTH_JWT_SECRET", JWT_SECRET.to_owned()),
    ]);
    service.wait_for("database ready").await;
    let tokens = provoke_auth_failures(&service).await;
    // A job the relay cannot push: Redis refuses the password.
    let good = hs256(json!({"sub": "alice", "exp": now() + 600}), JWT_SECRET);
    let mut request = Request::new(create_request());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {good}").parse().unwrap());
    let created = service.client().await.create_translation_job(request).await;
    assert!(created.is_ok(), "{created:?}");
    service.wait_for("Redis is not connected").await;
    // Redis saw the client try the (wrong) password.
    let admin = crate::support::redis_client(&format!(
        "redis://:the-right-one@127.0.0.1:{}/0",
        redis.port
    ))
    .await;
    let refused: Vec<fred::prelude::Value> =
        fred::prelude::ClientLike::custom(&admin, fred::cmd!("ACL"), vec!["LOG"])
            .await
            .unwrap();
    assert!(!refused.is_empty(), "Redis logged no failed AUTH");
    let output = service.stop().await;

    let mut secrets = vec![DB_PASSWORD, REDIS_PASSWORD, JWT_SECRET, good.as_str()];
    secrets.extend(tokens.iter().map(String::as_str));
    assert_no_secret(&output, &secrets);
}

#[tokio::test]
async fn start_up_errors_name_the_variable_without_echoing_secrets() {
    for (vars, variable) in [
        (
            vec![(
                "DATABASE_URL",
                format!("postgres://app:{DB_PASSWORD}@db:notaport/jobs"),
            )],
            "DATABASE_URL",
        ),
        (
            vec![
                ("DATABASE_URL", "postgres://app@127.0.0.1:1/jobs".to_owned()),
                ("AUTH_JWT_SECRET", "short-but-secret".to_owned()),
            ],
            "AUTH_JWT_SECRET",
        ),
        (
            vec![
                ("DATABASE_URL", "postgres://app@127.0.0.1:1/jobs".to_owned()),
                (
                    "REDIS_URL",
                    format!("http://:{REDIS_PASSWORD}@cache:6379/0"),
                ),
            ],
            "REDIS_URL",
        ),
        (
            vec![
                ("DATABASE_URL", "postgres://app@127.0.0.1:1/jobs".to_owned()),
                (
                    "AUTH_JWT_PUBLIC_KEY",
                    format!(
                        "-----BEGIN PRIVATE KEY-----\n{JWT_SECRET}\n-----END PRIVATE KEY-----\n"
                    ),
                ),
            ],
            "AUTH_JWT_PUBLIC_KEY",
        ),
    ] {
        let (code, output) = exit_output(Service::start(&vars));
        assert_eq!(code, 2, "{output}");
        assert!(output.contains(variable), "{output}");
        assert_no_secret(
            &output,
            &[DB_PASSWORD, REDIS_PASSWORD, "short-but-secret", JWT_SECRET],
        );
    }
}

#[tokio::test]
async fn without_keys_the_binary_warns_at_start_up_that_it_runs_open() {
    let service = Service::start(&[(
        "DATABASE_URL",
        format!("postgres://app@127.0.0.1:{}/jobs", free_port()),
    )]);
    service.wait_for("authentication is off").await;
    let output = service.stop().await;
    let warning = output
        .lines()
        .find(|line| line.contains("authentication is off"))
        .unwrap();
    assert!(warning.contains("WARN"), "{warning}");
}
