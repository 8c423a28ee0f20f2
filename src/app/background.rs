//! The background tasks: the database probe, migrations (retried until
//! PostgreSQL answers), the check of the queue this database serves, the
//! LISTEN connection, the relay, the scheduler, the reaper, retention and
//! the dead lane, each supervised and stopped by the one token.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::LIVENESS_SLACK;
use crate::{
    config::Settings,
    db,
    dead_lane::DeadLane,
    health::{self, Health},
    metrics::Metrics,
    outbox::{Relay, Scheduler},
    queue::{RedisQueue, eviction_risk},
    reaper::Reaper,
    supervise::{Beat, supervise},
    telemetry::error_chain,
    wake::Wake,
    watch::{Listener, WatchHub, listener, registry},
};

/// First and longest pause between attempts to reach PostgreSQL at start-up.
const CONNECT_RETRY_MIN: Duration = Duration::from_millis(200);
const CONNECT_RETRY_MAX: Duration = Duration::from_secs(5);

/// What the background tasks share.
pub(super) struct Background {
    pub(super) pool: PgPool,
    pub(super) queue: RedisQueue,
    pub(super) settings: Settings,
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Health,
    pub(super) relay_wake: Wake,
    pub(super) schedule_wake: Wake,
    pub(super) hub: WatchHub,
    pub(super) token: CancellationToken,
    /// Told the queue this database serves when it is not this process's.
    pub(super) queue_mismatch: tokio::sync::oneshot::Sender<String>,
}

/// Starts the database probe, migrates (retrying with backoff until
/// PostgreSQL answers or shutdown), then runs the LISTEN connection, the
/// relay, the reaper and retention, each supervised, until the token is
/// cancelled.
pub(super) async fn run(background: Background) {
    let Background {
        pool,
        queue,
        settings,
        metrics,
        health,
        relay_wake,
        schedule_wake,
        hub,
        token,
        queue_mismatch,
    } = background;
    let mut loops = JoinSet::new();
    let call_timeout = settings.database.call_timeout();
    let liveness = health.liveness().clone();

    let probe_beat = liveness.register(
        "database probe",
        health::probe::PROBE_INTERVAL + health::probe::PROBE_TIMEOUT + LIVENESS_SLACK,
    );
    loops.spawn(supervise(token.clone(), probe_beat.clone(), {
        let (options, health, token) = (
            settings.database.probe_options(),
            health.clone(),
            token.clone(),
        );
        move || {
            health::run_database_probe(
                options.clone(),
                health.clone(),
                token.clone(),
                probe_beat.clone(),
            )
        }
    }));

    if !migrate(settings.database.clone(), token.clone()).await {
        loops.shutdown().await;
        return;
    }
    let bound = loop {
        match db::bind_queue(&pool, settings.queue.as_str()).await {
            Ok(bound) => break bound,
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "cannot read the queue this database serves; retrying");
                tokio::select! {
                    () = token.cancelled() => {
                        loops.shutdown().await;
                        return;
                    }
                    () = tokio::time::sleep(CONNECT_RETRY_MAX) => {}
                }
            }
        }
    };
    if bound != settings.queue.as_str() {
        // The service stops: nothing of this process may publish.
        let _ = queue_mismatch.send(bound);
        loops.shutdown().await;
        return;
    }
    health.set_migrated();
    tracing::info!("database ready");
    if let Err(error) = crate::jobs::write_retry_settings(
        &pool,
        settings.retries.backoff_base,
        settings.retries.backoff_max,
    )
    .await
    {
        tracing::warn!(
            error = %error_chain(&error),
            "cannot record RETRY_BACKOFF_BASE and RETRY_BACKOFF_MAX; retries wait what was recorded before"
        );
    }
    loops.spawn(check_eviction_policy(queue.clone(), token.clone()));
    loops.spawn(finish_interrupted_redrive(
        pool.clone(),
        queue.clone(),
        call_timeout,
        relay_wake.clone(),
        token.clone(),
    ));

    // The jobs this process watches, in watched_jobs (whose table the
    // migrations just made): released as their streams close, renewed
    // every heartbeat, all deleted at shutdown.
    let hub_beat = liveness.register(
        "watched jobs",
        registry::HEARTBEAT + call_timeout * 4 + LIVENESS_SLACK,
    );
    loops.spawn(supervise(token.clone(), hub_beat.clone(), {
        let (hub, token) = (hub.clone(), token.clone());
        move || hub.clone().run(token.clone(), hub_beat.clone())
    }));

    let listener_beat = liveness.register("listener", listener::MAX_QUIET + LIVENESS_SLACK);
    loops.spawn(supervise(token.clone(), listener_beat.clone(), {
        let (pool, hub, wake, token) =
            (pool.clone(), hub.clone(), relay_wake.clone(), token.clone());
        move || {
            Listener::new(pool.clone(), hub.clone(), wake.clone())
                .run(token.clone(), listener_beat.clone())
        }
    }));

    let lost_data = Wake::new();
    if settings.reaper_enabled {
        let reaper_beat = liveness.register(
            "reaper",
            settings.reaper.interval + call_timeout * 4 + LIVENESS_SLACK,
        );
        loops.spawn(supervise(token.clone(), reaper_beat.clone(), {
            let (pool, queue, reaper, wake, lost_data, token, metrics) = (
                pool.clone(),
                queue.clone(),
                settings.reaper,
                relay_wake.clone(),
                lost_data.clone(),
                token.clone(),
                metrics.clone(),
            );
            move || {
                Reaper::new(pool.clone(), queue.clone(), reaper, wake.clone())
                    .with_metrics(metrics.clone())
                    .run(token.clone(), lost_data.clone(), reaper_beat.clone())
            }
        }));
        let trim_beat = liveness.register(
            "dead lane",
            settings.reaper.interval + call_timeout * 4 + LIVENESS_SLACK,
        );
        loops.spawn(supervise(token.clone(), trim_beat.clone(), {
            let (pool, queue, dead_lane, metrics, token) = (
                pool.clone(),
                queue.clone(),
                settings.dead_lane,
                metrics.clone(),
                token.clone(),
            );
            let interval = settings.reaper.interval;
            move || {
                DeadLane::new(
                    pool.clone(),
                    queue.clone(),
                    dead_lane,
                    call_timeout,
                    metrics.clone(),
                )
                .run(interval, token.clone(), trim_beat.clone())
            }
        }));
        run_retention(&mut loops, &pool, &settings, &metrics, &liveness, &token);
    } else {
        tracing::info!("reaper disabled (REAPER_ENABLED=false)");
    }

    if settings.relay_enabled {
        let scheduler_beat = liveness.register(
            "scheduler",
            crate::outbox::scheduler::MAX_SLEEP + call_timeout * 2 + LIVENESS_SLACK,
        );
        loops.spawn(supervise(token.clone(), scheduler_beat.clone(), {
            let (pool, relay, wake, token) = (
                pool.clone(),
                relay_wake.clone(),
                schedule_wake.clone(),
                token.clone(),
            );
            move || {
                Scheduler::new(pool.clone(), relay.clone(), wake.clone())
                    .run(token.clone(), scheduler_beat.clone())
            }
        }));
        let relay_settings = settings.relay.clone();
        let relay_beat = liveness.register(
            "relay",
            relay_settings.poll_interval
                + relay_settings.max_backoff
                + call_timeout * 3
                + settings.redis.command_timeout * 2
                + LIVENESS_SLACK,
        );
        loops.spawn(supervise(token.clone(), relay_beat.clone(), move || {
            run_relay(
                pool.clone(),
                queue.clone(),
                relay_settings.clone(),
                metrics.clone(),
                lost_data.clone(),
                relay_wake.clone(),
                token.clone(),
                relay_beat.clone(),
            )
        }));
    } else {
        tracing::info!("relay disabled (RELAY_ENABLED=false)");
    }

    while loops.join_next().await.is_some() {}
}

/// The retention loop, beside the reaper; none when every finished status
/// is kept forever.
fn run_retention(
    loops: &mut JoinSet<()>,
    pool: &PgPool,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    liveness: &crate::supervise::Liveness,
    token: &CancellationToken,
) {
    let retention = settings.retention;
    if retention.policy.keeps_everything() {
        tracing::info!("retention off: RETAIN_COMPLETED, RETAIN_FAILED and RETAIN_CANCELLED are 0");
        return;
    }
    // A pass beats after every batch and after the pause that follows it
    // (up to `pause_ratio` times a batch's longest).
    let beat = liveness.register(
        "retention",
        retention.interval + retention.call_timeout * (2 + retention.pause_ratio) + LIVENESS_SLACK,
    );
    loops.spawn(supervise(token.clone(), beat.clone(), {
        let (pool, metrics, token) = (pool.clone(), metrics.clone(), token.clone());
        move || {
            crate::retention::Retention::new(pool.clone(), retention)
                .with_metrics(metrics.clone())
                .run(token.clone(), beat.clone())
        }
    }));
}

/// Migrations, retried with backoff until they succeed; false on shutdown.
async fn migrate(database: db::DatabaseSettings, token: CancellationToken) -> bool {
    let mut delay = CONNECT_RETRY_MIN;
    loop {
        let migrated = tokio::select! {
            () = token.cancelled() => return false,
            migrated = db::migrate(&database) => migrated,
        };
        match migrated {
            Ok(()) => return true,
            Err(error) => {
                if matches!(error, sqlx::Error::Migrate(_)) {
                    // Not an outage: the schema does not match this build.
                    // Retrying still means fixing the database needs no restart.
                    tracing::error!(error = %error_chain(&error), retry_in = ?delay, "cannot migrate the database");
                } else {
                    let described = db::describe_connect_error(&database.connect, &error);
                    if described.starts_with("configuration problem") {
                        tracing::error!(retry_in = ?delay, "{described}");
                    } else {
                        tracing::warn!(retry_in = ?delay, "{described}");
                    }
                }
                tokio::select! {
                    () = token.cancelled() => return false,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(CONNECT_RETRY_MAX);
            }
        }
    }
}

/// The relay, once it could read the database's identity.
#[allow(clippy::too_many_arguments)]
async fn run_relay(
    pool: PgPool,
    queue: RedisQueue,
    settings: crate::outbox::RelaySettings,
    metrics: Arc<Metrics>,
    lost_data: Wake,
    wake: Wake,
    token: CancellationToken,
    beat: Beat,
) {
    let relay = loop {
        beat.beat();
        match Relay::new(
            pool.clone(),
            queue.clone(),
            settings.clone(),
            metrics.clone(),
            lost_data.clone(),
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
    relay.run(token, wake, beat).await;
}

/// Finishes, once Redis answers, a dead-letter redrive that died between
/// taking dead letters and removing them (see `jobs::redrive`); retries
/// until it succeeds or shutdown.
async fn finish_interrupted_redrive(
    pool: PgPool,
    queue: RedisQueue,
    call_timeout: Duration,
    wake: Wake,
    token: CancellationToken,
) {
    loop {
        if queue.is_connected() {
            match crate::jobs::finish_interrupted_redrive(&pool, &queue, call_timeout).await {
                Ok(done) => {
                    if !done.jobs.is_empty() || done.stale > 0 || done.unreadable > 0 {
                        wake.wake();
                        tracing::info!(
                            redriven = done.jobs.len(),
                            stale = done.stale,
                            unreadable = done.unreadable,
                            "finished an interrupted dead-letter redrive"
                        );
                    }
                    return;
                }
                Err(error) => tracing::warn!(
                    error = %error_chain(&error),
                    "cannot finish an interrupted dead-letter redrive yet; retrying"
                ),
            }
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(CONNECT_RETRY_MAX) => {}
        }
    }
}

/// Warns once Redis answers if its eviction policy can drop the queue's
/// keys.
async fn check_eviction_policy(queue: RedisQueue, token: CancellationToken) {
    loop {
        if queue.is_connected() {
            match queue.maxmemory_policy().await {
                Ok(policy) => {
                    match eviction_risk(&policy) {
                        Some(risk) => tracing::warn!(
                            maxmemory_policy = %policy,
                            "Redis maxmemory-policy is {policy}, not noeviction: {risk}; \
                             set maxmemory-policy noeviction"
                        ),
                        None => {
                            tracing::info!(maxmemory_policy = %policy, "Redis maxmemory-policy")
                        }
                    }
                    return;
                }
                Err(error) => {
                    tracing::warn!(
                        error = %error_chain(&error),
                        "cannot read Redis's maxmemory-policy (CONFIG GET refused?); make sure it is noeviction"
                    );
                    return;
                }
            }
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(CONNECT_RETRY_MAX) => {}
        }
    }
}
