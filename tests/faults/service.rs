//! The service binary as a child process: started with its settings,
//! killed with SIGKILL at any moment, started again on the same ports, its
//! JSON log kept in a file the test can read.

use std::{
    fs::OpenOptions,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use translation_jobs::api::proto::translation_job_service_client::TranslationJobServiceClient;

use crate::common::{free_port, http::http_get};

/// Settings every fault test runs the service with; a test adds or
/// overrides some.
const BASE_ENV: &[(&str, &str)] = &[
    ("LOG_FORMAT", "json"),
    (
        "RUST_LOG",
        "info,sqlx=warn,fred=warn,h2=warn,tower=warn,hyper=warn",
    ),
    ("DATABASE_POOL_SIZE", "8"),
    ("DATABASE_STATEMENT_TIMEOUT", "2s"),
    ("DATABASE_ACQUIRE_TIMEOUT", "2s"),
    ("REDIS_COMMAND_TIMEOUT", "2s"),
    ("RELAY_POLL_INTERVAL", "200ms"),
    ("RELAY_MAX_BACKOFF", "200ms"),
    // The reaper's look for lost messages runs all through every test: it
    // must never take a message for lost while it is not.
    ("REAPER_INTERVAL", "1s"),
    ("SHUTDOWN_TIMEOUT", "5s"),
    // Backpressure stays on (creates sample the Redis lanes) but never
    // refuses: outages here build backlogs on purpose.
    ("QUEUE_MAX_BACKLOG", "10000000"),
];

/// How long a test waits for the service to become ready.
const READY_PATIENCE: Duration = Duration::from_secs(60);

/// One replica of the service.
pub struct Service {
    pub name: String,
    pub grpc_port: u16,
    pub http_port: u16,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// How often it was started.
    pub starts: u32,
}

impl Service {
    /// Starts a replica named `name` (its log is `<dir>/<name>.log`) with
    /// the base settings plus `env`. Does not wait for readiness.
    pub fn start(name: &str, dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut all: Vec<(String, String)> = BASE_ENV
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        for (key, value) in env {
            all.retain(|(k, _)| k != key);
            all.push(((*key).to_owned(), (*value).to_owned()));
        }
        let mut service = Self {
            name: name.to_owned(),
            grpc_port: free_port(),
            http_port: free_port(),
            env: all,
            log: dir.join(format!("{name}.log")),
            child: None,
            starts: 0,
        };
        service.spawn();
        service
    }

    /// Starts the binary again (after a kill), on the same ports.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_translation-jobs"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("GRPC_ADDR", format!("127.0.0.1:{}", self.grpc_port))
            .env("HTTP_ADDR", format!("127.0.0.1:{}", self.http_port))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("the service binary starts");
        self.child = Some(child);
        self.starts += 1;
    }

    /// SIGKILL: no shutdown, no flush, connections cut by the kernel.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    fn channel(&self) -> Channel {
        Endpoint::from_shared(self.grpc_url())
            .expect("valid URL")
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy()
    }

    /// A client that connects (and reconnects after a kill) by itself.
    pub fn client(&self) -> TranslationJobServiceClient<Channel> {
        TranslationJobServiceClient::new(self.channel())
    }

    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel())
    }

    /// The status of a health name, or None when the call failed.
    pub async fn health_status(&self, name: &str) -> Option<ServingStatus> {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: name.to_owned(),
        });
        request.set_timeout(Duration::from_secs(2));
        let answer = tokio::time::timeout(Duration::from_secs(3), self.health().check(request))
            .await
            .ok()?
            .ok()?;
        Some(answer.into_inner().status())
    }

    /// Waits until readiness is SERVING.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + READY_PATIENCE;
        while self.health_status("readiness").await != Some(ServingStatus::Serving) {
            assert!(
                Instant::now() < deadline,
                "{} never became ready; log:\n{}",
                self.name,
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A sample of `/metrics` (the value of the first series named `name`).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let url = format!("http://127.0.0.1:{}/metrics", self.http_port);
        let (status, body) = tokio::time::timeout(Duration::from_secs(5), http_get(&url))
            .await
            .ok()??;
        if status != 200 {
            return None;
        }
        body.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let series = series.split('{').next()?;
                (series == name).then(|| value.parse().ok()).flatten()
            })
    }

    /// Everything the service logged so far (every start).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Log lines at level WARN or ERROR that contain `text`.
    pub fn warnings_with(&self, text: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| {
                (line.contains("\"WARN\"") || line.contains("\"ERROR\"")) && line.contains(text)
            })
            .map(str::to_owned)
            .collect()
    }

    /// No panic of the process itself (a panicking loop restarts, but is a
    /// bug all the same).
    pub fn assert_no_panic(&self) {
        let panics: Vec<String> = self
            .log()
            .lines()
            .filter(|line| line.contains("panicked"))
            .map(str::to_owned)
            .collect();
        assert!(
            panics.is_empty(),
            "{} panicked:\n{}",
            self.name,
            panics.join("\n")
        );
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Samples one health name of a replica every 100 ms until stopped.
pub struct HealthMonitor {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(Instant, Option<ServingStatus>)>>,
}

impl HealthMonitor {
    pub fn start(service: &Service, name: &'static str) -> Self {
        use std::sync::{Arc, atomic::AtomicBool, atomic::Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let health = service.health();
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let mut client = health.clone();
                    let mut request = tonic::Request::new(HealthCheckRequest {
                        service: name.to_owned(),
                    });
                    request.set_timeout(Duration::from_secs(1));
                    let status =
                        tokio::time::timeout(Duration::from_secs(2), client.check(request))
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .map(|answer| answer.into_inner().status());
                    samples.push((Instant::now(), status));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                samples
            })
        };
        Self { stop, task }
    }

    pub async fn stop(self) -> Samples {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        Samples(self.task.await.expect("monitor task"))
    }
}

/// What a [`HealthMonitor`] saw.
pub struct Samples(pub Vec<(Instant, Option<ServingStatus>)>);

impl Samples {
    /// Whether `status` was seen between the two instants.
    pub fn saw_between(&self, status: ServingStatus, from: Instant, to: Instant) -> bool {
        self.0
            .iter()
            .any(|(at, seen)| *at >= from && *at <= to && *seen == Some(status))
    }
}
