//! The relay's loop: drains on every wake-up and poll tick, lingers when
//! busy, backs off with jitter while a drain fails.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Relay, RelayError};
use crate::{
    outbox::generation::GenerationError, supervise::Beat, telemetry::error_chain, wake::Wake,
};

/// The relay lingers after a wake-up only when its last batch had at least
/// this many rows, i.e. when commits arrive faster than it drains them.
const LINGER_FROM_BATCH: usize = 16;

/// Shortest pause after a failed drain; doubles up to the configured maximum.
const MIN_BACKOFF: Duration = Duration::from_millis(50);

impl Relay {
    /// Runs until `token` is cancelled: drains on every wake (a local commit
    /// or a NOTIFY relayed by `watch::Listener`) and poll tick, and backs off
    /// with jitter while a drain fails.
    pub async fn run(self, token: CancellationToken, wake: Wake, beat: Beat) {
        let mut failures: u32 = 0;
        let mut last_batch;
        // Give a fresh Redis connection a moment before the first drain, so
        // start-up does not log a failure for nothing.
        let _ = self.queue.wait_connected(self.settings.max_backoff).await;
        tracing::info!(
            batch_size = self.settings.batch_size,
            poll_interval = ?self.settings.poll_interval,
            "relay started"
        );
        loop {
            beat.beat();
            match self.drain_until_idle(&token, &beat).await {
                Ok(claimed) => {
                    last_batch = claimed;
                    if failures > 0 {
                        tracing::info!(failures, "relay recovered");
                    }
                    failures = 0;
                }
                Err(RelayError::StaleGeneration { expected, found }) => {
                    // Not an outage: settle the generation and go on at once.
                    tracing::info!(expected, ?found, "Redis generation changed; settling it");
                    continue;
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    self.metrics.relay_failed();
                    if let RelayError::Queue(queue_error)
                    | RelayError::Generation(GenerationError::Queue(queue_error)) = &error
                    {
                        self.queue.reconnect_after_timeout(queue_error).await;
                    }
                    let delay = backoff(failures, self.settings.max_backoff);
                    // Log the first failure and then one in fifty, not every retry.
                    if failures == 1 || failures.is_multiple_of(50) {
                        tracing::warn!(error = %error_chain(&error), redis = self.queue.target(), failures, ?delay, "relay drain failed; retrying");
                    }
                    tokio::select! {
                        () = token.cancelled() => break,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            }
            tokio::select! {
                () = token.cancelled() => break,
                () = wake.woken() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
            // Linger only when busy: a light load drains at once.
            if !self.settings.linger.is_zero() && last_batch >= LINGER_FROM_BATCH {
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(self.settings.linger) => {}
                }
            }
        }
        tracing::info!("relay stopped");
    }
}

/// Exponential backoff with full jitter: a random pause up to
/// `MIN_BACKOFF * 2^(failures-1)`, capped at `max`.
fn backoff(failures: u32, max: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let ceiling = MIN_BACKOFF.saturating_mul(1 << exponent).min(max);
    let millis = u64::try_from(ceiling.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(fastrand::u64(millis / 2..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let max = Duration::from_secs(1);
        for failures in 1..100 {
            let delay = backoff(failures, max);
            assert!(delay <= max, "{failures}: {delay:?}");
            assert!(delay >= Duration::from_millis(1));
        }
        assert!(backoff(1, max) <= MIN_BACKOFF);
    }
}
