//! A PostgreSQL server of the test's own, from the Debian packages'
//! binaries: a fresh cluster in a temporary directory on a free port, that
//! the test can stop and start (fast or immediate shutdown) and that is
//! stopped when dropped, also when the test panics.

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use sqlx::postgres::PgConnectOptions;

use super::free_port;

/// How the server is shut down (`pg_ctl stop -m ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Sessions are ended, in-flight transactions roll back, a checkpoint
    /// is written.
    Fast,
    /// Every process exits at once, as in a crash: the next start recovers
    /// from the WAL, and commits not yet written to it (the relay commits
    /// asynchronously) are gone.
    Immediate,
}

impl Shutdown {
    fn as_str(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Immediate => "immediate",
        }
    }
}

/// A PostgreSQL cluster of the test's own, running as long as it is held.
pub struct TestPostgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// `initdb` and the server refuse to run as root: as root, every
    /// command runs as the `postgres` user that the Debian package creates.
    as_postgres: bool,
    running: bool,
}

impl TestPostgres {
    /// Creates a cluster (trust authentication, user `postgres`) and starts
    /// it. `settings` go into `postgresql.conf` (`("autovacuum", "off")`).
    pub fn start_with(settings: &[(&str, &str)]) -> Self {
        let bin = binaries();
        let as_postgres = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("test-postgres-")
            .tempdir()
            .expect("temp dir");
        if as_postgres {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(dir.path()));
        }
        let mut server = Self {
            port: free_port(),
            dir,
            bin,
            as_postgres,
            running: false,
        };
        let data = server.data();
        server.pg("initdb", |c| {
            c.arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
                .args(["--no-sync", "--no-instructions"]);
        });
        let mut conf = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             max_connections = 200\n\
             # The test stops the server on purpose: the kernel keeps what was\n\
             # written, so an immediate shutdown still tests crash recovery.\n\
             fsync = off\n",
            server.port,
            server.dir.path().display()
        );
        for (name, value) in settings {
            conf.push_str(&format!("{name} = '{value}'\n"));
        }
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).expect("postgresql.conf");
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).expect("write postgresql.conf");
        server.start();
        server
    }

    pub fn start_default() -> Self {
        Self::start_with(&[])
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log (start-up, shutdown, recovery).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Connection options for `database` as user `postgres`.
    pub fn options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username("postgres")
            .database(database)
    }

    /// A URL for `database` (the service's `DATABASE_URL`).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the stopped server and waits until it accepts connections.
    pub fn start(&mut self) {
        assert!(!self.running, "already running");
        let (data, log) = (self.data(), self.dir.path().join("server.log"));
        self.pg("pg_ctl", |c| {
            c.arg("start")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60"]);
        });
        self.running = true;
    }

    /// Stops the server and waits until it is gone.
    pub fn stop(&mut self, mode: Shutdown) {
        assert!(self.running, "not running");
        let data = self.data();
        self.pg("pg_ctl", |c| {
            c.arg("stop")
                .arg("-D")
                .arg(&data)
                .args(["-m", mode.as_str(), "-w", "-t", "60"]);
        });
        self.running = false;
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Runs one of the server's programs, as `postgres` when we are root.
    fn pg(&self, program: &str, args: impl FnOnce(&mut Command)) -> Output {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        args(&mut command);
        run(command.current_dir(self.dir.path()))
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if self.running {
            let data = self.data();
            let path = self.bin.join("pg_ctl");
            let mut command = if self.as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&path);
                c
            } else {
                Command::new(&path)
            };
            // No panic in a drop: a failure here leaves a server behind,
            // which the next run does not trip over (its own port and dir).
            let _ = command
                .arg("stop")
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "-t", "30"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn run(command: &mut Command) -> Output {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The directory of `initdb` and `pg_ctl`: `PG_BINDIR` if set, else the
/// newest `/usr/lib/postgresql/<version>/bin` (Debian's layout, which does
/// not put them on the PATH), else whatever `initdb` the PATH finds.
fn binaries() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| dir.join("initdb").exists());
    found.unwrap_or_else(|| {
        panic!(
            "no initdb: install PostgreSQL's server package (scripts/services.sh does) or set PG_BINDIR"
        )
    })
}

/// Whether this process runs as root (uid 0), read from /proc.
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
