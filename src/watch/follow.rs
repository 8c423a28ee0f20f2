//! One watch stream (gRPC or HTTP events): the job as read, then every
//! change the triggers report, applied to that state in order, until the job
//! reaches a terminal status, the client leaves or the service stops.
//!
//! No read per change: the events carry the changed row. The job is read
//! again only when the stream may have missed something: it fell more than
//! `hub::EVENTS_PER_JOB` changes behind, the LISTEN connection was re-opened,
//! or an event could not be applied (an error text too long for a
//! notification, a subtask the read did not have). The client then gets a
//! fresh snapshot of the job, never a silent skip. And once at the end: a
//! change that makes the job final is read back, so that the last state
//! holds what its transaction did to the subtasks too.

use sqlx::PgPool;
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_util::sync::CancellationToken;

use super::{
    event::{Change, micros_to_time},
    hub::{HubEvent, Subscription},
};
use crate::jobs::{self, Job, JobError, JobStatus, StoredStatus, TxSnapshot};

/// Feeds one stream through `sender`, turning each state (or a failed read)
/// into the stream's item with `item`.
#[allow(clippy::too_many_arguments)]
pub async fn follow<T: Send + 'static>(
    pool: PgPool,
    mut subscription: Subscription,
    job: Job,
    snapshot: TxSnapshot,
    sender: mpsc::Sender<T>,
    item: impl Fn(Result<&Job, JobError>) -> T + Send,
    shutdown: CancellationToken,
) {
    let job_id = job.id;
    let mut current = job;
    let mut seen = snapshot;
    let mut last_sent: Option<Job> = None;
    loop {
        if last_sent.as_ref() != Some(&current) {
            tokio::select! {
                () = shutdown.cancelled() => return,
                sent = sender.send(item(Ok(&current))) => if sent.is_err() { return },
            }
            last_sent = Some(current.clone());
        }
        if current.status.is_terminal() {
            return;
        }
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            () = sender.closed() => return,
            event = subscription.events.recv() => event,
        };
        let applied = match event {
            Ok(HubEvent::Change(change)) => seen.saw(change.xid()) || apply(&mut current, &change),
            Ok(HubEvent::Resync) => false,
            Err(RecvError::Lagged(missed)) => {
                tracing::debug!(job_id = %job_id, missed, "watch stream fell behind; reading the job again");
                false
            }
            Err(RecvError::Closed) => return,
        };
        // A change that makes the job final is read back rather than sent as
        // applied: the stream ends with that state, and the same transaction
        // may change the subtasks after the job (a cancel does), whose events
        // would come after the end. The change was notified, so it has
        // committed and the read sees all of it.
        if !applied || current.status.is_terminal() {
            // The stream was opened inside the caller's scope, and a job's owner
            // never changes.
            match jobs::read_job_with_snapshot(&pool, job_id, &jobs::Scope::All).await {
                Ok((job, snapshot)) => {
                    current = job;
                    seen = snapshot;
                }
                Err(error) => {
                    let _ = sender.send(item(Err(error))).await;
                    return;
                }
            }
        }
    }
}

/// Applies one change to the job; false when it cannot be applied and the
/// job must be read again.
fn apply(job: &mut Job, change: &Change) -> bool {
    match change {
        Change::Job(change) => {
            let (false, Some(status), Some(updated_at)) = (
                change.reread,
                JobStatus::parse(&change.status),
                micros_to_time(change.updated_at),
            ) else {
                return false;
            };
            // A new attempt (a retry's schedule) or a failure (its count)
            // changes columns the event does not carry.
            if change.attempts != job.attempts || status == JobStatus::Failed {
                return false;
            }
            job.status = status;
            job.error = change.error.clone();
            job.updated_at = updated_at;
            true
        }
        Change::Subtask(change) => {
            let (false, Some(status), Some(updated_at)) = (
                change.reread,
                JobStatus::parse(&change.status),
                micros_to_time(change.updated_at),
            ) else {
                return false;
            };
            let Some(subtask) = job.subtasks.iter_mut().find(|s| s.id == change.subtask_id) else {
                return false;
            };
            subtask.status = StoredStatus(status);
            subtask.attempts = change.attempts;
            subtask.error = change.error.clone();
            subtask.updated_at = updated_at;
            // The heartbeat trigger moved the job's updated_at with it.
            job.updated_at = job.updated_at.max(updated_at);
            true
        }
    }
}
