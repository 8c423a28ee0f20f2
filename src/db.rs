//! PostgreSQL connections: the pool every part of the service shares, the
//! migrations, and the time limit on every call.
//!
//! Three limits keep a slow or vanished server from hanging the service:
//! `statement_timeout` (the server cancels a statement that runs too long),
//! `idle_in_transaction_session_timeout` (the server ends a session that
//! holds a transaction open and idle, releasing its locks), and
//! [`bounded`] on the client, for a server that does not answer at all (a
//! black-holed network path): the call fails with a timeout and its
//! connection is not reused. Server-side TCP keepalives make PostgreSQL
//! notice a client that vanished (and roll back its transaction) within
//! about a minute.

use std::{collections::HashMap, future::Future, time::Duration};

use sqlx::{
    Connection, PgConnection, PgPool,
    migrate::{AppliedMigration, Migrate, MigrateError, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// PostgreSQL ends a session left idle inside a transaction this long, so a
/// relay that hangs between push and commit releases its rows. The marker
/// lifetime must be well above it.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// What a client call may take beyond the statement timeout (connecting,
/// waiting for a pooled connection, the round trip) before it is abandoned.
const CALL_MARGIN: Duration = Duration::from_secs(5);

/// Server-side TCP keepalive: probes after this much silence, this often,
/// this many times.
const KEEPALIVE_IDLE_SECS: &str = "30";
const KEEPALIVE_INTERVAL_SECS: &str = "10";
const KEEPALIVE_COUNT: &str = "3";

/// The LISTEN connection's server side gives up on a vanished peer sooner:
/// while it waits, its place in PostgreSQL's notification queue (one for
/// the whole cluster) holds the queue. Keepalive probes after this much
/// silence, this often, this many times (about 11 s in all), and at most
/// this long for sent data to go unacknowledged (a peer that vanished
/// while notifications were on their way, where keepalives do not apply).
const LISTEN_KEEPALIVE_IDLE_SECS: &str = "5";
const LISTEN_KEEPALIVE_INTERVAL_SECS: &str = "2";
const LISTEN_KEEPALIVE_COUNT: &str = "3";
const LISTEN_TCP_USER_TIMEOUT_MS: &str = "10000";

/// How to reach PostgreSQL and how long to wait for it.
#[derive(Clone)]
pub struct DatabaseSettings {
    /// Where the jobs live (`DATABASE_URL`, or the older `DATABASE_DSN`).
    /// Carries the password: never printed.
    pub connect: PgConnectOptions,
    pub pool_size: u32,
    /// How long a call waits for a free connection.
    pub acquire_timeout: Duration,
    /// The server cancels any statement of the service that runs longer.
    pub statement_timeout: Duration,
}

impl DatabaseSettings {
    /// The longest any one database call of the service may take.
    pub fn call_timeout(&self) -> Duration {
        self.statement_timeout + CALL_MARGIN
    }

    /// Options of every connection of the pool.
    ///
    /// `enable_seqscan = off`: a connection caches its plans, including
    /// PostgreSQL's own foreign-key check on `translation_subtasks.job_id`;
    /// planned while `translation_jobs` looked empty, that check is a
    /// sequential scan, and kept as the table grows it made each create scan
    /// the whole table (measured: 521 creates/s instead of thousands). Every
    /// query of the service has an index to use, so the setting only removes
    /// that trap; where no index fits, PostgreSQL still scans.
    fn pool_options(&self) -> PgConnectOptions {
        let statement = format!("{}ms", self.statement_timeout.as_millis());
        let idle = format!("{}ms", IDLE_IN_TRANSACTION_TIMEOUT.as_millis());
        self.connect
            .clone()
            .application_name("translation-jobs")
            .options([
                ("statement_timeout", statement.as_str()),
                ("idle_in_transaction_session_timeout", idle.as_str()),
                ("tcp_keepalives_idle", KEEPALIVE_IDLE_SECS),
                ("tcp_keepalives_interval", KEEPALIVE_INTERVAL_SECS),
                ("tcp_keepalives_count", KEEPALIVE_COUNT),
                ("enable_seqscan", "off"),
            ])
    }
}

impl DatabaseSettings {
    /// Options of the health probe's own connection.
    pub fn probe_options(&self) -> PgConnectOptions {
        self.pool_options()
            .application_name("translation-jobs-probe")
    }
}

/// Options of the LISTEN connection (`watch::Listener`): those of `pool`
/// (the service's pool, see [`pool`]), named `translation-jobs-listener`,
/// with the shorter keepalives and `tcp_user_timeout` above (given after
/// the pool's, so the server takes these). sqlx exposes no client-side
/// socket options; the listener's probes cover that side.
pub fn listener_options(pool: &PgConnectOptions) -> PgConnectOptions {
    pool.clone()
        .application_name("translation-jobs-listener")
        .options([
            ("tcp_keepalives_idle", LISTEN_KEEPALIVE_IDLE_SECS),
            ("tcp_keepalives_interval", LISTEN_KEEPALIVE_INTERVAL_SECS),
            ("tcp_keepalives_count", LISTEN_KEEPALIVE_COUNT),
            ("tcp_user_timeout", LISTEN_TCP_USER_TIMEOUT_MS),
        ])
}

/// A lazy pool: creating it needs no server, connections open on first use.
pub fn pool(settings: &DatabaseSettings) -> PgPool {
    PgPoolOptions::new()
        .max_connections(settings.pool_size)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(settings.pool_options())
}

/// A lazy pool of one connection of its own, named `application_name`, for
/// readings that must never take the API's connections (`/metrics`).
pub fn side_pool(
    settings: &DatabaseSettings,
    application_name: &str,
    acquire_timeout: Duration,
) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(acquire_timeout)
        .connect_lazy_with(settings.pool_options().application_name(application_name))
}

/// How long a migration's statement waits for a table lock before it gives
/// up (and the whole migration is rolled back and retried): a DDL statement
/// queued behind a long transaction would hold up every create queued
/// behind it.
pub const MIGRATION_LOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the migration's first connection attempt may take.
pub const MIGRATION_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The advisory lock a process takes, by asking again and again, before it
/// runs the migrations (see [`migrate`]). Advisory locks are per database,
/// so one key serves every database.
const MIGRATION_GATE: i64 = 0x746a_6d69_6772_6174; // "tjmigrat"

/// How often a process asks for [`MIGRATION_GATE`] while another holds it.
const MIGRATION_GATE_POLL: Duration = Duration::from_millis(200);

/// Runs the migrations under sqlx's advisory lock (safe with any number of
/// replicas starting at once) on a connection of their own, without the
/// statement timeout (a migration may build a large index) but with
/// [`MIGRATION_LOCK_TIMEOUT`] (see [`apply_pending`]); refreshes the
/// planner's statistics only when a migration was applied, and warns about
/// invalid indexes.
///
/// Before sqlx's lock, which a waiting process would wait for inside one
/// long statement (`pg_advisory_lock`), the process takes
/// [`MIGRATION_GATE`] by asking every [`MIGRATION_GATE_POLL`]: a
/// `CREATE INDEX CONCURRENTLY` waits for every transaction older than its
/// snapshot, the waiting statement of another replica is one, and it waits
/// in turn for the lock the builder holds, so PostgreSQL would end one of
/// them as a deadlock (and, when it picks the builder, leave an invalid
/// index behind). A short question asked again holds nothing open for the
/// build to wait for. Each migration runs as [`apply_pending`] says.
pub async fn migrate(settings: &DatabaseSettings) -> Result<(), sqlx::Error> {
    let options = settings
        .connect
        .clone()
        .application_name("translation-jobs-migrate")
        .options([(
            "lock_timeout",
            format!("{}ms", MIGRATION_LOCK_TIMEOUT.as_millis()),
        )]);
    // One connection attempt first: a pool retries a refused connection
    // until its acquire timeout, hiding the reason; this says it at once.
    let probe = tokio::time::timeout(
        MIGRATION_CONNECT_TIMEOUT,
        PgConnection::connect_with(&options),
    )
    .await
    .map_err(|_| timed_out(MIGRATION_CONNECT_TIMEOUT))??;
    let _ = probe.close().await;
    // A pool of one, so that every statement below runs on the one session
    // that holds the gate (until the pool closes).
    let pool = bounded(
        settings.call_timeout(),
        PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(settings.call_timeout())
            .connect_with(options),
    )
    .await?;
    let migrated = async {
        let mut conn = pool.acquire().await?;
        while !sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
            .bind(MIGRATION_GATE)
            .fetch_one(&mut *conn)
            .await?
        {
            tokio::time::sleep(MIGRATION_GATE_POLL).await;
        }
        let applied = apply_pending(&mut conn)
            .await
            .map_err(|error| match error {
                sqlx::migrate::MigrateError::Execute(error) => error,
                other => sqlx::Error::Migrate(Box::new(other)),
            })?;
        if applied > 0 {
            // Current statistics for the plans made from here on; a start
            // that applied nothing leaves them to autovacuum.
            sqlx::query("ANALYZE translation_jobs, translation_subtasks, outbox")
                .execute(&mut *conn)
                .await?;
        }
        warn_about_invalid_indexes(&mut conn).await?;
        Ok(())
    }
    .await;
    pool.close().await;
    migrated
}

/// Applies [`MIGRATOR`]'s pending migrations in order, as sqlx's migrator
/// does (its lock, its table, the same checks of what was applied), and
/// returns how many it applied. A migration that runs in a transaction runs
/// with [`MIGRATION_LOCK_TIMEOUT`]; one that runs outside a transaction (a
/// `CREATE INDEX CONCURRENTLY`) without it: such a build waits for every
/// transaction older than it (a long report, a backup) while holding up no
/// create, and cut short by the timeout it would leave an invalid index
/// that its `IF NOT EXISTS` then takes for built.
async fn apply_pending(conn: &mut PgConnection) -> Result<usize, MigrateError> {
    conn.lock().await?;
    conn.ensure_migrations_table().await?;
    if let Some(version) = conn.dirty_version().await? {
        return Err(MigrateError::Dirty(version));
    }
    let applied: HashMap<i64, AppliedMigration> = conn
        .list_applied_migrations()
        .await?
        .into_iter()
        .map(|migration| (migration.version, migration))
        .collect();
    if let Some(unknown) = applied
        .keys()
        .find(|version| !MIGRATOR.iter().any(|m| m.version == **version))
    {
        return Err(MigrateError::VersionMissing(*unknown));
    }
    let mut count = 0;
    for migration in MIGRATOR.iter() {
        if migration.migration_type.is_down_migration() {
            continue;
        }
        if let Some(done) = applied.get(&migration.version) {
            if done.checksum != migration.checksum {
                return Err(MigrateError::VersionMismatch(migration.version));
            }
            continue;
        }
        let lock_timeout = if migration.no_tx {
            Duration::ZERO
        } else {
            MIGRATION_LOCK_TIMEOUT
        };
        sqlx::query(&format!("SET lock_timeout = {}", lock_timeout.as_millis()))
            .execute(&mut *conn)
            .await?;
        conn.apply(migration).await?;
        count += 1;
    }
    conn.unlock().await?;
    Ok(count)
}

/// Logs every invalid index of the service's schema: what a
/// `CREATE INDEX CONCURRENTLY` that was interrupted leaves behind. Writes
/// keep it up to date but no query uses it; docs/operations.md says how to
/// build it again.
async fn warn_about_invalid_indexes(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let invalid: Vec<String> = sqlx::query_scalar(
        "SELECT i.indexrelid::regclass::text FROM pg_index AS i \
         JOIN pg_class AS c ON c.oid = i.indexrelid \
         WHERE NOT i.indisvalid AND c.relnamespace = current_schema()::regnamespace \
         ORDER BY 1",
    )
    .fetch_all(conn)
    .await?;
    for index in invalid {
        tracing::warn!(
            %index,
            "index is INVALID (an interrupted CREATE INDEX CONCURRENTLY): queries do not use it; \
             drop it with DROP INDEX CONCURRENTLY and create it again (see docs/operations.md)"
        );
    }
    Ok(())
}

/// The queue this database serves, recording `queue` when none is yet:
/// one database holds one queue's jobs (see the `queue_binding` migration).
pub async fn bind_queue(pool: &PgPool, queue: &str) -> Result<String, sqlx::Error> {
    sqlx::query("INSERT INTO queue_binding (queue) VALUES ($1) ON CONFLICT (singleton) DO NOTHING")
        .bind(queue)
        .execute(pool)
        .await?;
    sqlx::query_scalar("SELECT queue FROM queue_binding")
        .fetch_one(pool)
        .await
}

/// Moves the database to `queue`, deliberately (`translation-jobs
/// rebind-queue`); returns the name it served before.
pub async fn rebind_queue(pool: &PgPool, queue: &str) -> Result<Option<String>, sqlx::Error> {
    let before: Option<String> = sqlx::query_scalar("SELECT queue FROM queue_binding")
        .fetch_optional(pool)
        .await?;
    sqlx::query(
        "INSERT INTO queue_binding (queue) VALUES ($1) \
         ON CONFLICT (singleton) DO UPDATE SET queue = excluded.queue, bound_at = now()",
    )
    .bind(queue)
    .execute(pool)
    .await?;
    Ok(before)
}

/// What a failed connection to PostgreSQL means, for one log line: where
/// (host and port, never the password), which kind of failure, and, when
/// the fix is in the configuration, which.
pub fn describe_connect_error(options: &PgConnectOptions, error: &sqlx::Error) -> String {
    let target = format!("{}:{}", options.get_host(), options.get_port());
    let database = options.get_database().unwrap_or(options.get_username());
    let user = options.get_username();
    match error {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => format!(
            "PostgreSQL at {target} refused the connection: nothing listens there (is it \
             running, and is the host and port in DATABASE_URL right?)"
        ),
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => format!(
            "PostgreSQL at {target} did not answer in time (is the host right, or a firewall \
             in the way?)"
        ),
        sqlx::Error::Io(io)
            if io.to_string().contains("lookup") || io.to_string().contains("resolve") =>
        {
            format!(
                "cannot resolve the host of PostgreSQL at {target} (is the host name in \
                 DATABASE_URL right?)"
            )
        }
        sqlx::Error::Io(io) => format!("cannot reach PostgreSQL at {target}: {io}"),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("3D000") => format!(
                "configuration problem: the database {database:?} does not exist on PostgreSQL \
                 at {target}; create it (createdb -h {} -p {} -U {user} {database}) or fix the \
                 database name in DATABASE_URL",
                options.get_host(),
                options.get_port()
            ),
            Some("28P01") => format!(
                "configuration problem: PostgreSQL at {target} refused the password of role \
                 {user:?} ({}); fix the password in DATABASE_URL",
                db.message()
            ),
            Some("28000") => format!(
                "configuration problem: PostgreSQL at {target} refused role {user:?} ({}); \
                 fix the user in DATABASE_URL, or allow it in pg_hba.conf",
                db.message()
            ),
            _ => format!("PostgreSQL at {target} refused: {}", db.message()),
        },
        sqlx::Error::Tls(tls) => format!("TLS with PostgreSQL at {target} failed: {tls}"),
        other => format!("cannot connect to PostgreSQL at {target}: {other}"),
    }
}

/// The longest one database call may take on `pool`'s connections
/// ([`DatabaseSettings::call_timeout`]), read back from the statement
/// timeout [`pool`] set on them; None for a pool made otherwise. For code
/// that is given only the pool and must finish inside its caller's bound.
pub fn call_timeout_of(pool: &PgPool) -> Option<Duration> {
    let options = pool.connect_options();
    let millis: u64 = options
        .get_options()?
        .split_whitespace()
        .find_map(|option| option.strip_prefix("statement_timeout="))?
        .strip_suffix("ms")?
        .parse()
        .ok()?;
    Some(Duration::from_millis(millis) + CALL_MARGIN)
}

/// Runs one database call (or a few in one transaction) with a time limit.
/// A call that does not finish in time fails as an I/O timeout (mapped to
/// UNAVAILABLE); dropping it drops its connection's work (an open
/// transaction rolls back), and sqlx tests a connection before it goes back
/// to the pool.
pub async fn bounded<T, E: From<sqlx::Error>>(
    limit: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(E::from(timed_out(limit))),
    }
}

/// Whether a failure is an outage of PostgreSQL or of the path to it, one
/// that passes once the server or the network recovers (the caller should
/// retry), as opposed to a refusal of this statement's data.
///
/// The pool timed out or closed, the connection broke (I/O, TLS, a protocol
/// error: a path that accepts and closes at once, such as a proxy whose
/// backend is down, fails the start-up exchange this way), or SQLSTATE
/// class 08 (connection exceptions), 53 (insufficient resources: too many
/// connections, out of memory or disk), 57 (operator intervention: admin or
/// crash shutdown, cannot connect now, statement cancelled or timed out),
/// 58 (system errors), or 25006 (a read-only transaction: the server is a
/// standby after a failover).
pub fn is_outage(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            ["08", "53", "57", "58"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "25006"
        }),
        _ => false,
    }
}

/// Whether the connection under a call was lost, so the call may have run
/// or not and may succeed on another connection: it broke (I/O, TLS, a
/// protocol error, SQLSTATE class 08), its session was ended (57P01 admin
/// shutdown, as `pg_terminate_backend` or a pooler restart does; 57P02
/// crash shutdown), or the client stopped waiting ([`bounded`]'s limit, an
/// I/O timeout). Everything else is PostgreSQL's own answer.
pub fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(database) => database
            .code()
            .is_some_and(|code| code.starts_with("08") || code == "57P01" || code == "57P02"),
        _ => false,
    }
}

/// The error of a call abandoned after `limit`.
pub fn timed_out(limit: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "PostgreSQL did not answer within {}",
            humantime::format_duration(limit)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_call_timeout_is_read_back_from_the_pool() {
        let settings = DatabaseSettings {
            connect: PgConnectOptions::new(),
            pool_size: 1,
            acquire_timeout: Duration::from_secs(1),
            statement_timeout: Duration::from_millis(2500),
        };
        assert_eq!(
            call_timeout_of(&pool(&settings)),
            Some(settings.call_timeout())
        );
        let plain = PgPoolOptions::new().connect_lazy_with(PgConnectOptions::new());
        assert_eq!(call_timeout_of(&plain), None);
    }
}
