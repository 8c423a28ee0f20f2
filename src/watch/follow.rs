//! One watch stream: the job as read, then every change the triggers
//! report, applied to that state in commit order, until the job reaches a
//! terminal status, the client leaves or the service stops.
//!
//! No read per change: the events carry the changed row. The events of one
//! transaction that are already queued are applied together and sent as one
//! state (cancelling a job of 1,000 subtasks sends one state, not 1,001);
//! each transaction's state is sent, in order. The job is read again only
//! when the stream may have missed something: it fell more than
//! `hub::EVENTS_PER_JOB` changes behind, the LISTEN connection was
//! re-opened, or an event could not be applied (an error text too long for
//! a notification, a subtask the read did not have, a new attempt); and
//! once when events brought the job to COMPLETED or CANCELLED, since the
//! rest of that transaction's events may still be on their way and the last
//! state sent must be whole. The client then gets a fresh snapshot of the
//! job, never a silent skip. Those reads queue for one of the hub's places
//! (`hub::REREADS_AT_ONCE`).
//!
//! The stream keeps one copy of the job: a version counts its changes, and
//! a state is sent when its version is not the one sent last.

use tokio::sync::{
    broadcast::error::{RecvError, TryRecvError},
    mpsc,
};
use tokio_util::sync::CancellationToken;

use super::{
    event::{Change, micros_to_time},
    hub::{HubEvent, Subscription},
};
use crate::jobs::{Job, JobError, JobStatus, StoredStatus, TxSnapshot};

/// Whether, and how, the stream must read its job again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ReadAgain {
    No,
    /// Every stream was told to (the LISTEN connection reopened): after a
    /// random pause.
    Staggered,
    /// This stream missed or could not apply something: at once.
    Now,
}

/// The job as the stream holds it.
struct Followed {
    job: Job,
    /// What the last read saw: events of those transactions are in `job`.
    seen: TxSnapshot,
    /// How many times `job` changed since the stream opened.
    version: u64,
    /// `job` is as read, with no event applied since.
    as_read: bool,
}

impl Followed {
    /// Applies one event's change; whether the job must be read instead.
    fn take(&mut self, change: &Change) -> ReadAgain {
        if self.seen.saw(change.xid()) {
            return ReadAgain::No;
        }
        match apply(&mut self.job, change) {
            Some(true) => {
                self.version += 1;
                self.as_read = false;
                ReadAgain::No
            }
            Some(false) => ReadAgain::No,
            None => ReadAgain::Now,
        }
    }

    fn replace(&mut self, job: Job, snapshot: TxSnapshot) {
        if job != self.job {
            self.job = job;
            self.version += 1;
        }
        self.seen = snapshot;
        self.as_read = true;
    }
}

/// Feeds one stream through `sender`, turning each state (or a failed read)
/// into the stream's item with `item`. `subscription`, `job` and
/// `snapshot` come from `WatchHub::open`.
pub async fn follow<T: Send + 'static>(
    mut subscription: Subscription,
    job: Job,
    snapshot: TxSnapshot,
    sender: mpsc::Sender<T>,
    item: impl Fn(Result<&Job, JobError>) -> T + Send,
    shutdown: CancellationToken,
) {
    let job_id = job.id;
    let hub = subscription.hub().clone();
    let mut state = Followed {
        job,
        seen: snapshot,
        version: 1,
        as_read: true,
    };
    let mut sent: u64 = 0;
    let mut read_again = ReadAgain::No;
    // An event taken from the queue that belongs to the next transaction.
    let mut next: Option<Result<HubEvent, RecvError>> = None;
    loop {
        let confirm = state.job.status.is_terminal() && !state.as_read;
        if confirm {
            read_again = ReadAgain::Now;
        }
        if read_again != ReadAgain::No {
            let read = tokio::select! {
                () = shutdown.cancelled() => return,
                // Boxed: the read is rare, and held inline its state would
                // be most of every idle stream's task.
                read = Box::pin(hub.read_again(job_id, read_again == ReadAgain::Staggered)) => read,
            };
            read_again = ReadAgain::No;
            match read {
                Ok((job, snapshot)) => state.replace(job, snapshot),
                // The terminal status came from a committed change: send it
                // as the events built it.
                Err(error) if confirm => {
                    tracing::debug!(job_id = %job_id, error = %error, "cannot read a finished job again; sending it as its events left it");
                    state.as_read = true;
                }
                Err(error) => {
                    let _ = sender.send(item(Err(error))).await;
                    return;
                }
            }
        }
        if state.version != sent {
            tokio::select! {
                () = shutdown.cancelled() => return,
                done = sender.send(item(Ok(&state.job))) => if done.is_err() { return },
            }
            sent = state.version;
        }
        if state.job.status.is_terminal() {
            return;
        }
        let event = match next.take() {
            Some(event) => event,
            None => tokio::select! {
                () = shutdown.cancelled() => return,
                () = sender.closed() => return,
                event = subscription.events.recv() => event,
            },
        };
        let xid = match event {
            Ok(HubEvent::Change(change)) => {
                read_again = read_again.max(state.take(&change));
                Some(change.xid())
            }
            Ok(HubEvent::Resync) => {
                read_again = read_again.max(ReadAgain::Staggered);
                None
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::debug!(job_id = %job_id, missed, "watch stream fell behind; reading the job again");
                read_again = ReadAgain::Now;
                None
            }
            Err(RecvError::Closed) => return,
        };
        // The rest of the same transaction, as far as it is queued: one
        // state for all of it.
        let Some(xid) = xid else { continue };
        loop {
            match subscription.events.try_recv() {
                Ok(HubEvent::Change(change)) if change.xid() == xid => {
                    read_again = read_again.max(state.take(&change));
                }
                Ok(other) => {
                    next = Some(Ok(other));
                    break;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(missed)) => {
                    next = Some(Err(RecvError::Lagged(missed)));
                    break;
                }
                Err(TryRecvError::Closed) => {
                    next = Some(Err(RecvError::Closed));
                    break;
                }
            }
        }
    }
}

/// Applies one change to the job: whether it changed anything, or `None`
/// when it cannot be applied and the job must be read again.
fn apply(job: &mut Job, change: &Change) -> Option<bool> {
    match change {
        Change::Job(change) => {
            let (false, Some(status), Some(updated_at)) = (
                change.reread,
                JobStatus::parse(&change.status),
                micros_to_time(change.updated_at),
            ) else {
                return None;
            };
            // A new attempt (a retry's schedule) or a failure (its count)
            // changes columns the event does not carry.
            if change.attempts != job.attempts || status == JobStatus::Failed {
                return None;
            }
            let changed =
                job.status != status || job.error != change.error || job.updated_at != updated_at;
            job.status = status;
            job.error.clone_from(&change.error);
            job.updated_at = updated_at;
            Some(changed)
        }
        Change::Subtask(change) => {
            let (false, Some(status), Some(updated_at)) = (
                change.reread,
                JobStatus::parse(&change.status),
                micros_to_time(change.updated_at),
            ) else {
                return None;
            };
            let subtask = job
                .subtasks
                .iter_mut()
                .find(|s| s.id == change.subtask_id)?;
            let changed = subtask.status != StoredStatus(status)
                || subtask.attempts != change.attempts
                || subtask.error != change.error
                || subtask.updated_at != updated_at;
            subtask.status = StoredStatus(status);
            subtask.attempts = change.attempts;
            subtask.error.clone_from(&change.error);
            subtask.updated_at = updated_at;
            // The heartbeat trigger moved the job's updated_at with it.
            let job_moved = updated_at > job.updated_at;
            job.updated_at = job.updated_at.max(updated_at);
            Some(changed || job_moved)
        }
    }
}
