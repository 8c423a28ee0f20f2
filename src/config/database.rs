//! PostgreSQL: `DATABASE_URL` (or the older `DATABASE_DSN`), the pool and
//! the time limits of every call. The URL carries the password: no error
//! quotes it.

use std::{str::FromStr, time::Duration};

use sqlx::postgres::PgConnectOptions;

use super::{
    ConfigError,
    parse::{duration, number},
};
use crate::db::DatabaseSettings;

/// Connections to PostgreSQL; a create is one statement, so a handful per
/// core keeps the server busy without queueing inside it.
pub const DEFAULT_DATABASE_POOL_SIZE: u32 = 16;
/// How long a call waits for a free connection before answering UNAVAILABLE.
pub const DEFAULT_DATABASE_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// The server cancels any statement of the service that runs longer; every
/// client call is abandoned a little after it.
pub const DEFAULT_DATABASE_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// `DATABASE_URL` (or `DATABASE_DSN`): required, a `postgres://` URL.
pub(super) fn connect_options(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<PgConnectOptions, ConfigError> {
    let (database_name, database_url) = match (get("DATABASE_URL"), get("DATABASE_DSN")) {
        (Some(url), _) => ("DATABASE_URL", url),
        (None, Some(url)) => ("DATABASE_DSN", url),
        (None, None) => {
            return Err(ConfigError::new(
                "DATABASE_URL",
                "must be set: the postgres:// URL of the jobs' own database, e.g. \
                 postgres://postgres@127.0.0.1:5432/translation_jobs (scripts/run.sh creates \
                 one and sets it; DATABASE_DSN is accepted too)",
            ));
        }
    };
    let scheme = database_url
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("postgres" | "postgresql")) {
        return Err(ConfigError::new(
            database_name,
            format!(
                "must be a postgres:// (or postgresql://) URL, got a {} one: this service \
                 stores its jobs in PostgreSQL only",
                scheme.map_or_else(|| "scheme-less".to_owned(), |s| format!("{s}://"))
            ),
        ));
    }
    PgConnectOptions::from_str(&database_url).map_err(|_| {
        ConfigError::new(
            database_name,
            "is not a valid PostgreSQL URL (postgres://user:password@host:port/database)",
        )
    })
}

/// `DATABASE_POOL_SIZE`, `DATABASE_ACQUIRE_TIMEOUT`,
/// `DATABASE_STATEMENT_TIMEOUT`, with the connection options read before.
pub(super) fn database_settings(
    get: &impl Fn(&str) -> Option<String>,
    connect: PgConnectOptions,
) -> Result<DatabaseSettings, ConfigError> {
    Ok(DatabaseSettings {
        connect,
        pool_size: number(
            get,
            "DATABASE_POOL_SIZE",
            DEFAULT_DATABASE_POOL_SIZE,
            1,
            1000,
        )?,
        acquire_timeout: duration(
            get,
            "DATABASE_ACQUIRE_TIMEOUT",
            DEFAULT_DATABASE_ACQUIRE_TIMEOUT,
        )?,
        statement_timeout: duration(
            get,
            "DATABASE_STATEMENT_TIMEOUT",
            DEFAULT_DATABASE_STATEMENT_TIMEOUT,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{ConfigError, tests::settings};

    #[test]
    fn accepts_the_older_database_dsn() {
        let s = settings(&[("DATABASE_DSN", "postgresql://u@db/jobs")]).unwrap();
        assert_eq!(s.database.connect.get_database(), Some("jobs"));
    }

    #[test]
    fn a_missing_database_url_is_named() {
        let error = settings(&[]).err().unwrap();
        assert_eq!(error.name, "DATABASE_URL");
    }

    #[test]
    fn a_bad_database_url_never_echoes_the_password() {
        let error = settings(&[("DATABASE_URL", "mysql://u:hunter2@db/jobs")]).err();
        let error = error.unwrap_or_else(|| ConfigError::new("DATABASE_URL", "accepted"));
        // sqlx may accept odd schemes; either way the password is not shown.
        assert!(!error.to_string().contains("hunter2"));
    }

    #[test]
    fn every_database_call_is_bounded_by_the_statement_timeout() {
        let s = settings(&[
            ("DATABASE_URL", "postgres://db/jobs"),
            ("DATABASE_STATEMENT_TIMEOUT", "10s"),
        ])
        .unwrap();
        assert_eq!(s.database.statement_timeout, Duration::from_secs(10));
        assert!(s.relay.call_timeout > Duration::from_secs(10));
        assert_eq!(s.relay.call_timeout, s.reaper.call_timeout);
    }
}
