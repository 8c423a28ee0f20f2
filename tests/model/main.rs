//! The delivery protocol, model-checked (issue 16, item 10): the outbox,
//! the relays, Redis, the reaper, workers and callers as an abstract model
//! that `stateright` explores exhaustively within small bounds.
//!
//! With every fix of issue 16 in, no reachable state violates a property;
//! with any one fix taken out, the checker finds the counterexample that
//! fix exists for. `cargo test --test model -- --nocapture` prints the
//! state counts and the counterexamples' steps.
//!
//! # Layout
//! - `config`: the fix switches and the bounds.
//! - `state`: PostgreSQL's rows, Redis's keys, relays, workers, budgets.
//! - `protocol`: the actions and what each does (the `Model`).
//! - `properties`: what must always hold, and what must be reachable.
//! - `check`: running the checker and printing what it found.

mod check;
mod config;
mod properties;
mod protocol;
mod state;

use config::{Bounds, Fixes};
use properties::*;

/// Asserts that an exhaustive run found no violation and reached the
/// examples (so the model is not vacuous).
fn assert_holds(name: &str, bounds: Bounds, examples: &[&'static str]) {
    let outcome = check::explore(name, Fixes::ALL, bounds);
    for property in properties::safety_and_liveness() {
        assert!(
            outcome.counterexample(property).is_none(),
            "{name}: \"{property}\" is violated"
        );
    }
    for example in examples {
        assert!(
            outcome.discoveries.contains_key(example),
            "{name}: never reached \"{example}\""
        );
    }
}

/// Asserts that with `fixes` the checker finds a counterexample for
/// `property`, and prints it.
fn assert_finds(name: &str, fixes: Fixes, bounds: Bounds, property: &'static str) {
    let outcome = check::find(name, fixes, bounds, property);
    assert!(
        outcome.counterexample(property).is_some(),
        "{name}: no counterexample for \"{property}\""
    );
}

/// Callers and workers: cancels, retries, redrives, workers that die and
/// fail, the reaper rescuing and dead-lettering.
const CALLERS_AND_WORKERS: Bounds = Bounds {
    relays: 1,
    worker_deaths: 1,
    worker_failures: 1,
    cancels: 1,
    retries: 1,
    redrives: 1,
    ..Bounds::CALM
};

/// Two relays, one crashing between its push and its commit, and a push
/// marker expiring.
const RELAY_CRASHES: Bounds = Bounds {
    relay_crashes: 1,
    marker_expiries: 1,
    worker_deaths: 1,
    ..Bounds::CALM
};

/// Two jobs and a failover to a replica that missed the last writes.
const FAILOVER: Bounds = Bounds {
    jobs: 2,
    relays: 1,
    workers: 1,
    // No dead letters here: see
    // `even_with_every_fix_a_failover_can_drop_a_dead_letter`.
    max_rescues: 9,
    max_attempt: 2,
    failovers: 1,
    ..Bounds::CALM
};

/// Redis losing its data, with a dead letter in it.
const DATA_LOSS: Bounds = Bounds {
    relays: 1,
    max_rescues: 0,
    data_losses: 1,
    redrives: 1,
    worker_deaths: 1,
    ..Bounds::CALM
};

#[test]
fn with_every_fix_callers_and_workers_break_nothing() {
    assert_holds(
        "callers and workers",
        CALLERS_AND_WORKERS,
        &[SOME_JOB_COMPLETES, SOME_JOB_DEAD_LETTERED],
    );
}

#[test]
fn with_every_fix_relay_crashes_and_expired_markers_break_nothing() {
    assert_holds("relay crashes", RELAY_CRASHES, &[SOME_JOB_COMPLETES]);
}

#[test]
fn with_every_fix_a_failover_that_drops_writes_breaks_nothing() {
    assert_holds(
        "failover",
        FAILOVER,
        &[SOME_JOB_COMPLETES, SOME_JOB_RECOVERS],
    );
}

#[test]
fn with_every_fix_redis_losing_its_data_breaks_nothing() {
    assert_holds(
        "data loss",
        DATA_LOSS,
        &[
            SOME_JOB_COMPLETES,
            SOME_JOB_DEAD_LETTERED,
            SOME_JOB_RECOVERS,
        ],
    );
}

#[test]
fn without_fix_1_a_stale_worker_writes_after_a_cancel() {
    assert_finds(
        "fix 1 off",
        Fixes {
            guard_on_updated_row: false,
            ..Fixes::ALL
        },
        Bounds {
            cancels: 1,
            retries: 1,
            ..Bounds::CALM
        },
        ONE_WORKER_PER_ATTEMPT,
    );
}

#[test]
fn without_fix_3_a_message_lost_in_a_failover_hides_behind_a_later_push() {
    assert_finds(
        "fix 3 off",
        Fixes {
            rollback_detection: false,
            ..Fixes::ALL
        },
        Bounds {
            jobs: 2,
            failovers: 1,
            ..Bounds::CALM
        },
        NO_PENDING_WITHOUT_MESSAGE,
    );
}

#[test]
fn without_fix_4_an_expired_marker_lets_a_retried_push_duplicate() {
    assert_finds(
        "fix 4 off",
        Fixes {
            marker_outlives_retries: false,
            ..Fixes::ALL
        },
        Bounds {
            relay_crashes: 1,
            marker_expiries: 1,
            ..Bounds::CALM
        },
        PUSHED_ONCE,
    );
}

#[test]
fn without_fix_6_a_healthy_worker_loses_an_old_message_it_just_popped() {
    assert_finds(
        "fix 6 off",
        Fixes {
            judge_pop_from_pop_time: false,
            ..Fixes::ALL
        },
        Bounds::CALM,
        POP_JUDGED_FAIRLY,
    );
}

#[test]
fn without_fix_7_dead_letters_vanish_with_redis_data() {
    assert_finds(
        "fix 7 off",
        Fixes {
            dead_lane_rebuilt: false,
            ..Fixes::ALL
        },
        Bounds {
            max_rescues: 0,
            data_losses: 1,
            ..Bounds::CALM
        },
        DEAD_LETTERS_KEPT,
    );
}

#[test]
fn even_with_every_fix_a_failover_can_drop_a_dead_letter() {
    // Fix 7 rebuilds the dead lane when a new generation starts; a
    // failover to a replica that missed the dead letter's push starts none
    // (with `REDIS_WAIT_REPLICAS=0`). Redriving from PostgreSQL's record of
    // the dead-lettered jobs would close this too.
    assert_finds(
        "failover and a dead letter",
        Fixes::ALL,
        Bounds {
            relays: 1,
            workers: 1,
            max_rescues: 0,
            failovers: 1,
            ..Bounds::CALM
        },
        DEAD_LETTERS_KEPT,
    );
}

#[test]
fn even_with_every_fix_a_push_in_flight_during_a_failover_can_hide_behind_a_later_push() {
    // Relay 1 pushes job A and has not committed; a failover drops the
    // push; relay 0 pushes job B onto A's position (PostgreSQL has recorded
    // no position yet, so the counter is not below one); relay 1 commits
    // A's position. A looks waiting until B is popped and the popped
    // message is judged (`STUCK_JOB_TIMEOUT`): no counter tells it; what
    // sits at a position would.
    assert_finds(
        "two relays and a failover",
        Fixes::ALL,
        Bounds {
            relays: 2,
            max_attempt: 1,
            ..FAILOVER
        },
        NO_PENDING_WITHOUT_MESSAGE,
    );
}
