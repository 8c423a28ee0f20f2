//! The database probe: readiness follows whether PostgreSQL answers, on a
//! connection of the probe's own (a pool busy with real work must not look
//! like an outage, and an outage must not wait for a pool's timeout).
//!
//! A connection ended while PostgreSQL is fine (a pooler or a failover proxy
//! restarting, `pg_terminate_backend`) is not an outage: when the probe's
//! kept connection fails, it asks again at once on a fresh one, within the
//! same time limit, and only a fresh connection's failure counts.

use std::time::Duration;

use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};
use tokio_util::sync::CancellationToken;

use super::Health;
use crate::{db::bounded, supervise::Beat, telemetry::error_chain};

/// How often the probe asks.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long an answer may take before PostgreSQL counts as unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs until `token` is cancelled: `SELECT 1` every [`PROBE_INTERVAL`],
/// reconnecting after any failure; also refreshes liveness from the loops'
/// heartbeats.
pub async fn run_database_probe(
    options: PgConnectOptions,
    health: Health,
    token: CancellationToken,
    beat: Beat,
) {
    let mut connection: Option<PgConnection> = None;
    loop {
        beat.beat();
        health.refresh_liveness();
        let answered = probe(&options, &mut connection).await;
        if let Err(error) = &answered {
            if health.database_reachable() {
                tracing::warn!(error = %error_chain(error), "PostgreSQL probe failed");
            }
            connection = None;
        }
        health.set_database_reachable(answered.is_ok());
        tokio::select! {
            () = token.cancelled() => break,
            () = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
    if let Some(connection) = connection {
        let _ = connection.close().await;
    }
}

/// One probe: on the kept connection, or on a fresh one when there is none
/// or the kept one failed; all within [`PROBE_TIMEOUT`] (a black-holed
/// server takes the whole limit on the first try and gets no second).
async fn probe(
    options: &PgConnectOptions,
    connection: &mut Option<PgConnection>,
) -> Result<(), sqlx::Error> {
    bounded(PROBE_TIMEOUT, async {
        if let Some(conn) = connection.as_mut() {
            match select_one(conn).await {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::info!(
                        error = %error_chain(&error),
                        "PostgreSQL probe failed on its kept connection; asking again on a fresh one"
                    );
                    *connection = None;
                }
            }
        }
        let conn = connection.insert(PgConnection::connect_with(options).await?);
        select_one(conn).await
    })
    .await
}

async fn select_one(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(conn).await?;
    Ok(())
}
