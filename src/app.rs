//! Builds the pools, servers and background tasks, and runs them until
//! shutdown. Owns the one cancellation token and the `JoinSet` every task
//! belongs to.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use sqlx::{
    PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, server::TcpIncoming};

use crate::{
    api::{
        self, ApiDeps, JobsApi,
        http::HttpState,
        proto::{FILE_DESCRIPTOR_SET, translation_job_service_server::TranslationJobServiceServer},
    },
    backlog::Backlog,
    config::{IDLE_IN_TRANSACTION_TIMEOUT, Settings},
    health::Health,
    metrics::Metrics,
    outbox::{Relay, RelayWake},
    queue::{QueueError, RedisQueue},
    reaper::Reaper,
    telemetry::error_chain,
    watch::{Listener, WatchHub},
};

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// First and longest pause between attempts to reach PostgreSQL at start-up.
const CONNECT_RETRY_MIN: Duration = Duration::from_millis(200);
const CONNECT_RETRY_MAX: Duration = Duration::from_secs(5);
/// TCP keepalive on accepted gRPC connections, so dead peers are noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Errors that stop the service from starting.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid Redis settings")]
    Redis(#[from] QueueError),
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server failed")]
    Grpc(#[from] tonic::transport::Error),
}

/// A service ready to run: listeners bound, clients created (not yet
/// connected: neither PostgreSQL nor Redis needs to be up to start).
pub struct App {
    settings: Settings,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    pool: PgPool,
    queue: RedisQueue,
    metrics: Arc<Metrics>,
}

impl App {
    /// Binds the listeners (port 0 picks a free port; see
    /// [`grpc_addr`](Self::grpc_addr)) and creates the clients.
    pub async fn build(settings: Settings) -> Result<Self, AppError> {
        let grpc_listener = bind(settings.grpc_addr).await?;
        let http_listener = bind(settings.http_addr).await?;
        let pool = pool(&settings);
        let queue = RedisQueue::connect(&settings.redis, settings.queue.clone())?;
        log_targets(&settings);
        Ok(Self {
            settings,
            grpc_listener,
            http_listener,
            pool,
            queue,
            metrics: Arc::new(Metrics::default()),
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener
            .local_addr()
            .unwrap_or(self.settings.grpc_addr)
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener
            .local_addr()
            .unwrap_or(self.settings.http_addr)
    }

    /// Serves until `shutdown` resolves, then drains: health goes
    /// NOT_SERVING, in-flight calls finish, background tasks stop; anything
    /// still running after the shutdown timeout is aborted.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AppError> {
        // Two stages: the servers (and watch streams) stop first, so calls in
        // flight finish while the relay still runs; then the background tasks.
        let serving = CancellationToken::new();
        let token = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let wake = RelayWake::new();

        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health = Health::new(reporter);
        health.set_ready(false).await;

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        // grpcurl 1.8 speaks only v1alpha.
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let hub = WatchHub::new();
        let jobs_api = JobsApi::new(ApiDeps {
            pool: self.pool.clone(),
            queue: self.queue.clone(),
            health: health.clone(),
            wake: wake.clone(),
            metrics: self.metrics.clone(),
            backlog: Arc::new(Backlog::new(
                self.pool.clone(),
                self.queue.clone(),
                self.settings.queue_max_backlog,
            )),
            hub: hub.clone(),
            shutdown: serving.clone(),
            max_subtasks_per_job: self.settings.max_subtasks_per_job,
            max_batch_size: self.settings.max_batch_size,
        });

        let grpc_addr = self.grpc_addr();
        let http_addr = self.http_addr();
        let grpc_token = serving.clone();
        let grpc = Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(TranslationJobServiceServer::new(jobs_api.clone()))
            .serve_with_incoming_shutdown(
                // Without TCP_NODELAY, small responses wait for delayed ACKs
                // (about 40 ms a call).
                TcpIncoming::from(self.grpc_listener)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(TCP_KEEPALIVE)),
                grpc_token.cancelled_owned(),
            );
        let mut grpc_task = tokio::spawn(grpc);
        tracing::info!(addr = %grpc_addr, "gRPC listening");

        let http_token = serving.clone();
        let router = api::http::router(
            HttpState {
                pool: self.pool.clone(),
                queue: self.queue.clone(),
                health: health.clone(),
                metrics: self.metrics.clone(),
            },
            jobs_api,
        );
        tasks.spawn(async move {
            let served = axum::serve(self.http_listener, router)
                .with_graceful_shutdown(http_token.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::error!(error = %error, "HTTP server failed");
            }
        });
        tracing::info!(addr = %http_addr, "HTTP listening");

        tasks.spawn(start_background(Background {
            pool: self.pool.clone(),
            queue: self.queue.clone(),
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            health: health.clone(),
            wake,
            hub,
            token: token.clone(),
        }));

        let mut result = Ok(());
        tokio::select! {
            () = shutdown => tracing::info!("shutdown requested"),
            served = &mut grpc_task => {
                result = flatten(served);
                tracing::error!("gRPC server stopped unexpectedly");
            }
        }

        health.set_ready(false).await;
        serving.cancel();
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_timeout;
        if !grpc_task.is_finished() {
            match tokio::time::timeout_at(deadline, &mut grpc_task).await {
                Ok(served) => result = result.and(flatten(served)),
                Err(_) => {
                    tracing::warn!("in-flight calls did not finish in time; closing them");
                    grpc_task.abort();
                }
            }
        }
        // Jobs committed by the last calls are in the outbox: the relay of
        // another replica, or of the next start, publishes what this one
        // does not get to.
        token.cancel();
        drain(&mut tasks, deadline).await;
        self.queue.quit().await;
        self.pool.close().await;
        tracing::info!("stopped");
        result
    }
}

fn flatten(
    joined: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), AppError> {
    match joined {
        Ok(served) => served.map_err(AppError::from),
        Err(error) => {
            tracing::error!(error = %error, "gRPC server task failed");
            Ok(())
        }
    }
}

/// Waits for the tasks until `deadline`, then aborts and names what is left.
async fn drain(tasks: &mut JoinSet<()>, deadline: tokio::time::Instant) {
    while !tasks.is_empty() {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Err(error))) if error.is_panic() => {
                tracing::error!(error = %error, "a background task panicked");
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    left = tasks.len(),
                    "background tasks did not stop in time; aborting them"
                );
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })
}

/// A lazy pool: creating it needs no server, connections open on first use.
///
/// Every connection runs with `enable_seqscan = off`. A connection caches
/// its plans, including PostgreSQL's own foreign-key check on
/// `translation_subtasks.job_id`; planned while `translation_jobs` looked
/// empty, that check is a sequential scan, and kept as the table grows it
/// made each create scan the whole table (measured: 521 creates/s instead
/// of thousands, 10 sequential scans per job). Every query of the service
/// has an index to use, so the setting only removes that trap; where no
/// index fits, PostgreSQL still scans.
fn pool(settings: &Settings) -> PgPool {
    let idle_timeout = format!("{}ms", IDLE_IN_TRANSACTION_TIMEOUT.as_millis());
    let options: PgConnectOptions = settings
        .database
        .clone()
        .application_name("translation-jobs")
        .options([
            ("idle_in_transaction_session_timeout", idle_timeout.as_str()),
            ("enable_seqscan", "off"),
        ]);
    PgPoolOptions::new()
        .max_connections(settings.database_pool_size)
        .acquire_timeout(settings.database_acquire_timeout)
        .connect_lazy_with(options)
}

/// Where the service connects, without credentials.
fn log_targets(settings: &Settings) {
    tracing::info!(
        host = settings.database.get_host(),
        port = settings.database.get_port(),
        database = settings.database.get_database().unwrap_or(""),
        "PostgreSQL target"
    );
    tracing::info!(
        url = %crate::telemetry::redact_url(&settings.redis.url),
        queue = %settings.queue,
        "Redis target"
    );
}

/// What the background tasks share.
struct Background {
    pool: PgPool,
    queue: RedisQueue,
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Health,
    wake: RelayWake,
    hub: WatchHub,
    token: CancellationToken,
}

/// Connects to PostgreSQL (retrying with backoff until it answers or
/// shutdown), runs the migrations, reports SERVING, then runs the LISTEN
/// connection, the relay and the reaper until the token is cancelled.
async fn start_background(background: Background) {
    let Background {
        pool,
        queue,
        settings,
        metrics,
        health,
        wake,
        hub,
        token,
    } = background;
    let mut delay = CONNECT_RETRY_MIN;
    loop {
        let prepared = tokio::select! {
            () = token.cancelled() => return,
            prepared = prepare_database(&pool) => prepared,
        };
        match prepared {
            Ok(()) => break,
            Err(error) => {
                if matches!(error, sqlx::Error::Migrate(_)) {
                    // Not an outage: the schema does not match this build.
                    // Retrying still means fixing the database needs no restart.
                    tracing::error!(error = %error_chain(&error), retry_in = ?delay, "cannot migrate the database");
                } else {
                    tracing::warn!(error = %error_chain(&error), retry_in = ?delay, "PostgreSQL not ready");
                }
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(CONNECT_RETRY_MAX);
            }
        }
    }
    health.set_ready(true).await;

    let listener = Listener::new(pool.clone(), hub, wake.clone()).run(token.clone());
    let reaper = async {
        if settings.reaper_enabled {
            Reaper::new(pool.clone(), settings.reaper, wake.clone())
                .run(token.clone())
                .await;
        } else {
            tracing::info!("reaper disabled (REAPER_ENABLED=false)");
        }
    };
    let relay = async {
        if !settings.relay_enabled {
            tracing::info!("relay disabled (RELAY_ENABLED=false)");
            return;
        }
        let relay = loop {
            match Relay::new(
                pool.clone(),
                queue.clone(),
                settings.relay.clone(),
                metrics.clone(),
            )
            .await
            {
                Ok(relay) => break relay,
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "cannot start the relay; retrying");
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(CONNECT_RETRY_MAX) => {}
                    }
                }
            }
        };
        relay.run(token.clone(), wake.clone()).await;
    };
    tokio::join!(listener, reaper, relay);
}

/// Migrations under sqlx's advisory lock, then fresh planner statistics.
async fn prepare_database(pool: &PgPool) -> Result<(), sqlx::Error> {
    MIGRATOR.run(pool).await.map_err(|error| match error {
        sqlx::migrate::MigrateError::Execute(error) => error,
        other => sqlx::Error::Migrate(Box::new(other)),
    })?;
    // Current statistics for the plans made from here on.
    sqlx::query("ANALYZE translation_jobs, translation_subtasks, outbox")
        .execute(pool)
        .await?;
    tracing::info!("database ready");
    Ok(())
}
