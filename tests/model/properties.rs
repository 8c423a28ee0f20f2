//! What must hold in every reachable state, and what must be reachable at
//! all (so that a check passing is not a model that does nothing).
//!
//! Liveness is phrased over quiescent states (no progress step of a relay,
//! the reaper, the clock or a worker changes anything): the checker's
//! `eventually` misses violations at joins of paths, while an `always` over
//! quiescent states does not.

use stateright::{Model, Property};

use crate::protocol::{Action, Protocol};
use crate::state::{State, Status, Worker};

pub const ONE_WORKER_PER_ATTEMPT: &str = "an attempt is worked by one worker only";
pub const COMPLETED_MEANS_DONE: &str = "a COMPLETED job has its subtask COMPLETED";
pub const PUSHED_ONCE: &str = "an attempt waits in the lane at most once";
pub const NO_PENDING_WITHOUT_MESSAGE: &str =
    "once the reaper has run, every PENDING job has a message";
pub const EVERY_JOB_WORKED: &str = "when all is quiet, every accepted job is final";
pub const POP_JUDGED_FAIRLY: &str = "a message a live worker popped is never re-queued";
pub const DEAD_LETTERS_KEPT: &str = "every dead letter can be redriven";
pub const SOME_JOB_COMPLETES: &str = "a job completes";
pub const SOME_JOB_DEAD_LETTERED: &str = "a job is dead-lettered";
pub const SOME_JOB_RECOVERS: &str = "after Redis lost writes, a job completes at a later attempt";

/// Every property, checks and examples.
pub fn all() -> Vec<Property<Protocol>> {
    vec![
        Property::always(ONE_WORKER_PER_ATTEMPT, |_, s: &State| {
            !s.ghost.stale_write && !s.ghost.double_claim
        }),
        Property::always(COMPLETED_MEANS_DONE, |_, s: &State| {
            s.jobs
                .iter()
                .all(|j| j.status != Status::Completed || j.subtask.status == Status::Completed)
        }),
        Property::always(PUSHED_ONCE, |_, s: &State| {
            let lane = &s.redis.lane;
            lane.iter()
                .enumerate()
                .all(|(i, m)| !lane[i + 1..].contains(m))
        }),
        Property::always(NO_PENDING_WITHOUT_MESSAGE, |m: &Protocol, s: &State| {
            !reaper_settled(m, s)
                || jobs(s)
                    .filter(|(_, j)| j.status == Status::Pending)
                    .all(|(i, _)| s.has_live_message(i))
        }),
        Property::always(EVERY_JOB_WORKED, |m: &Protocol, s: &State| {
            jobs(s).all(|(_, j)| j.status.is_final()) || busy(s) || m.progress_possible(s, |_| true)
        }),
        Property::always(POP_JUDGED_FAIRLY, |_, s: &State| {
            !s.ghost.requeued_from_live_worker
        }),
        Property::always(DEAD_LETTERS_KEPT, |m: &Protocol, s: &State| {
            !reaper_settled(m, s)
                || jobs(s)
                    .filter(|(_, j)| j.status == Status::Failed && j.dead_lettered)
                    .all(|(i, _)| s.has_dead_letter(i))
        }),
        Property::sometimes(SOME_JOB_COMPLETES, |_, s: &State| {
            s.jobs.iter().any(|j| j.status == Status::Completed)
        }),
        Property::sometimes(SOME_JOB_DEAD_LETTERED, |_, s: &State| {
            s.jobs.iter().any(|j| j.dead_lettered)
        }),
        Property::sometimes(SOME_JOB_RECOVERS, |m: &Protocol, s: &State| {
            let lost_writes = s.budget.failovers < m.bounds.failovers
                || s.budget.data_losses < m.bounds.data_losses;
            lost_writes
                && s.jobs
                    .iter()
                    .any(|j| j.status == Status::Completed && j.attempts > 0)
        }),
    ]
}

/// The properties that a discovery of means a violation.
pub fn safety_and_liveness() -> Vec<&'static str> {
    all()
        .into_iter()
        .filter(|p| p.expectation.discovery_is_failure())
        .map(|p| p.name)
        .collect()
}

fn jobs(s: &State) -> impl Iterator<Item = (u8, &crate::state::Job)> {
    s.jobs
        .iter()
        .enumerate()
        .filter(|(_, j)| j.created)
        .map(|(i, j)| (i as u8, j))
}

/// A step that changes the state is certainly possible: a worker in the
/// middle of something, a message to pop, a row to claim, a round to push
/// or commit. (Only a shortcut: the full test tries every step.)
fn busy(s: &State) -> bool {
    s.workers.iter().any(|w| *w != Worker::Idle) || !s.redis.lane.is_empty() || !s.outbox.is_empty()
}

/// Neither a reaper pass, nor time passing, nor a new generation changes
/// anything: whatever the reaper would do within its bound, it has done.
/// A worker holding a message it popped claims it before the timeout
/// passes (the model's timing assumption), so until it has, time cannot
/// pass and the reaper has not had its chance.
fn reaper_settled(m: &Protocol, s: &State) -> bool {
    !s.workers.iter().any(|w| matches!(w, Worker::Holding(_)))
        && [Action::ReaperPass, Action::Tick, Action::StartGeneration]
            .into_iter()
            .all(|a| m.next_state(s, a).is_none_or(|next| next == *s))
}
