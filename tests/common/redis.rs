//! A redis-server of the test's own.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::free_port;

/// How long a server may take to come up.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// A redis-server of the test's own, on a free port, with an append-only
/// file fsynced on every write so that stopping and starting it keeps the
/// lists (a message Redis acknowledged survives a SIGKILL). Stopped when
/// dropped.
pub struct TestRedis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Extra `redis-server` arguments (`--maxmemory-policy allkeys-lru`).
    args: Vec<String>,
}

impl TestRedis {
    /// A server not started yet: its URL is known, nothing listens there.
    pub fn stopped() -> Self {
        Self {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
            args: Vec::new(),
        }
    }

    /// A server started with extra `redis-server` arguments.
    pub async fn started_with(args: &[&str]) -> Self {
        let mut redis = Self::stopped();
        redis.args = args.iter().map(|a| (*a).to_owned()).collect();
        redis.start().await;
        redis
    }

    pub async fn started() -> Self {
        let mut redis = Self::stopped();
        redis.start().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (is it installed?)");
        self.child = Some(child);
        let deadline = Instant::now() + START_PATIENCE;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
