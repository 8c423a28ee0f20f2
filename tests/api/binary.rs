//! The real binary in a process of its own, for the tests that need one (a
//! signal, a kill): started on free ports, killed when dropped, its output
//! kept in a file that a failure quotes.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use sqlx::postgres::PgConnectOptions;
use uuid::Uuid;

use crate::support::{PATIENCE, free_port, http_get};

/// Starts on fresh ports this many times when another process took a port
/// between `free_port` and the binary's bind.
const STARTS: usize = 5;

/// One process of the binary, killed when dropped.
pub struct Binary {
    child: Child,
    pub grpc_port: u16,
    pub http_port: u16,
    /// Its stdout and stderr.
    log: PathBuf,
}

/// How waiting for readiness ended.
enum Start {
    Ready,
    Exited(ExitStatus),
    TimedOut,
}

impl Binary {
    /// Starts the binary with `env` (besides `GRPC_ADDR`, `HTTP_ADDR` and
    /// `LOG_FORMAT`, set here) and without the variables in `unset`, and
    /// waits until `/readyz` answers 200. Panics with the binary's output
    /// when it exits or stays unready.
    pub async fn start_ready(env: &[(&str, String)], unset: &[&str]) -> Self {
        for start in 1..=STARTS {
            let mut binary = Self::spawn(env, unset);
            let outcome = binary.wait_ready().await;
            let output = binary.output();
            match outcome {
                Start::Ready => return binary,
                Start::Exited(_) if start < STARTS && output.contains("Address already in use") => {
                    continue;
                }
                Start::Exited(status) => {
                    panic!(
                        "the binary exited with {status} before it was ready; its output:\n{output}"
                    )
                }
                Start::TimedOut => {
                    panic!("the binary was not ready within {PATIENCE:?}; its output:\n{output}")
                }
            }
        }
        unreachable!("the last start returns or panics")
    }

    fn spawn(env: &[(&str, String)], unset: &[&str]) -> Self {
        let (grpc_port, http_port) = (free_port(), free_port());
        let log = std::env::temp_dir().join(format!(
            "translation-jobs-test-{}.log",
            Uuid::new_v4().simple()
        ));
        let stdout = File::create(&log).expect("a log file");
        let stderr = stdout.try_clone().expect("a second handle on the log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_translation-jobs"));
        for name in unset {
            command.env_remove(name);
        }
        let child = command
            .envs(env.iter().map(|(name, value)| (name, value)))
            .env("GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
            .env("HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("the binary starts");
        Self {
            child,
            grpc_port,
            http_port,
            log,
        }
    }

    async fn wait_ready(&mut self) -> Start {
        let url = format!("http://127.0.0.1:{}/readyz", self.http_port);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if http_get(&url)
                .await
                .is_some_and(|(status, _)| status == 200)
            {
                return Start::Ready;
            }
            if let Some(status) = self.child.try_wait().expect("the child's status") {
                return Start::Exited(status);
            }
            if Instant::now() > deadline {
                return Start::TimedOut;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the binary wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (the shell's own kill: no procps needed on a bare machine),
    /// then waits up to `limit` for the exit and returns its status. Panics
    /// with the binary's output when it is still running then.
    pub async fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let sent = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .status()
            .expect("sh runs");
        assert!(sent.success(), "kill -TERM failed");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("the child's status") {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "still running {limit:?} after SIGTERM; its output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no shutdown, no last commit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The `DATABASE_URL` of a test's database.
pub fn database_url(options: &PgConnectOptions) -> String {
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    )
}
