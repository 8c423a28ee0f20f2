//! Redis topologies a test starts on loopback and stops when dropped: a
//! Redis Cluster of its own, and a master with a replica watched by a real
//! sentinel. Every server runs in a temporary directory of its own.

use std::{
    collections::HashMap,
    net::TcpListener as StdListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::support::{PATIENCE, free_port};

/// Longest a cluster or sentinel takes to settle on this machine, with margin.
const SETTLE: Duration = Duration::from_secs(60);

/// One redis-server (or sentinel) process, killed when dropped.
pub struct RedisProcess {
    pub port: u16,
    child: Child,
}

impl RedisProcess {
    /// Starts `redis-server` with `args` (a config file first, if any) in
    /// `dir` and waits until it accepts connections.
    pub async fn start(port: u16, dir: &Path, args: &[String]) -> Self {
        std::fs::create_dir_all(dir).expect("server directory");
        let child = Command::new("redis-server")
            .args(args)
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (is it installed?)");
        let server = Self { port, child };
        let deadline = Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not come up"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server
    }

    /// Stops the process (SIGSTOP): its connections stay open and silent.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        // The shell's own kill: no procps needed on a bare machine.
        let status = Command::new("sh")
            .args(["-c", &format!("kill -{name} {}", self.child.id())])
            .status()
            .expect("sh runs");
        assert!(status.success(), "kill -{name}");
    }

    /// Kills the process at once, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `redis-cli` against a loopback port; its standard output. Panics
/// when it fails.
pub fn redis_cli(port: u16, password: Option<&str>, args: &[&str]) -> String {
    try_redis_cli(port, password, args)
        .unwrap_or_else(|error| panic!("redis-cli {args:?} failed: {error}"))
}

/// `redis-cli`, for polling: a server that closes the connection (a
/// sentinel reconfiguring it kills its clients) is an answer too.
pub fn try_redis_cli(port: u16, password: Option<&str>, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new("redis-cli");
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(password) = password {
        command.env("REDISCLI_AUTH", password);
    }
    let output = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    // redis-cli reports some failures on stdout with a zero exit status.
    if !output.status.success() || stdout.starts_with("Error:") {
        return Err(format!(
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(stdout)
}

/// Waits until `check` holds, polling; panics with `what` after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the master on `master_port` itself counts a replica as
/// online and holding everything written so far: what `WAIT` counts. The
/// replica's own `master_link_status:up` comes first, and a `WAIT` with a
/// short timeout sent between the two can find no replica.
pub async fn replica_acknowledged(master_port: u16, password: Option<&str>) {
    eventually("the master to count a replica in sync", PATIENCE, || {
        let info =
            try_redis_cli(master_port, password, &["info", "replication"]).unwrap_or_default();
        let field = |line: &str, name: &str| -> Option<u64> {
            line.split([',', ':'])
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        };
        let written = info.lines().find_map(|line| {
            line.strip_prefix("master_repl_offset:")?
                .trim()
                .parse()
                .ok()
        });
        info.lines()
            .filter(|line| line.starts_with("slave") && line.contains("state=online"))
            .filter_map(|line| field(line, "offset"))
            .any(|acknowledged| written.is_some_and(|written: u64| acknowledged >= written))
    })
    .await;
}

/// A free port whose cluster bus port (+10000) is valid and free too.
pub fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        let Some(bus) = port.checked_add(10_000) else {
            continue;
        };
        if StdListener::bind(("127.0.0.1", bus)).is_ok() {
            return port;
        }
    }
}

/// A Redis Cluster of masters without replicas (`--cluster-replicas 0`),
/// plus replicas a test adds.
pub struct RedisCluster {
    // Fields drop in order: the servers stop before their directory goes.
    pub masters: Vec<RedisProcess>,
    pub replicas: Vec<RedisProcess>,
    dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts `masters` cluster-enabled servers, joins them with
    /// `redis-cli --cluster create` and waits for `cluster_state:ok`.
    pub async fn start(masters: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes = Vec::with_capacity(masters);
        for _ in 0..masters {
            nodes.push(Self::node(dir.path(), free_cluster_port()).await);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        redis_cli(nodes[0].port, None, &args);
        let cluster = Self {
            dir,
            masters: nodes,
            replicas: Vec::new(),
        };
        cluster.wait_ok().await;
        cluster
    }

    async fn node(dir: &Path, port: u16) -> RedisProcess {
        let args: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        RedisProcess::start(port, &dir.join(port.to_string()), &args).await
    }

    /// Waits until every node reports `cluster_state:ok` and knows every
    /// other node.
    pub async fn wait_ok(&self) {
        let ports = self.ports();
        let count = ports.len();
        eventually("cluster_state:ok on every node", SETTLE, || {
            ports.iter().all(|port| {
                let info = try_redis_cli(*port, None, &["cluster", "info"]).unwrap_or_default();
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{count}"))
            })
        })
        .await;
    }

    fn ports(&self) -> Vec<u16> {
        self.masters
            .iter()
            .chain(&self.replicas)
            .map(|node| node.port)
            .collect()
    }

    /// `redis-cluster://` with the first master as host and the others as
    /// `node=` parameters.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.masters[0].port);
        for (i, node) in self.masters.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", node.port));
        }
        url
    }

    /// The port of the master serving `slot`.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        let nodes = redis_cli(self.masters[0].port, None, &["cluster", "nodes"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (low, high) = range.split_once('-').unwrap_or((range, range));
                matches!((low.parse::<u16>(), high.parse::<u16>()), (Ok(l), Ok(h)) if l <= slot && slot <= h)
            });
            if serves {
                let address = fields[1].split('@').next().unwrap_or_default();
                return address
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("node address has a port");
            }
        }
        panic!("no master serves slot {slot}");
    }

    /// Adds a replica of the master on `master_port` and waits until it
    /// is in sync.
    pub async fn add_replica(&mut self, master_port: u16) -> u16 {
        let node = Self::node(self.dir.path(), free_cluster_port()).await;
        let master_id = redis_cli(master_port, None, &["cluster", "myid"])
            .trim()
            .to_owned();
        redis_cli(
            master_port,
            None,
            &[
                "--cluster",
                "add-node",
                &format!("127.0.0.1:{}", node.port),
                &format!("127.0.0.1:{master_port}"),
                "--cluster-slave",
                "--cluster-master-id",
                &master_id,
            ],
        );
        let port = node.port;
        self.replicas.push(node);
        eventually("the new replica in sync", SETTLE, || {
            let info = try_redis_cli(port, None, &["info", "replication"]).unwrap_or_default();
            info.contains("master_link_status:up") && !info.contains("master_sync_in_progress:1")
        })
        .await;
        replica_acknowledged(master_port, None).await;
        self.wait_ok().await;
        port
    }

    /// `SCRIPT FLUSH` on every node: the next EVALSHA anywhere meets NOSCRIPT.
    pub fn flush_scripts(&self) {
        for port in self.ports() {
            redis_cli(port, None, &["script", "flush"]);
        }
    }
}

/// The name the sentinel monitors.
pub const SENTINEL_SERVICE: &str = "jobs-primary";

/// A master and a replica, both with a password, watched by one sentinel
/// with a password of its own.
pub struct SentinelSet {
    /// The two servers, stopped when the set is dropped.
    _servers: Vec<RedisProcess>,
    pub sentinel: RedisProcess,
    pub redis_password: String,
    pub sentinel_password: String,
    // Last: the servers stop before their directory goes.
    _dir: tempfile::TempDir,
}

impl SentinelSet {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let redis_password = format!("r-{}", uuid::Uuid::new_v4().simple());
        let sentinel_password = format!("s-{}", uuid::Uuid::new_v4().simple());
        let server_args = |extra: &[String]| -> Vec<String> {
            let mut args: Vec<String> = [
                "--requirepass",
                &redis_password,
                "--masterauth",
                &redis_password,
                "--save",
                "",
                "--appendonly",
                "no",
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
            ]
            .iter()
            .map(|a| (*a).to_owned())
            .collect();
            args.extend_from_slice(extra);
            args
        };
        let master_port = free_port();
        let master =
            RedisProcess::start(master_port, &dir.path().join("master"), &server_args(&[])).await;
        let replica_port = free_port();
        let replica = RedisProcess::start(
            replica_port,
            &dir.path().join("replica"),
            &server_args(&[
                "--replicaof".into(),
                "127.0.0.1".into(),
                master_port.to_string(),
            ]),
        )
        .await;
        let servers = vec![master, replica];
        eventually("the replica in sync", SETTLE, || {
            try_redis_cli(
                replica_port,
                Some(&redis_password),
                &["info", "replication"],
            )
            .is_ok_and(|info| info.contains("master_link_status:up"))
        })
        .await;
        replica_acknowledged(master_port, Some(&redis_password)).await;

        let sentinel_dir = dir.path().join("sentinel");
        std::fs::create_dir_all(&sentinel_dir).expect("sentinel directory");
        let config = sentinel_dir.join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {master_port} 1\n\
                 sentinel auth-pass {SENTINEL_SERVICE} {redis_password}\n\
                 sentinel down-after-milliseconds {SENTINEL_SERVICE} 2000\n\
                 sentinel failover-timeout {SENTINEL_SERVICE} 10000\n\
                 sentinel parallel-syncs {SENTINEL_SERVICE} 1\n\
                 requirepass {sentinel_password}\n"
            ),
        )
        .expect("sentinel.conf");
        let sentinel_port = free_port();
        let sentinel = RedisProcess::start(
            sentinel_port,
            &sentinel_dir,
            &[config.display().to_string(), "--sentinel".into()],
        )
        .await;
        let set = Self {
            _dir: dir,
            _servers: servers,
            sentinel,
            redis_password,
            sentinel_password,
        };
        // Sentinel's own timers are for production (INFO every 10 s, a
        // demoted master reconfigured after 4 publish periods); shorten them
        // so a failover settles in a second or two (SENTINEL DEBUG, 7.0+).
        set.sentinel_cli(&[
            "sentinel",
            "debug",
            "info-period",
            "200",
            "publish-period",
            "200",
            "ping-period",
            "200",
            "ask-period",
            "200",
        ]);
        eventually("the sentinel knowing the replica", SETTLE, || {
            set.sentinel_knows_a_healthy_replica()
        })
        .await;
        set
    }

    pub fn sentinel_cli(&self, args: &[&str]) -> String {
        redis_cli(self.sentinel.port, Some(&self.sentinel_password), args)
    }

    fn sentinel_knows_a_healthy_replica(&self) -> bool {
        let replicas = self.sentinel_cli(&["sentinel", "replicas", SENTINEL_SERVICE]);
        let fields = pairs(&replicas);
        fields.get("flags").is_some_and(|flags| flags == "slave")
            && fields.get("master-link-status").is_some_and(|s| s == "ok")
    }

    /// The port the sentinel names as the master now.
    pub fn master_port(&self) -> u16 {
        let reply = self.sentinel_cli(&["sentinel", "get-master-addr-by-name", SENTINEL_SERVICE]);
        reply
            .lines()
            .nth(1)
            .and_then(|port| port.trim().parse().ok())
            .expect("the sentinel names a master")
    }

    /// The `redis-sentinel://` URL: the master's password in the userinfo,
    /// the sentinel's as `sentinelPassword`.
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://:{}@127.0.0.1:{}/0?sentinelServiceName={SENTINEL_SERVICE}&sentinelPassword={}",
            self.redis_password, self.sentinel.port, self.sentinel_password
        )
    }

    /// A plain URL of one of the two servers.
    pub fn server_url(&self, port: u16) -> String {
        format!("redis://:{}@127.0.0.1:{port}/0", self.redis_password)
    }

    /// `SENTINEL FAILOVER`, then waits until the other server is master,
    /// the old master replicates from it and the sentinel sees both.
    pub async fn failover(&self) -> u16 {
        let old = self.master_port();
        // NOGOODSLAVE while the sentinel's view of the replica is a moment
        // old: ask again.
        eventually("SENTINEL FAILOVER to be accepted", SETTLE, || {
            let reply = self.sentinel_cli(&["sentinel", "failover", SENTINEL_SERVICE]);
            assert!(
                reply.trim() == "OK" || reply.contains("NOGOODSLAVE"),
                "SENTINEL FAILOVER answered {reply:?}"
            );
            reply.trim() == "OK"
        })
        .await;
        eventually("the sentinel naming the new master", SETTLE, || {
            self.master_port() != old
        })
        .await;
        let new = self.master_port();
        eventually(
            "the old master replicating from the new one",
            SETTLE,
            || {
                let info = try_redis_cli(old, Some(&self.redis_password), &["info", "replication"])
                    .unwrap_or_default();
                info.contains("role:slave")
                    && info.contains(&format!("master_port:{new}"))
                    && info.contains("master_link_status:up")
            },
        )
        .await;
        new
    }
}

/// `field\nvalue\n...` as redis-cli prints a flat reply, as a map.
fn pairs(reply: &str) -> HashMap<String, String> {
    let lines: Vec<&str> = reply.lines().map(str::trim).collect();
    lines
        .chunks(2)
        .filter(|pair| pair.len() == 2)
        .map(|pair| (pair[0].to_owned(), pair[1].to_owned()))
        .collect()
}
