//! Supervision of the background loops (relay, reaper, listener, database
//! probe): a loop that returns or panics while the service runs is logged
//! and started again with backoff, and each loop's heartbeat feeds the
//! `liveness` health check.
//!
//! A loop beats at least once per round of its work; every call it makes is
//! bounded in time, so a loop that stops beating is stuck on a bug, and one
//! that keeps failing right after each restart is broken: either makes
//! liveness NOT_SERVING, and Kubernetes restarts the process.

use std::{
    future::Future,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

// Tokio's clock, so tests can pause it.
use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};

/// First and longest pause before a failed loop is started again.
const RESTART_MIN: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A loop that ran this long before failing counts as healthy again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// Failures in a row after which the loop counts as broken.
const BROKEN_AFTER: u32 = 5;

struct LoopState {
    name: &'static str,
    /// Longest a healthy loop goes without beating.
    max_quiet: Duration,
    /// Milliseconds since the registry's origin at the last beat.
    last_beat: AtomicU64,
    /// Failures since the loop last ran healthily.
    failures: AtomicU32,
}

/// Every supervised loop of the process, for the liveness check.
#[derive(Clone)]
pub struct Liveness {
    origin: Instant,
    loops: Arc<Mutex<Vec<Arc<LoopState>>>>,
}

/// A loop's heartbeat. Cheap to clone.
#[derive(Clone)]
pub struct Beat {
    origin: Instant,
    state: Arc<LoopState>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new()
    }
}

impl Liveness {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            loops: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Registers a loop that beats at least every `max_quiet` while healthy.
    pub fn register(&self, name: &'static str, max_quiet: Duration) -> Beat {
        let state = Arc::new(LoopState {
            name,
            max_quiet,
            last_beat: AtomicU64::new(elapsed_millis(self.origin)),
            failures: AtomicU32::new(0),
        });
        self.loops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(state.clone());
        Beat {
            origin: self.origin,
            state,
        }
    }

    /// `Ok` when every registered loop beat recently and is not failing
    /// over and over; otherwise why not, naming the loop.
    pub fn check(&self) -> Result<(), String> {
        let now = elapsed_millis(self.origin);
        let loops = self.loops.lock().unwrap_or_else(PoisonError::into_inner);
        for state in loops.iter() {
            let quiet =
                Duration::from_millis(now.saturating_sub(state.last_beat.load(Ordering::Relaxed)));
            if quiet > state.max_quiet {
                return Err(format!(
                    "the {} loop has not made progress for {}",
                    state.name,
                    humantime::format_duration(Duration::from_secs(quiet.as_secs()))
                ));
            }
            let failures = state.failures.load(Ordering::Relaxed);
            if failures >= BROKEN_AFTER {
                return Err(format!(
                    "the {} loop failed {failures} times in a row",
                    state.name
                ));
            }
        }
        Ok(())
    }
}

impl Beat {
    /// A heartbeat nobody watches (tests that run a loop by hand).
    pub fn detached(name: &'static str) -> Self {
        Liveness::new().register(name, Duration::MAX)
    }

    /// Records progress.
    pub fn beat(&self) {
        self.state
            .last_beat
            .store(elapsed_millis(self.origin), Ordering::Relaxed);
    }
}

fn elapsed_millis(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Runs the loop `make` builds until `token` is cancelled. When it returns
/// or panics before that, logs why and starts a new one after a pause that
/// doubles with each failure in a row (100 ms up to 30 s).
pub async fn supervise<F, Fut>(token: CancellationToken, beat: Beat, mut make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let name = beat.state.name;
    loop {
        beat.beat();
        let started = Instant::now();
        // Aborted if the supervisor itself is dropped (shutdown timeout).
        let outcome = AbortOnDropHandle::new(tokio::spawn(make())).await;
        if token.is_cancelled() {
            return;
        }
        let failures = if started.elapsed() >= HEALTHY_RUN {
            1
        } else {
            beat.state
                .failures
                .load(Ordering::Relaxed)
                .saturating_add(1)
        };
        beat.state.failures.store(failures, Ordering::Relaxed);
        match outcome {
            Ok(()) => tracing::error!(
                task = name,
                failures,
                "background loop stopped by itself; starting it again"
            ),
            Err(error) if error.is_panic() => {
                let panic = error.into_panic();
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-text panic".to_owned());
                tracing::error!(task = name, failures, panic = %message, "background loop panicked; starting it again");
            }
            Err(error) => {
                tracing::error!(task = name, failures, error = %error, "background loop was cancelled; starting it again")
            }
        }
        let exponent = failures.saturating_sub(1).min(16);
        let pause = RESTART_MIN.saturating_mul(1 << exponent).min(RESTART_MAX);
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_loop_is_restarted_until_shutdown() {
        let liveness = Liveness::new();
        let beat = liveness.register("test", Duration::from_secs(3600));
        let token = CancellationToken::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let supervisor = tokio::spawn(supervise(token.clone(), beat, move || {
            let counted = counted.clone();
            async move {
                if counted.fetch_add(1, Ordering::SeqCst) < 3 {
                    panic!("boom");
                }
                std::future::pending::<()>().await;
            }
        }));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            4,
            "three panics, then a run that lasts"
        );
        assert!(
            liveness.check().is_ok(),
            "three failures are not yet broken"
        );
        token.cancel();
        // The lasting run ignores the token; the supervisor is aborted with it.
        supervisor.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_keeps_failing_makes_liveness_fail() {
        let liveness = Liveness::new();
        let beat = liveness.register("relay", Duration::from_secs(3600));
        let token = CancellationToken::new();
        let supervisor = tokio::spawn(supervise(token.clone(), beat, || async {}));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let error = liveness.check().unwrap_err();
        assert!(error.contains("relay"), "{error}");
        token.cancel();
        supervisor.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_stops_beating_makes_liveness_fail() {
        let liveness = Liveness::new();
        let beat = liveness.register("reaper", Duration::from_secs(60));
        beat.beat();
        assert!(liveness.check().is_ok());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(liveness.check().unwrap_err().contains("reaper"));
        beat.beat();
        assert!(liveness.check().is_ok());
    }
}
