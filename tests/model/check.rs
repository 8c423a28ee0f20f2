//! Running the checker: explore a model exhaustively (or until a wanted
//! counterexample turns up), print what was explored and what was found.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use stateright::{Checker, HasDiscoveries, Model, Path};

use crate::config::{Bounds, Fixes};
use crate::protocol::{Action, Protocol};
use crate::state::State;

pub struct Outcome {
    pub unique_states: usize,
    pub elapsed: Duration,
    pub discoveries: HashMap<&'static str, Path<State, Action>>,
}

impl Outcome {
    /// The discovered path for `property`, with its steps printed.
    pub fn counterexample(&self, property: &'static str) -> Option<&Path<State, Action>> {
        let path = self.discoveries.get(property)?;
        println!("counterexample for \"{property}\":");
        for (step, action) in path.clone().into_actions().iter().enumerate() {
            println!("  {:>2}. {action:?}", step + 1);
        }
        println!("  last state: {:#?}", path.last_state());
        Some(path)
    }
}

/// Explores every state reachable within `bounds`; no early stop.
pub fn explore(name: &str, fixes: Fixes, bounds: Bounds) -> Outcome {
    run(name, fixes, bounds, None, None)
}

/// Looks for a counterexample to `property` breadth first, one depth more
/// at a time, so that the one found is a shortest (the checker keeps the
/// last discovery it makes, not the first).
pub fn find(name: &str, fixes: Fixes, bounds: Bounds, property: &'static str) -> Outcome {
    for depth in 2..=MAX_COUNTEREXAMPLE_DEPTH {
        let outcome = run(name, fixes, bounds, Some(property), Some(depth));
        if outcome.discoveries.contains_key(property) {
            return outcome;
        }
    }
    run(name, fixes, bounds, Some(property), None)
}

/// Longer counterexamples are looked for by one unbounded run.
const MAX_COUNTEREXAMPLE_DEPTH: usize = 30;

fn run(
    name: &str,
    fixes: Fixes,
    bounds: Bounds,
    stop_at: Option<&'static str>,
    depth: Option<usize>,
) -> Outcome {
    let started = Instant::now();
    let mut builder = Protocol::new(fixes, bounds).checker().threads(1);
    if let Some(property) = stop_at {
        builder = builder.finish_when(HasDiscoveries::AnyOf(BTreeSet::from([property])));
    }
    if let Some(depth) = depth {
        builder = builder.target_max_depth(depth);
    }
    let checker = builder.spawn_bfs().join();
    let outcome = Outcome {
        unique_states: checker.unique_state_count(),
        elapsed: started.elapsed(),
        discoveries: checker.discoveries(),
    };
    if depth.is_some() && stop_at.is_some_and(|p| !outcome.discoveries.contains_key(p)) {
        return outcome;
    }
    println!(
        "{name}: {} unique states ({} generated, depth {}) in {:.1?}",
        outcome.unique_states,
        checker.state_count(),
        checker.max_depth(),
        outcome.elapsed,
    );
    let mut found: Vec<&str> = outcome.discoveries.keys().copied().collect();
    found.sort_unstable();
    println!("{name}: discoveries: {found:?}");
    outcome
}
