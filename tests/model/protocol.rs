//! The delivery protocol as a `stateright` model: every step a caller, a
//! relay, Redis, the reaper or a worker can take, each one atomic (one
//! transaction, one script, one Redis command), except the worker's
//! subtask statements, which take their snapshot in one step and update
//! their row in another, so that other transactions can commit while they
//! wait for the row's lock.

use stateright::{Model, Property};

use crate::config::{Bounds, Fixes};
use crate::properties;
use crate::state::{
    Job, Lane, Msg, OutboxRow, Publication, Redis, Seen, State, Status, Stmt, Subtask, Worker,
};

/// The model: which fixes are in, and how far to explore.
#[derive(Clone, Debug)]
pub struct Protocol {
    pub fixes: Fixes,
    pub bounds: Bounds,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    // Callers.
    Create(u8),
    Cancel(u8),
    Retry(u8),
    Redrive,
    // Relays.
    RelayClaim(u8),
    RelayPush(u8),
    RelayCommit(u8),
    RelayCrash(u8),
    /// The relay or the reaper finds Redis's state key gone or unknown and
    /// starts a new generation.
    StartGeneration,
    // Redis.
    ReplicaCatchesUp,
    Failover,
    DataLoss,
    MarkerExpires(u8),
    // The reaper and the clock.
    ReaperPass,
    /// `STUCK_JOB_TIMEOUT` passes.
    Tick,
    // Workers.
    Pop(u8),
    Claim(u8),
    /// A statement takes its snapshot.
    Begin(u8),
    /// The statement updates its row (after any lock wait).
    Apply(u8),
    /// The worker's subtask fails: it records FAILED, then fails the job.
    Falter(u8),
    Finish(u8),
    WorkerDies(u8),
}

impl Action {
    /// Steps the system takes by itself; faults and callers are the rest.
    /// A state none of whose progress steps changes anything is quiescent.
    pub fn is_progress(self) -> bool {
        !matches!(
            self,
            Action::Create(_)
                | Action::Cancel(_)
                | Action::Retry(_)
                | Action::Redrive
                | Action::RelayCrash(_)
                | Action::Failover
                | Action::DataLoss
                | Action::MarkerExpires(_)
                | Action::Falter(_)
                | Action::WorkerDies(_)
        )
    }
}

impl Protocol {
    pub fn new(fixes: Fixes, bounds: Bounds) -> Protocol {
        Protocol { fixes, bounds }
    }

    /// The progress steps enabled in `state` that change it.
    pub fn progress_possible(&self, state: &State, only: fn(Action) -> bool) -> bool {
        let mut actions = Vec::new();
        self.actions(state, &mut actions);
        actions
            .into_iter()
            .filter(|a| a.is_progress() && only(*a))
            .any(|a| self.next_state(state, a).is_some_and(|next| next != *state))
    }
}

/// Redis, made ready for a write: while a failover may still come, the
/// replica keeps what it had before the first write it has not caught up
/// with.
fn redis_for_write(state: &mut State) -> &mut Redis {
    if state.budget.failovers > 0 && state.replica.is_none() {
        state.replica = Some(state.redis.clone());
    }
    &mut state.redis
}

fn new_outbox_row(state: &mut State, msg: Msg, lane: Lane) {
    let id = state.next_outbox_id;
    state.next_outbox_id += 1;
    state.outbox.push(OutboxRow {
        id,
        msg,
        lane,
        claimed_by: None,
    });
}

/// A new attempt, queued again (retry, rescue, lost message, redrive): the
/// attempt is copied onto the subtask row, the old publication goes, the
/// new message is an outbox row in the same transaction.
fn hand_out(state: &mut State, job: u8) {
    let j = &mut state.jobs[job as usize];
    j.attempts += 1;
    j.status = Status::Pending;
    j.dead_lettered = false;
    j.quiet = false;
    j.publication = None;
    if j.subtask.status != Status::Completed {
        j.subtask.status = Status::Pending;
    }
    j.subtask.job_attempt = j.attempts as i8;
    let msg = Msg {
        job,
        attempt: j.attempts,
    };
    new_outbox_row(state, msg, Lane::Work);
}

/// Fix 3: hands out again every PENDING job whose current message was
/// recorded at a position above the lane's counter in this generation, and
/// forgets the other positions above it (stale attempts' messages, gone
/// too), so that the next push is not refused again.
fn requeue_above(state: &mut State, counter: u8) {
    for j in 0..state.jobs.len() {
        let job = state.jobs[j];
        let Some(p) = job.publication else { continue };
        if p.generation != state.generation || p.seq <= counter {
            continue;
        }
        if job.status == Status::Pending && p.attempt == job.attempts {
            hand_out(state, j as u8);
        } else {
            state.jobs[j].publication = None;
        }
    }
}

/// Whether a worker's write counted outside its attempt.
fn note_write(state: &mut State, msg: Msg) {
    let job = &state.jobs[msg.job as usize];
    if job.status != Status::InProgress || job.attempts != msg.attempt {
        state.ghost.stale_write = true;
    }
}

impl Model for Protocol {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State::initial(&self.bounds)]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        for (i, job) in s.jobs.iter().enumerate() {
            let i = i as u8;
            // Jobs are created in index order: the model's jobs are
            // interchangeable, so other orders add nothing.
            if !job.created && (i == 0 || s.jobs[i as usize - 1].created) {
                actions.push(Action::Create(i));
            }
            if job.created
                && s.budget.cancels > 0
                && matches!(job.status, Status::Pending | Status::InProgress)
            {
                actions.push(Action::Cancel(i));
            }
            if job.created
                && s.budget.retries > 0
                && matches!(job.status, Status::Failed | Status::Cancelled)
            {
                actions.push(Action::Retry(i));
            }
        }
        if s.budget.redrives > 0 && !s.redis.dead.is_empty() {
            actions.push(Action::Redrive);
        }
        for (r, relay) in s.relays.iter().enumerate() {
            let r = r as u8;
            if relay.claimed.is_empty() {
                if s.outbox.iter().any(|row| row.claimed_by.is_none()) {
                    actions.push(Action::RelayClaim(r));
                }
            } else {
                if relay.pushed.is_none() {
                    actions.push(Action::RelayPush(r));
                } else {
                    actions.push(Action::RelayCommit(r));
                }
                if s.budget.relay_crashes > 0 {
                    actions.push(Action::RelayCrash(r));
                }
            }
        }
        if s.redis.generation != Some(s.generation) {
            actions.push(Action::StartGeneration);
        }
        if s.replica.is_some() {
            actions.push(Action::ReplicaCatchesUp);
            if s.budget.failovers > 0 {
                actions.push(Action::Failover);
            }
        }
        if s.budget.data_losses > 0 {
            actions.push(Action::DataLoss);
        }
        if s.budget.marker_expiries > 0 {
            for id in 0..32u8 {
                if s.redis.markers & (1 << id) != 0 {
                    actions.push(Action::MarkerExpires(id));
                }
            }
        }
        actions.push(Action::ReaperPass);
        actions.push(Action::Tick);
        for (w, worker) in s.workers.iter().enumerate() {
            let w = w as u8;
            match worker {
                Worker::Idle => {
                    if !s.redis.lane.is_empty() {
                        actions.push(Action::Pop(w));
                    }
                }
                Worker::Holding(_) => actions.push(Action::Claim(w)),
                Worker::Working { next, failed, .. } => match next {
                    Some(stmt) => {
                        actions.push(Action::Begin(w));
                        if *stmt == Stmt::Complete && !failed && s.budget.worker_failures > 0 {
                            actions.push(Action::Falter(w));
                        }
                    }
                    None => actions.push(Action::Finish(w)),
                },
                Worker::Waiting { .. } => actions.push(Action::Apply(w)),
            }
            if *worker != Worker::Idle && s.budget.worker_deaths > 0 {
                actions.push(Action::WorkerDies(w));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        let fixes = self.fixes;
        match action {
            Action::Create(j) => {
                s.jobs[j as usize] = Job {
                    created: true,
                    ..Job::UNBORN
                };
                new_outbox_row(&mut s, Msg { job: j, attempt: 0 }, Lane::Work);
            }
            Action::Cancel(j) => {
                s.budget.cancels -= 1;
                let job = &mut s.jobs[j as usize];
                job.status = Status::Cancelled;
                job.quiet = false;
                job.subtask.job_attempt = -1;
            }
            Action::Retry(j) => {
                s.budget.retries -= 1;
                s.jobs[j as usize].rescues = 0;
                hand_out(&mut s, j);
            }
            Action::Redrive => {
                s.budget.redrives -= 1;
                let msg = redis_for_write(&mut s).dead.remove(0);
                let job = &s.jobs[msg.job as usize];
                if job.status == Status::Failed && job.dead_lettered && job.attempts == msg.attempt
                {
                    hand_out(&mut s, msg.job);
                }
            }
            Action::RelayClaim(r) => {
                let mut claimed = Vec::new();
                for row in s.outbox.iter_mut().filter(|row| row.claimed_by.is_none()) {
                    row.claimed_by = Some(r);
                    claimed.push(row.id);
                }
                s.relays[r as usize].claimed = claimed;
            }
            Action::RelayPush(r) => {
                // The push script refuses a generation it does not know.
                if s.redis.generation != Some(s.generation) {
                    return None;
                }
                let generation = s.generation;
                let highest = s
                    .jobs
                    .iter()
                    .filter_map(|j| j.publication)
                    .filter(|p| p.generation == generation)
                    .map(|p| p.seq)
                    .max()
                    .unwrap_or(0);
                if fixes.rollback_detection && s.redis.pushed < highest {
                    // Redis lost writes: the script pushes nothing onto
                    // positions PostgreSQL recorded, and the relay queues
                    // the jobs above the counter again first.
                    let counter = s.redis.pushed;
                    requeue_above(&mut s, counter);
                    return Some(s);
                }
                let rows: Vec<OutboxRow> = s.relays[r as usize]
                    .claimed
                    .iter()
                    .filter_map(|id| s.outbox.iter().find(|row| row.id == *id).copied())
                    .collect();
                let redis = redis_for_write(&mut s);
                let before = redis.pushed;
                let mut skipped = Vec::new();
                for row in &rows {
                    if redis.markers & (1 << row.id) != 0 {
                        skipped.push(row.id);
                        continue;
                    }
                    match row.lane {
                        Lane::Work => {
                            redis.lane.push(row.msg);
                            redis.pushed += 1;
                        }
                        Lane::Dead => redis.dead.push(row.msg),
                    }
                }
                // Positions: in push order; a skipped message gets the
                // counter (its true position is at most that).
                let mut at = before;
                let mut positions = Vec::new();
                for row in &rows {
                    redis.markers |= 1 << row.id;
                    let seq = if skipped.contains(&row.id) {
                        0
                    } else if row.lane == Lane::Work {
                        at += 1;
                        at
                    } else {
                        0
                    };
                    positions.push((row.id, seq));
                }
                let after = redis.pushed;
                for (id, seq) in positions.iter_mut() {
                    if skipped.contains(id) {
                        *seq = after;
                    }
                }
                let relay = &mut s.relays[r as usize];
                relay.pushed = Some(positions);
                relay.generation = generation;
            }
            Action::RelayCommit(r) => {
                let relay = std::mem::take(&mut s.relays[r as usize]);
                let positions = relay.pushed.unwrap_or_default();
                let rows: Vec<(OutboxRow, u8)> = positions
                    .iter()
                    .filter_map(|(id, seq)| {
                        s.outbox
                            .iter()
                            .find(|row| row.id == *id)
                            .map(|row| (*row, *seq))
                    })
                    .collect();
                s.outbox.retain(|row| row.claimed_by != Some(r));
                for (row, seq) in rows {
                    if row.lane != Lane::Work {
                        continue;
                    }
                    let job = &mut s.jobs[row.msg.job as usize];
                    // The newer attempt wins.
                    if job.publication.is_none_or(|p| row.msg.attempt >= p.attempt) {
                        job.publication = Some(Publication {
                            attempt: row.msg.attempt,
                            seq,
                            generation: relay.generation,
                            overdue: false,
                            seen_popped: Seen::Never,
                        });
                    }
                }
            }
            Action::RelayCrash(r) => {
                s.budget.relay_crashes -= 1;
                s.relays[r as usize] = Default::default();
                for row in s.outbox.iter_mut() {
                    if row.claimed_by == Some(r) {
                        row.claimed_by = None;
                    }
                }
            }
            Action::StartGeneration => {
                if s.redis.generation == Some(s.generation) {
                    return None;
                }
                s.generation += 1;
                let generation = s.generation;
                let dead: Vec<Msg> = if fixes.dead_lane_rebuilt {
                    s.jobs
                        .iter()
                        .enumerate()
                        .filter(|(_, j)| j.status == Status::Failed && j.dead_lettered)
                        .map(|(i, j)| Msg {
                            job: i as u8,
                            attempt: j.attempts,
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let redis = redis_for_write(&mut s);
                redis.generation = Some(generation);
                for msg in dead {
                    if !redis.dead.contains(&msg) {
                        redis.dead.push(msg);
                    }
                }
            }
            Action::ReplicaCatchesUp => s.replica = None,
            Action::Failover => {
                s.budget.failovers -= 1;
                s.redis = s.replica.take()?;
            }
            Action::DataLoss => {
                s.budget.data_losses -= 1;
                s.redis = Redis::default();
                s.replica = None;
            }
            Action::MarkerExpires(id) => {
                if fixes.marker_outlives_retries && s.outbox.iter().any(|row| row.id == id) {
                    return None;
                }
                s.budget.marker_expiries -= 1;
                redis_for_write(&mut s).markers &= !(1 << id);
            }
            Action::ReaperPass => self.reaper_pass(&mut s),
            Action::Tick => {
                // A live worker claims what it popped within the timeout.
                if s.workers.iter().any(|w| matches!(w, Worker::Holding(_))) {
                    return None;
                }
                for job in s.jobs.iter_mut() {
                    if job.status == Status::InProgress {
                        job.quiet = true;
                    }
                    if let Some(p) = job.publication.as_mut() {
                        p.overdue = true;
                        if p.seen_popped == Seen::Recently {
                            p.seen_popped = Seen::LongAgo;
                        }
                    }
                }
            }
            Action::Pop(w) => {
                let msg = redis_for_write(&mut s).lane.remove(0);
                s.workers[w as usize] = Worker::Holding(msg);
            }
            Action::Claim(w) => {
                let Worker::Holding(msg) = s.workers[w as usize] else {
                    return None;
                };
                let job = &mut s.jobs[msg.job as usize];
                if job.status == Status::Pending && job.attempts == msg.attempt {
                    job.status = Status::InProgress;
                    job.quiet = false;
                    let next = (job.subtask.status != Status::Completed).then_some(Stmt::Start);
                    let bit = 1u16 << msg.attempt;
                    if s.claims[msg.job as usize] & bit != 0 {
                        s.ghost.double_claim = true;
                    }
                    s.claims[msg.job as usize] |= bit;
                    s.workers[w as usize] = Worker::Working {
                        msg,
                        next,
                        failed: false,
                    };
                } else {
                    s.workers[w as usize] = Worker::Idle;
                }
            }
            Action::Begin(w) => {
                let Worker::Working {
                    msg,
                    next: Some(stmt),
                    ..
                } = s.workers[w as usize]
                else {
                    return None;
                };
                let job = &s.jobs[msg.job as usize];
                // Without fix 1 the guard is `EXISTS (SELECT 1 FROM
                // translation_jobs WHERE ... attempts = $a)`, answered from
                // this snapshot and not re-checked after a lock wait.
                let snapshot_ok = fixes.guard_on_updated_row
                    || (job.status == Status::InProgress && job.attempts == msg.attempt);
                s.workers[w as usize] = Worker::Waiting {
                    msg,
                    stmt,
                    snapshot_ok,
                };
            }
            Action::Apply(w) => {
                let Worker::Waiting {
                    msg,
                    stmt,
                    snapshot_ok,
                } = s.workers[w as usize]
                else {
                    return None;
                };
                // What PostgreSQL re-checks on the newest version of the row.
                let sub = s.jobs[msg.job as usize].subtask;
                let row_ok = (!fixes.guard_on_updated_row || sub.job_attempt == msg.attempt as i8)
                    && (stmt == Stmt::Start || sub.status == Status::InProgress);
                if !(snapshot_ok && row_ok) {
                    // Matched nothing: the job is not ours any more.
                    s.workers[w as usize] = Worker::Idle;
                    return Some(s);
                }
                note_write(&mut s, msg);
                let job = &mut s.jobs[msg.job as usize];
                job.quiet = false;
                let (status, next, failed) = match stmt {
                    Stmt::Start => (Status::InProgress, Some(Stmt::Complete), false),
                    Stmt::Complete => (Status::Completed, None, false),
                    Stmt::Fail => (Status::Failed, None, true),
                };
                job.subtask = Subtask {
                    status,
                    ..job.subtask
                };
                s.workers[w as usize] = Worker::Working { msg, next, failed };
            }
            Action::Falter(w) => {
                let Worker::Working { msg, .. } = s.workers[w as usize] else {
                    return None;
                };
                s.budget.worker_failures -= 1;
                s.workers[w as usize] = Worker::Working {
                    msg,
                    next: Some(Stmt::Fail),
                    failed: true,
                };
            }
            Action::Finish(w) => {
                let Worker::Working { msg, failed, .. } = s.workers[w as usize] else {
                    return None;
                };
                // Guarded on the job row itself, which PostgreSQL re-checks.
                let job = &mut s.jobs[msg.job as usize];
                if job.status == Status::InProgress && job.attempts == msg.attempt {
                    job.status = if failed {
                        Status::Failed
                    } else {
                        Status::Completed
                    };
                }
                s.workers[w as usize] = Worker::Idle;
            }
            Action::WorkerDies(w) => {
                s.budget.worker_deaths -= 1;
                s.workers[w as usize] = Worker::Idle;
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        properties::all()
    }

    fn within_boundary(&self, state: &State) -> bool {
        state
            .jobs
            .iter()
            .all(|j| j.attempts <= self.bounds.max_attempt)
    }
}

impl Protocol {
    /// One reaper pass, in one step: stuck jobs first, then lost messages.
    fn reaper_pass(&self, s: &mut State) {
        for j in 0..s.jobs.len() {
            let job = s.jobs[j];
            if job.status != Status::InProgress || !job.quiet {
                continue;
            }
            s.jobs[j].rescues += 1;
            if s.jobs[j].rescues > self.bounds.max_rescues {
                let job = &mut s.jobs[j];
                job.status = Status::Failed;
                job.dead_lettered = true;
                job.quiet = false;
                job.subtask.job_attempt = -1;
                let msg = Msg {
                    job: j as u8,
                    attempt: job.attempts,
                };
                new_outbox_row(s, msg, Lane::Dead);
            } else {
                hand_out(s, j as u8);
            }
        }
        // Lost messages are judged only under a generation both sides know.
        if s.redis.generation != Some(s.generation) {
            return;
        }
        let pushed = s.redis.pushed;
        let popped = s.redis.popped();
        for j in 0..s.jobs.len() {
            let job = s.jobs[j];
            let Some(p) = job.publication else { continue };
            if job.status != Status::Pending || p.attempt != job.attempts {
                continue;
            }
            let gone = p.generation != s.generation || p.seq > pushed;
            let was_popped = p.seq <= popped;
            let popped_long_ago = was_popped
                && if self.fixes.judge_pop_from_pop_time {
                    p.seen_popped == Seen::LongAgo
                } else {
                    p.overdue
                };
            if gone || popped_long_ago {
                let current = Msg {
                    job: j as u8,
                    attempt: job.attempts,
                };
                if !gone && s.workers.contains(&Worker::Holding(current)) {
                    s.ghost.requeued_from_live_worker = true;
                }
                hand_out(s, j as u8);
                continue;
            }
            if self.fixes.judge_pop_from_pop_time
                && let Some(p) = s.jobs[j].publication.as_mut()
            {
                p.seen_popped = match (was_popped, p.seen_popped) {
                    (false, _) => Seen::Never,
                    (true, Seen::Never) => Seen::Recently,
                    (true, seen) => seen,
                };
            }
        }
    }
}
