//! Draining: one round (claim, publish, commit), and the pipeline of
//! rounds that drains a backlog.

use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};
use tracing::{Instrument as _, Span, instrument};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{Drained, Relay, RelayError, claim::Claimed};
use crate::{queue::QueueError, supervise::Beat, telemetry::traces};

/// While a backlog lasts, a round's claim starts its scan after the last id
/// of the round before (see [`Relay::claim_split`]); every this many rounds
/// one claim scans from the start instead, so a row whose id is below that
/// point (its transaction committed late) waits at most this many rounds.
pub const FULL_SCAN_EVERY: u32 = 16;

impl Relay {
    /// Claims, publishes and commits one batch. An empty outbox gives
    /// `claimed == 0`.
    #[instrument(skip_all)]
    pub async fn drain_once(&self) -> Result<Drained, RelayError> {
        if !self.queue.is_connected() {
            // Do not hold rows locked while the client is known to be down.
            return Err(QueueError::NotConnected.into());
        }
        let claimed = self.claim().await?;
        if claimed.rows.is_empty() {
            return Ok(Drained::default());
        }
        let span = self.batch_span(&claimed);
        let delivered = async {
            let published = self.publish(&claimed).await?;
            self.commit(claimed, published).await
        }
        .instrument(span.clone())
        .await;
        if delivered.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        delivered
    }

    /// The span of one round's publish and commit: a root (a round serves
    /// many traces), linked to the span that created each message, as named
    /// by the message's `traceparent`.
    fn batch_span(&self, claimed: &Claimed) -> Span {
        let span = tracing::info_span!(
            parent: None,
            "relay batch",
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "redis",
            messaging.operation.type = "send",
            messaging.destination.name = %self.queue.queue().as_str(),
            messaging.batch.message_count = claimed.rows.len(),
        );
        if traces::enabled() {
            for row in &claimed.rows {
                if let Some(creator) = message_traceparent(&row.payload)
                    .as_deref()
                    .and_then(traces::span_context)
                {
                    span.add_link(creator);
                }
            }
        }
        span
    }

    /// Drains until a round comes back short; returns the size of the last.
    ///
    /// A pipeline over consecutive rounds: round n is pushed while round n+1
    /// is claimed on other connections (SKIP LOCKED hands it the following
    /// rows), and as soon as round n is pushed, its publications are
    /// recorded and committed on a task of their own, while round n+1 is
    /// pushed. Pushes happen one round after the other, in claim order, so
    /// order is kept; a round whose commit fails comes back and its second
    /// push is skipped by the markers, as after any failed commit. Commits
    /// hold their own connections and never wait for a claim, so a claim
    /// waiting for a free connection always gets one. The first round is
    /// claimed by one transaction; while rounds come back full (a backlog),
    /// by `claimers` transactions at once, from the previous round's last id
    /// (see [`Relay::claim_split`] and [`FULL_SCAN_EVERY`]). On any error,
    /// a round already pushed is still committed (or fails to) before the
    /// error is returned: its task is never aborted half way. `run` calls
    /// this in its loop; tests call it directly.
    pub async fn drain_until_idle(
        &self,
        token: &CancellationToken,
        beat: &Beat,
    ) -> Result<usize, RelayError> {
        if !self.queue.is_connected() {
            return Err(QueueError::NotConnected.into());
        }
        let full = self.settings.batch_size as usize;
        let mut claimed = self.claim().await?;
        // Where the claim of `claimed` started its scan, and the rounds
        // since one started from 0.
        let mut hint = 0;
        let mut hinted_rounds = 0;
        // The previous round's record and commit, still running.
        let mut committing: Option<Committing> = None;
        loop {
            beat.beat();
            if claimed.rows.is_empty() && hint > 0 {
                // Nothing above the hint: one claim from 0 before ending.
                claimed = match self.claim().await {
                    Ok(claimed) => claimed,
                    Err(error) => {
                        // The previous round was pushed: let it commit
                        // before giving up, rather than abort its task.
                        if let Some(previous) = committing.take() {
                            joined(previous.await)?;
                        }
                        return Err(error);
                    }
                };
                hint = 0;
                hinted_rounds = 0;
                continue;
            }
            if claimed.rows.is_empty() {
                if let Some(previous) = committing.take() {
                    joined(previous.await)?;
                }
                return Ok(0);
            }
            let size = claimed.rows.len();
            // A full round: the backlog lasts, claim on from its last id
            // (from 0 every FULL_SCAN_EVERY rounds). A short round that
            // started after a hint: rows below the hint may have committed
            // meanwhile, so one more claim from 0 before the drain ends.
            let more = (size >= full || hint > 0) && !token.is_cancelled();
            hint = match claimed.rows.last() {
                Some(last) if size >= full && hinted_rounds < FULL_SCAN_EVERY => last.id,
                _ => 0,
            };
            hinted_rounds = if hint > 0 { hinted_rounds + 1 } else { 0 };
            let previous = committing.take();
            let previous = async move {
                match previous {
                    Some(previous) => joined(previous.await).map(Some),
                    None => Ok(None),
                }
            };
            let span = self.batch_span(&claimed);
            let round = async move {
                let published = self
                    .publish(&claimed)
                    .instrument(span.clone())
                    .await
                    .inspect_err(|_| {
                        span.record("otel.status_code", "ERROR");
                    })?;
                let relay = self.clone();
                Ok::<_, RelayError>(AbortOnDropHandle::new(tokio::spawn(
                    async move {
                        relay.commit(claimed, published).await.inspect_err(|_| {
                            Span::current().record("otel.status_code", "ERROR");
                        })
                    }
                    .instrument(span),
                )))
            };
            // On any error the open transactions roll back when dropped;
            // their rows are claimed again later and pushed at most once more.
            let (committed, this_round, next) = if more {
                let (committed, this_round, next) = tokio::join!(
                    previous,
                    round,
                    self.claim_split(self.settings.claimers, hint)
                );
                (committed, this_round, Some(next))
            } else {
                let (committed, this_round) = tokio::join!(previous, round);
                (committed, this_round, None)
            };
            let this_round = this_round?;
            if let Err(error) = committed {
                // This round was pushed: let it commit before giving up.
                joined(this_round.await)?;
                return Err(error);
            }
            match next {
                None => {
                    joined(this_round.await)?;
                    return Ok(size);
                }
                Some(Ok(next)) => {
                    committing = Some(this_round);
                    claimed = next;
                }
                Some(Err(error)) => {
                    joined(this_round.await)?;
                    return Err(error);
                }
            }
        }
    }
}

/// A round's record and commit, running while the next round is pushed.
type Committing = AbortOnDropHandle<Result<Drained, RelayError>>;

/// The outcome of a round's commit task.
fn joined(
    outcome: Result<Result<Drained, RelayError>, tokio::task::JoinError>,
) -> Result<Drained, RelayError> {
    outcome.map_err(|error| RelayError::CommitTask(error.to_string()))?
}

/// The `traceparent` a message carries, if any. Reads only that key.
fn message_traceparent(payload: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Traced {
        traceparent: Option<String>,
    }
    serde_json::from_str::<Traced>(payload)
        .ok()
        .and_then(|message| message.traceparent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traceparent_is_read_from_a_message_when_present() {
        let traced = r#"{"job_id":"j","target_lang":"en","attempt":0,"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#;
        assert_eq!(
            message_traceparent(traced).as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(message_traceparent(r#"{"job_id":"j"}"#), None);
        assert_eq!(message_traceparent("not json"), None);
    }
}
