//! Helpers shared by the integration tests: a running service on free ports,
//! a Redis server of the test's own, and Redis reads.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use fred::prelude::{Builder, Client, ClientLike, Config, KeysInterface, ListInterface};
use sqlx::{PgPool, postgres::PgConnectOptions};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use translation_jobs::{
    api::{
        convert,
        proto::{
            CreateTranslationJobRequest, TranslationJob,
            translation_job_service_client::TranslationJobServiceClient,
        },
    },
    app::App,
    config::Settings,
    jobs::{self, fields::UserId},
    metrics::Metrics,
    outbox::{Drained, Relay, RelayError, RelaySettings},
    queue::{JobMessage, Lane, QueueError, QueueName, RedisQueue, RedisSettings},
    wake::Wake,
};
use uuid::Uuid;

pub use crate::common::{
    free_port,
    http::{http_get, http_request},
    redis::TestRedis,
};

/// The Redis every test may use; each test works on its own queue names.
pub const SHARED_REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// How long a test waits for something that should happen in milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub const NOVEL_ID: &str = "0b9e8f0e-6b5c-4e6b-8d5e-3f6a2b1c0d9e";

/// A client of the shared Redis for one queue, connected.
pub async fn queue(name: &QueueName) -> RedisQueue {
    queue_at(SHARED_REDIS_URL, name).await
}

/// A client of the Redis at `url` for one queue, connected.
pub async fn queue_at(url: &str, name: &QueueName) -> RedisQueue {
    let queue = RedisQueue::connect(
        &RedisSettings {
            url: url.into(),
            command_timeout: Duration::from_secs(2),
        },
        name.clone(),
    )
    .expect("a valid Redis URL");
    queue
        .wait_connected(Duration::from_secs(10))
        .await
        .expect("Redis answers");
    queue
}

/// Relay settings for tests: no linger, short pauses.
pub fn relay_settings(batch_size: u32) -> RelaySettings {
    RelaySettings {
        batch_size,
        claimers: 2,
        poll_interval: Duration::from_millis(50),
        max_backoff: Duration::from_millis(100),
        linger: Duration::ZERO,
        marker_ttl: Duration::from_secs(600),
        call_timeout: Duration::from_secs(10),
    }
}

/// A relay on `pool` that the test drives step by step.
pub async fn relay(pool: &PgPool, queue: RedisQueue, batch_size: u32) -> Relay {
    relay_with(pool, queue, relay_settings(batch_size)).await
}

/// A relay on `pool` with `settings`.
pub async fn relay_with(pool: &PgPool, queue: RedisQueue, settings: RelaySettings) -> Relay {
    Relay::new(
        pool.clone(),
        queue,
        settings,
        Arc::new(Metrics::default()),
        Wake::new(),
    )
    .await
    .expect("the relay reads the database's identity")
}

/// One drain that claims rows. A failed drain's rows come back when its
/// transaction's rollback, which runs after the drop, has finished; until
/// then a claim skips them (SKIP LOCKED) and a drain finds nothing.
pub async fn drain_claiming(relay: &Relay) -> Result<Drained, RelayError> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match relay.drain_once().await {
            Ok(drained) if drained.claimed == 0 => {
                assert!(Instant::now() < deadline, "the outbox rows never came back");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            result => return result,
        }
    }
}

/// Drains until a replica confirms: a `WAIT` may time out before a
/// replica's acknowledgement arrives on a busy machine, and the retry
/// pushes nothing again but waits for the same writes.
pub async fn drain_until_confirmed(relay: &Relay) -> Drained {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match drain_claiming(relay).await {
            Ok(drained) => return drained,
            Err(error) => assert!(Instant::now() < deadline, "never confirmed: {error:?}"),
        }
    }
}

/// Drains `times` times where no replica confirms the pushes (a master
/// without one, under `REDIS_WAIT_REPLICAS=1`): each drain fails with
/// NotReplicated, and the `rows` outbox rows stay.
pub async fn assert_unreplicated_drains_keep_the_rows(
    pool: &PgPool,
    relay: &Relay,
    rows: i64,
    times: usize,
) {
    for _ in 0..times {
        let error = drain_claiming(relay).await.unwrap_err();
        assert!(
            matches!(
                error,
                RelayError::Queue(QueueError::NotReplicated {
                    acknowledged: 0,
                    required: 1
                })
            ),
            "{error:?}"
        );
        assert_eq!(counts(pool).await.2, rows, "the rows stay in the outbox");
    }
}

/// Creates jobs straight through the domain (no service needed); their ids.
pub async fn create_jobs(pool: &PgPool, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let new = convert::new_job(
            UserId::default(),
            create_request(),
            &convert::CreateRules::with_max_subtasks(10),
        )
        .expect("valid request");
        ids.push(
            jobs::create_job(pool, &new)
                .await
                .expect("create")
                .job
                .id
                .to_string(),
        );
    }
    ids
}

/// Creates `count` jobs one after the other, cycling through the lanes;
/// their ids per lane, in creation order.
pub async fn create_in_lanes(pool: &PgPool, count: usize) -> [Vec<String>; 3] {
    let mut lanes: [Vec<String>; 3] = Default::default();
    let priorities = [
        jobs::Priority::High,
        jobs::Priority::Normal,
        jobs::Priority::Low,
    ];
    for i in 0..count {
        let mut new = convert::new_job(
            UserId::default(),
            create_request(),
            &convert::CreateRules::with_max_subtasks(10),
        )
        .unwrap();
        new.priority = priorities[i % 3];
        let created = jobs::create_job(pool, &new).await.unwrap();
        lanes[i % 3].push(created.job.id.to_string());
    }
    lanes
}

/// A queue name no other test uses.
pub fn unique_queue() -> QueueName {
    QueueName::parse(&format!("test_jobs_{}", Uuid::new_v4().simple())).expect("valid queue name")
}

/// Settings for a service on free loopback ports. `overrides` replace the
/// environment variables of the same name.
pub fn settings(
    database: PgConnectOptions,
    redis_url: &str,
    queue: &QueueName,
    overrides: &[(&str, &str)],
) -> Settings {
    let mut vars: HashMap<String, String> = [
        ("DATABASE_URL", "postgres://placeholder/replaced"),
        ("REDIS_URL", redis_url),
        ("TRANSLATION_QUEUE", queue.as_str()),
        ("GRPC_ADDR", "127.0.0.1:0"),
        ("HTTP_ADDR", "127.0.0.1:0"),
        ("DATABASE_POOL_SIZE", "8"),
        ("RELAY_POLL_INTERVAL", "200ms"),
        ("RELAY_MAX_BACKOFF", "200ms"),
        ("REDIS_COMMAND_TIMEOUT", "2s"),
        ("SHUTDOWN_TIMEOUT", "5s"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for (k, v) in overrides {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    let mut settings =
        Settings::from_lookup(|name| vars.get(name).cloned()).expect("valid test settings");
    settings.database.connect = database;
    settings
}

/// Logs go through the test harness (shown for failing tests only).
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,fred=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A service running inside the test process.
pub struct TestApp {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// `MANAGEMENT_ADDR`, when the test set it.
    pub management_addr: Option<SocketAddr>,
    pub client: TranslationJobServiceClient<Channel>,
    pub queue: QueueName,
    redis_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestApp {
    /// Starts the service on the shared Redis with a fresh queue name.
    pub async fn spawn(database: PgConnectOptions) -> Self {
        Self::spawn_with(database, SHARED_REDIS_URL, unique_queue(), &[]).await
    }

    pub async fn spawn_with(
        database: PgConnectOptions,
        redis_url: &str,
        queue: QueueName,
        overrides: &[(&str, &str)],
    ) -> Self {
        init_logs();
        let app = App::build(settings(database, redis_url, &queue, overrides))
            .await
            .expect("service builds");
        let grpc_addr = app.grpc_addr();
        let http_addr = app.http_addr();
        let management_addr = app.management_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run(async {
                let _ = stopped.await;
            })
            .await
            .expect("service runs");
        });
        // Lazily: a TLS listener refuses this plaintext client, which its
        // tests show.
        let client = TranslationJobServiceClient::new(
            tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
                .expect("a valid address")
                .connect_lazy(),
        );
        Self {
            grpc_addr,
            http_addr,
            management_addr,
            client,
            queue,
            redis_url: redis_url.to_owned(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts the service on the shared Redis and waits until it is ready.
    pub async fn ready(database: PgConnectOptions) -> Self {
        let app = Self::spawn(database).await;
        app.wait_ready().await;
        app
    }

    /// Creates a job with the default request; panics on error.
    pub async fn create(&mut self) -> TranslationJob {
        self.client
            .create_translation_job(create_request())
            .await
            .expect("create succeeds")
            .into_inner()
    }

    /// Waits until the service reports SERVING (the database is migrated).
    /// Waits for `/readyz`: on `MANAGEMENT_ADDR` when set (the HTTP
    /// listener may speak TLS), else on the HTTP listener.
    pub async fn wait_ready(&self) {
        let url = format!(
            "http://{}/readyz",
            self.management_addr.unwrap_or(self.http_addr)
        );
        let deadline = Instant::now() + PATIENCE;
        loop {
            if http_get(&url)
                .await
                .is_some_and(|(status, _)| status == 200)
            {
                return;
            }
            assert!(Instant::now() < deadline, "service never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Shuts the service down, waits for it, and deletes the test's Redis
    /// keys (when its Redis is still up).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("service task ends cleanly");
        }
        let Ok(config) = Config::from_url(&self.redis_url) else {
            return;
        };
        let Ok(client) = Builder::from_config(config).build() else {
            return;
        };
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), client.init()).await {
            cleanup(&client, &self.queue).await;
            let _ = client.quit().await;
        }
    }
}

/// A request for a job with default settings.
pub fn create_request() -> CreateTranslationJobRequest {
    CreateTranslationJobRequest {
        novel_id: NOVEL_ID.into(),
        target_lang: "en".into(),
        ..Default::default()
    }
}

/// A connected Redis client for reading lists in tests.
pub async fn redis_client(url: &str) -> Client {
    let client = Builder::from_config(Config::from_url(url).expect("redis url"))
        .build()
        .expect("redis client");
    client.init().await.expect("redis connects");
    client
}

/// All messages on one lane, parsed.
pub async fn messages(redis: &Client, queue: &QueueName, lane: Lane) -> Vec<JobMessage> {
    let raw: Vec<String> = redis
        .lrange(queue.key(lane), 0, -1)
        .await
        .expect("LRANGE works");
    raw.iter()
        .map(|m| serde_json::from_str(m).expect("message is JSON"))
        .collect()
}

/// Waits until a lane holds at least `count` messages, then returns them all.
pub async fn wait_for_messages(
    redis: &Client,
    queue: &QueueName,
    lane: Lane,
    count: usize,
) -> Vec<JobMessage> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let found = messages(redis, queue, lane).await;
        if found.len() >= count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "expected {count} messages on {}, found {}",
            queue.key(lane),
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deletes every key a test made on the shared Redis: the plain list and
/// everything tagged with the queue's name (lanes, markers, state).
pub async fn cleanup(redis: &Client, queue: &QueueName) {
    let mut keys: Vec<String> = vec![queue.key(Lane::Normal)];
    let found: Vec<String> = redis
        .custom(fred::cmd!("KEYS"), vec![queue.tagged("*")])
        .await
        .unwrap_or_default();
    keys.extend(found);
    let _: Result<i64, _> = redis.del(keys).await;
}

/// Row counts of the three tables.
pub async fn counts(pool: &PgPool) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM translation_jobs), \
                (SELECT count(*) FROM translation_subtasks), \
                (SELECT count(*) FROM outbox)",
    )
    .fetch_one(pool)
    .await
    .expect("counts")
}

/// Waits until no other session of this database is inside a transaction:
/// the rollback of a transaction dropped on another task has run.
pub async fn wait_for_rollbacks(pool: &PgPool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
               AND xact_start IS NOT NULL",
        )
        .fetch_one(pool)
        .await
        .expect("pg_stat_activity");
        if open == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "a transaction stayed open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
