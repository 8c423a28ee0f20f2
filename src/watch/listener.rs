//! The process's one LISTEN connection. It carries two channels: outbox
//! wake-ups for the relay and job change events for the watchers (only
//! events of jobs this process watches are parsed), plus a channel of its
//! own for probes.
//!
//! A listener that falls behind holds PostgreSQL's notification queue (one
//! for the whole cluster; when it is full, every notifying commit fails).
//! So the connection is dropped and opened again when it stops keeping up:
//! every [`PROBE_INTERVAL`] the listener sends itself a notification
//! through the service's pool and, when that one has not come through
//! within [`MAX_LAG`] (everything queued before it comes first), opens a
//! new connection, which starts at the head of the queue; then every
//! stream reads its job again. The connection's server side gives up on a
//! peer that vanished within seconds (`db::listener_options`), so a
//! replica that is gone does not hold the queue either.

use std::time::Duration;

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{event::Change, hub::WatchHub};
use crate::{
    db::{bounded, listener_options},
    outbox::OUTBOX_CHANNEL,
    supervise::Beat,
    telemetry::error_chain,
    wake::Wake,
};

/// Channel of the triggers on the job and subtask tables; the payload is a
/// JSON change event (see `watch::Change`).
pub const JOB_EVENTS_CHANNEL: &str = "translation_job_events";

/// Each listener's probe channel is this followed by a random id.
const PROBE_CHANNEL_PREFIX: &str = "translation_jobs_probe_";

/// Pause before listening again after the connection failed.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How often the listener measures how far behind it is.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// A probe that takes longer than this to come through means the
/// connection is behind (or silent): it is replaced.
pub const MAX_LAG: Duration = Duration::from_secs(10);
/// How long connecting, sending a probe or testing the connection may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest the loop goes without a heartbeat while healthy: a probe's
/// wait and two bounded calls.
pub const MAX_QUIET: Duration = Duration::from_secs(MAX_LAG.as_secs() + 2 * CALL_TIMEOUT.as_secs());
/// Above this share of PostgreSQL's notification queue in use, the
/// listener warns (see the `translation_notification_queue_usage` gauge).
const QUEUE_USAGE_WARNING: f64 = 0.5;

/// Dispatches notifications until cancelled.
pub struct Listener {
    /// The service's pool: sends the probes.
    pool: PgPool,
    /// The LISTEN connection's own options.
    options: PgConnectOptions,
    hub: WatchHub,
    wake: Wake,
    probe_channel: String,
}

impl Listener {
    pub fn new(pool: PgPool, hub: WatchHub, wake: Wake) -> Self {
        let options = listener_options(&pool.connect_options());
        Self {
            pool,
            options,
            hub,
            wake,
            probe_channel: format!("{PROBE_CHANNEL_PREFIX}{}", Uuid::new_v4().simple()),
        }
    }

    /// Opens the connection and subscribes to the channels. A pool of one
    /// of its own each time: a connection given up on is closed with its
    /// pool, never handed out again.
    pub async fn connect(&self) -> Result<PgListener, sqlx::Error> {
        bounded(CALL_TIMEOUT, async {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(CALL_TIMEOUT)
                .max_lifetime(None)
                .idle_timeout(None)
                .connect_lazy_with(self.options.clone());
            let mut listener = PgListener::connect_with(&pool).await?;
            listener
                .listen_all([
                    OUTBOX_CHANNEL,
                    JOB_EVENTS_CHANNEL,
                    self.probe_channel.as_str(),
                ])
                .await?;
            Ok(listener)
        })
        .await
    }

    /// Runs until `token` is cancelled. While the connection is down the
    /// relay keeps polling; after it comes back every watcher reads its job
    /// again and the relay drains, since notifications may have been missed.
    pub async fn run(self, token: CancellationToken, beat: Beat) {
        let mut listener: Option<PgListener> = None;
        let mut failures: u32 = 0;
        let mut probe = Probe::new(Instant::now());
        let mut queue_full = false;
        loop {
            beat.beat();
            let current = match listener.as_mut() {
                Some(current) => current,
                None => match self.connect().await {
                    Ok(fresh) => {
                        if failures > 0 {
                            tracing::info!("LISTEN connection back");
                        }
                        failures = 0;
                        probe = Probe::new(Instant::now());
                        self.hub.resync_all();
                        self.wake.wake();
                        listener.insert(fresh)
                    }
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        if failures == 1 {
                            tracing::warn!(error = %error_chain(&error), "cannot LISTEN; relay polls, watchers wait");
                        }
                        tokio::select! {
                            () = token.cancelled() => break,
                            () = tokio::time::sleep(RETRY_DELAY) => continue,
                        }
                    }
                },
            };
            let received = tokio::select! {
                () = token.cancelled() => break,
                // try_recv is cancel-safe: a notification half read stays
                // buffered for the next call.
                received = tokio::time::timeout_at(probe.deadline(), current.try_recv()) => received,
            };
            match received {
                Ok(Ok(Some(notification))) => {
                    if notification.channel() == self.probe_channel {
                        let lag = probe.arrived(notification.payload(), Instant::now());
                        if lag.is_some_and(|lag| lag > MAX_LAG) {
                            tracing::warn!(lag = ?lag, "LISTEN connection fell behind; opening a new one, watchers read their jobs again");
                            listener = None;
                            failures = 1;
                        }
                    } else {
                        self.dispatch(notification.channel(), notification.payload());
                    }
                }
                // The connection dropped and sqlx opened a new one.
                Ok(Ok(None)) => {
                    tracing::warn!("LISTEN connection re-opened; watchers read their jobs again");
                    probe = Probe::new(Instant::now());
                    self.hub.resync_all();
                    self.wake.wake();
                }
                Ok(Err(error)) => {
                    tracing::warn!(error = %error_chain(&error), "LISTEN connection failed");
                    listener = None;
                    failures = 1;
                }
                Err(_deadline) => {
                    let now = Instant::now();
                    if probe.late(now) {
                        tracing::warn!(
                            max_lag = ?MAX_LAG,
                            "LISTEN connection is behind or silent; opening a new one, watchers read their jobs again"
                        );
                        listener = None;
                        failures = 1;
                        continue;
                    }
                    match self.send_probe(probe.next_seq()).await {
                        Ok(usage) => {
                            probe.sent(now);
                            let full = usage >= QUEUE_USAGE_WARNING;
                            if full && !queue_full {
                                tracing::warn!(
                                    usage,
                                    "PostgreSQL's notification queue is filling: a listening session is not reading (one left idle in a transaction?)"
                                );
                            } else if !full && queue_full {
                                tracing::info!(usage, "PostgreSQL's notification queue drained");
                            }
                            queue_full = full;
                        }
                        // The pool cannot say: test the connection itself.
                        Err(error) => {
                            tracing::debug!(error = %error_chain(&error), "cannot send a LISTEN probe; testing the connection");
                            probe.skipped(now);
                            let ping = bounded(CALL_TIMEOUT, async {
                                sqlx::query("SELECT 1").execute(&mut *current).await?;
                                Ok::<(), sqlx::Error>(())
                            })
                            .await;
                            if let Err(error) = ping {
                                tracing::warn!(error = %error_chain(&error), "LISTEN connection does not answer; opening a new one");
                                listener = None;
                                failures = 1;
                            }
                        }
                    }
                }
            }
        }
        tracing::info!("listener stopped");
    }

    /// Sends the probe `seq` to this listener through the service's pool;
    /// returns PostgreSQL's notification queue usage.
    async fn send_probe(&self, seq: u64) -> Result<f64, sqlx::Error> {
        bounded(
            CALL_TIMEOUT,
            sqlx::query_scalar::<_, f64>(
                "SELECT pg_notification_queue_usage() FROM pg_notify($1, $2)",
            )
            .bind(&self.probe_channel)
            .bind(seq.to_string())
            .fetch_one(&self.pool),
        )
        .await
    }

    fn dispatch(&self, channel: &str, payload: &str) {
        if channel == OUTBOX_CHANNEL {
            self.wake.wake();
        } else if channel == JOB_EVENTS_CHANNEL {
            // Every process receives the events of every job any of them
            // watches: look at the job before parsing the rest.
            if let Some(job_id) = Change::peek_job_id(payload)
                && !self.hub.is_watched(job_id)
            {
                return;
            }
            if let Some(change) = Change::parse(payload) {
                self.hub.publish(change);
            } else if let Ok(job_id) = Uuid::try_parse(payload) {
                // An older version's trigger: the bare job id.
                self.hub.resync(job_id);
            } else {
                tracing::debug!(payload, "ignoring a malformed job event");
            }
        }
    }
}

/// The probes' bookkeeping: one on its way at a time.
#[derive(Debug)]
struct Probe {
    seq: u64,
    /// The probe on its way and when it was sent.
    outstanding: Option<(u64, Instant)>,
    /// When to send the next one.
    next_at: Instant,
}

impl Probe {
    /// The first probe goes out one interval after `now`.
    fn new(now: Instant) -> Self {
        Self {
            seq: 0,
            outstanding: None,
            next_at: now + PROBE_INTERVAL,
        }
    }

    /// When the loop must look again: the probe on its way is late, or the
    /// next is due.
    fn deadline(&self) -> Instant {
        match self.outstanding {
            Some((_, sent_at)) => sent_at + MAX_LAG,
            None => self.next_at,
        }
    }

    /// The sequence number of the probe about to be sent.
    fn next_seq(&self) -> u64 {
        self.seq + 1
    }

    /// The probe [`next_seq`](Self::next_seq) was sent at `now`.
    fn sent(&mut self, now: Instant) {
        self.seq += 1;
        self.outstanding = Some((self.seq, now));
    }

    /// No probe could be sent: try again one interval later.
    fn skipped(&mut self, now: Instant) {
        self.outstanding = None;
        self.next_at = now + PROBE_INTERVAL;
    }

    /// A probe came through at `now`: how long it took, when it is the one
    /// on its way.
    fn arrived(&mut self, payload: &str, now: Instant) -> Option<Duration> {
        let seq: u64 = payload.parse().ok()?;
        let (expected, sent_at) = self.outstanding?;
        if seq != expected {
            return None;
        }
        self.outstanding = None;
        self.next_at = now + PROBE_INTERVAL;
        Some(now - sent_at)
    }

    /// Whether the probe on its way should have come through by `now`.
    fn late(&self, now: Instant) -> bool {
        self.outstanding
            .is_some_and(|(_, sent_at)| now >= sent_at + MAX_LAG)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_that_takes_longer_than_the_limit_is_late() {
        let start = Instant::now();
        let mut probe = Probe::new(start);
        assert_eq!(probe.deadline(), start + PROBE_INTERVAL);
        assert!(!probe.late(start + MAX_LAG * 10), "nothing on its way");

        let sent_at = start + PROBE_INTERVAL;
        let seq = probe.next_seq();
        probe.sent(sent_at);
        assert_eq!(probe.deadline(), sent_at + MAX_LAG);
        assert!(!probe.late(sent_at + MAX_LAG / 2));
        assert!(probe.late(sent_at + MAX_LAG));

        // Another listener's number, or an earlier probe's, does not count.
        assert_eq!(probe.arrived("999", sent_at), None);
        assert_eq!(probe.arrived("x", sent_at), None);
        let arrived = sent_at + Duration::from_millis(3);
        assert_eq!(
            probe.arrived(&seq.to_string(), arrived),
            Some(Duration::from_millis(3))
        );
        assert!(!probe.late(arrived + MAX_LAG));
        assert_eq!(probe.deadline(), arrived + PROBE_INTERVAL);
        assert_eq!(probe.next_seq(), seq + 1);

        probe.skipped(arrived);
        assert_eq!(probe.deadline(), arrived + PROBE_INTERVAL);
    }
}
