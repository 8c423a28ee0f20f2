//! Builds the pools, servers and background tasks, and runs them until
//! shutdown. Owns the cancellation tokens and the `JoinSet` every task
//! belongs to.
//!
//! Here: the listeners, the servers and the two-stage shutdown. The
//! background tasks (migrations, the LISTEN connection, relay, scheduler,
//! reaper, retention, dead lane) start in `background`.

mod background;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, ServerTlsConfig, server::TcpIncoming};

pub use crate::db::MIGRATOR;
use background::Background;

use crate::{
    api::{
        self, ApiDeps, JobsApi,
        auth::Authenticator,
        http::HttpState,
        http_server,
        limits::Limits,
        observe::GrpcLayer,
        scrape::{self, Scrape},
        tls::{self, TlsError},
    },
    backlog::{self, Backlog},
    config::{AuthMode, ListenAddr, Settings},
    db,
    health::Health,
    jobs::GroupCommit,
    metrics::Metrics,
    proto::FILE_DESCRIPTOR_SET,
    queue::{QueueError, RedisQueue},
    supervise::supervise,
    wake::Wake,
    watch::WatchHub,
};

/// TCP keepalive on accepted gRPC connections, so dead peers are noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Beyond its own period, how long a loop may go without a heartbeat before
/// liveness fails: a few bounded calls plus slack.
const LIVENESS_SLACK: Duration = Duration::from_secs(60);

/// Errors that stop the service from starting.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: ListenAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid Redis settings")]
    Redis(#[from] QueueError),
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server failed")]
    Grpc(#[from] tonic::transport::Error),
    #[error("cannot serve TLS")]
    Tls(#[from] TlsError),
    #[error(
        "this database serves the queue {bound:?} but TRANSLATION_QUEUE is {configured:?}: one \
         database holds one queue's jobs, and a relay of another name would publish them where \
         the first deployment's workers never look. Use the database's name, give this \
         deployment a database of its own, or, to move the database to {configured:?} \
         deliberately (every replica of {bound:?} stopped, its lanes drained), run \
         `translation-jobs rebind-queue` with TRANSLATION_QUEUE={configured:?}"
    )]
    QueueMismatch { bound: String, configured: String },
}

/// A service ready to run: listeners bound, clients created (not yet
/// connected: neither PostgreSQL nor Redis needs to be up to start).
pub struct App {
    settings: Settings,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    /// `MANAGEMENT_ADDR`: health and metrics only, plain HTTP.
    management_listener: Option<TcpListener>,
    pool: PgPool,
    queue: RedisQueue,
    metrics: Arc<Metrics>,
    /// TLS of the gRPC listener, read and checked at build.
    tls: Option<ServerTlsConfig>,
    /// TLS of the HTTP listener: the same certificate and client-CA policy.
    https: Option<TlsAcceptor>,
    auth: Authenticator,
}

impl App {
    /// Binds the listeners (port 0 picks a free port; see
    /// [`grpc_addr`](Self::grpc_addr)) and creates the clients.
    pub async fn build(settings: Settings) -> Result<Self, AppError> {
        let tls = settings.tls.as_ref().map(tls::server_config).transpose()?;
        let https = settings.tls.as_ref().map(tls::https_acceptor).transpose()?;
        let auth = Authenticator::new(&settings.auth);
        let metrics = Arc::new(Metrics::default());
        metrics.auth_open(settings.auth_mode.is_open());
        match settings.auth_mode {
            AuthMode::Jwt => {}
            AuthMode::OpenAsked => tracing::warn!(
                "authentication is off (AUTH_MODE=none): anyone who reaches the listeners can \
                 read, create, cancel and retry any job; set AUTH_JWT_SECRET or \
                 AUTH_JWT_PUBLIC_KEY (and unset AUTH_MODE) to require tokens"
            ),
            AuthMode::OpenLoopback => tracing::warn!(
                "authentication is off: no key is set and every listener is on loopback, so \
                 only this machine can call; to listen beyond it, set AUTH_JWT_SECRET or \
                 AUTH_JWT_PUBLIC_KEY, or AUTH_MODE=none to run open deliberately"
            ),
        }
        let grpc_listener = bind(&settings.grpc_addr).await?;
        let http_listener = bind(&settings.http_addr).await?;
        let management_listener = match &settings.management_addr {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let pool = db::pool(&settings.database);
        let queue = RedisQueue::connect(&settings.redis, settings.queue.clone())?
            .with_replica_wait(settings.redis_wait);
        log_targets(&settings);
        Ok(Self {
            settings,
            grpc_listener,
            http_listener,
            management_listener,
            pool,
            queue,
            metrics,
            tls,
            https,
            auth,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener.local_addr().unwrap_or(SocketAddr::from((
            [0, 0, 0, 0],
            self.settings.grpc_addr.port(),
        )))
    }

    /// Where `MANAGEMENT_ADDR` listens, when set.
    pub fn management_addr(&self) -> Option<SocketAddr> {
        self.management_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener.local_addr().unwrap_or(SocketAddr::from((
            [0, 0, 0, 0],
            self.settings.http_addr.port(),
        )))
    }

    /// Serves until `shutdown` resolves, then drains: readiness goes
    /// NOT_SERVING, streams end, in-flight calls finish, background tasks
    /// stop; anything still running after the shutdown timeout is aborted.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AppError> {
        // Two stages: the servers (and every stream: watch, health watch)
        // stop first, so calls in flight finish while the relay still runs;
        // then the background tasks.
        let serving = CancellationToken::new();
        let token = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let relay_wake = Wake::new();
        let schedule_wake = Wake::new();
        let health = Health::new();

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        // grpcurl 1.8 speaks only v1alpha.
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let hub = WatchHub::new(self.pool.clone());
        let (creates, collector) = GroupCommit::new(self.pool.clone(), self.settings.create_group);
        if let Some(collector) = collector {
            let beat = health.liveness().register(
                "group commit",
                self.settings.database.call_timeout() * 4 + LIVENESS_SLACK,
            );
            tasks.spawn(supervise(token.clone(), beat.clone(), {
                let token = token.clone();
                move || collector.again().run(token.clone(), beat.clone())
            }));
        }
        let backlog = Arc::new(Backlog::new(
            self.pool.clone(),
            self.queue.clone(),
            self.settings.queue_max_backlog,
        ));
        if backlog.limit() > 0 {
            // Creates read its readings and never wait for PostgreSQL or Redis.
            let beat = health
                .liveness()
                .register("backpressure", backlog::MAX_QUIET + LIVENESS_SLACK);
            tasks.spawn(supervise(token.clone(), beat.clone(), {
                let (backlog, token) = (backlog.clone(), token.clone());
                move || backlog.clone().run(token.clone(), beat.clone())
            }));
        }
        let jobs_api = JobsApi::new(ApiDeps {
            pool: self.pool.clone(),
            queue: self.queue.clone(),
            health: health.clone(),
            wake: relay_wake.clone(),
            schedule_wake: schedule_wake.clone(),
            metrics: self.metrics.clone(),
            backlog: backlog.clone(),
            creates,
            hub: hub.clone(),
            shutdown: serving.clone(),
            create_rules: api::convert::CreateRules {
                max_subtasks: self.settings.max_subtasks_per_job,
                default_max_attempts: self.settings.retries.default_max_attempts,
                max_schedule_ahead: self.settings.retries.max_schedule_ahead,
            },
            max_batch_size: self.settings.max_batch_size,
            call_timeout: self.settings.database.call_timeout(),
            auth: self.auth.clone(),
            limits: Limits::new(self.settings.limits),
        });

        let grpc_addr = self.grpc_addr();
        let http_addr = self.http_addr();
        let mut server = api::transport::limited(Server::builder());
        if let Some(tls) = self.tls.clone() {
            server = server.tls_config(tls)?;
        }
        let grpc = server
            // Unary calls only: a stream's response starts at once.
            .timeout(self.settings.limits.rpc_timeout)
            .layer(GrpcLayer::new(self.metrics.clone()))
            .add_service(health.service(serving.clone()))
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(api::job_service(jobs_api.clone()))
            .serve_with_incoming_shutdown(
                // Without TCP_NODELAY, small responses wait for delayed ACKs
                // (about 40 ms a call).
                TcpIncoming::from(self.grpc_listener)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(TCP_KEEPALIVE)),
                serving.clone().cancelled_owned(),
            );
        let mut grpc_task = tokio::spawn(grpc);
        tracing::info!(addr = %grpc_addr, tls = self.tls.is_some(), "gRPC listening");

        let state = HttpState {
            scrape: Arc::new(Scrape::new(
                db::side_pool(
                    &self.settings.database,
                    "translation-jobs-metrics",
                    scrape::SCRAPE_TIMEOUT,
                ),
                self.queue.clone(),
            )),
            health: health.clone(),
            metrics: self.metrics.clone(),
            hub: hub.clone(),
        };
        if let Some(listener) = self.management_listener {
            let addr = listener.local_addr().ok();
            tasks.spawn(http_server::serve(
                listener,
                api::http::management_router(state.clone()),
                None,
                serving.clone(),
            ));
            if let Some(addr) = addr {
                tracing::info!(%addr, "management listening (/healthz, /readyz, /metrics)");
            }
        }
        let router = api::http::router(state, jobs_api);
        tasks.spawn(http_server::serve(
            self.http_listener,
            router,
            self.https.clone(),
            serving.clone(),
        ));
        tracing::info!(addr = %http_addr, tls = self.https.is_some(), "HTTP listening");

        let (queue_mismatch, mut wrong_queue) = tokio::sync::oneshot::channel();
        tasks.spawn(background::run(Background {
            queue_mismatch,
            pool: self.pool.clone(),
            queue: self.queue.clone(),
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            health: health.clone(),
            relay_wake,
            schedule_wake,
            hub,
            token: token.clone(),
        }));

        let mut result = Ok(());
        tokio::select! {
            () = shutdown => tracing::info!("shutdown requested"),
            bound = &mut wrong_queue => {
                if let Ok(bound) = bound {
                    result = Err(AppError::QueueMismatch {
                        bound,
                        configured: self.settings.queue.as_str().to_owned(),
                    });
                }
            }
            served = &mut grpc_task => {
                result = flatten(served);
                tracing::error!("gRPC server stopped unexpectedly");
            }
        }

        health.shutting_down();
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

/// Binds to the first address the host resolves to that accepts.
async fn bind(addr: &ListenAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind((addr.host(), addr.port()))
        .await
        .map_err(|source| AppError::Bind {
            addr: addr.clone(),
            source,
        })
}

/// Where the service connects, without credentials.
fn log_targets(settings: &Settings) {
    let database = &settings.database.connect;
    tracing::info!(
        host = database.get_host(),
        port = database.get_port(),
        database = database.get_database().unwrap_or(""),
        "PostgreSQL target"
    );
    tracing::info!(
        url = %crate::redact::redact_url(&settings.redis.url),
        queue = %settings.queue,
        "Redis target"
    );
}
