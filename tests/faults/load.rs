//! Create load: callers that send CreateTranslationJob with a deadline and
//! record every outcome. Each request carries a fresh `novel_id`, so a
//! create whose answer never came (the service was killed, the call timed
//! out) can still be looked up in the database afterwards.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::task::JoinHandle;
use tonic::{Code, transport::Channel};
use translation_jobs::api::proto::{
    CreateTranslationJobRequest, Priority, SubtaskSpec,
    translation_job_service_client::TranslationJobServiceClient,
};
use uuid::Uuid;

/// One create as the caller saw it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub novel_id: Uuid,
    /// Subtasks the request asked for.
    pub subtasks: usize,
    /// The job's id when acknowledged, else the status code.
    pub result: Result<Uuid, Code>,
    pub started: Instant,
    pub latency: Duration,
}

/// Every create of a test.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    pub outcomes: Vec<Outcome>,
}

impl Ledger {
    pub fn acknowledged(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(|o| o.result.is_ok())
    }

    pub fn unacknowledged(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(|o| o.result.is_err())
    }

    /// Errors by status code.
    pub fn errors(&self) -> BTreeMap<String, usize> {
        let mut errors = BTreeMap::new();
        for outcome in self.unacknowledged() {
            if let Err(code) = outcome.result {
                *errors.entry(format!("{code:?}")).or_default() += 1;
            }
        }
        errors
    }

    /// A percentile of the latency of acknowledged creates started within
    /// `window` (all when None).
    pub fn ack_latency(&self, p: f64, window: Option<(Instant, Instant)>) -> Duration {
        let mut latencies: Vec<Duration> = self
            .acknowledged()
            .filter(|o| window.is_none_or(|(from, to)| o.started >= from && o.started < to))
            .map(|o| o.latency)
            .collect();
        percentile(&mut latencies, p)
    }

    /// Acknowledged creates started within the window.
    pub fn acknowledged_between(&self, from: Instant, to: Instant) -> usize {
        self.acknowledged()
            .filter(|o| o.started >= from && o.started < to)
            .count()
    }
}

pub fn percentile(values: &mut [Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort_unstable();
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[rank.min(values.len() - 1)]
}

/// How the callers behave.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub callers: usize,
    /// Pause after each call, so a small machine is not saturated.
    pub pause: Duration,
    /// Deadline of each call (gRPC timeout).
    pub deadline: Duration,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            callers: 4,
            pause: Duration::from_millis(5),
            deadline: Duration::from_secs(3),
        }
    }
}

/// Callers running until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub acknowledged: Arc<AtomicU64>,
    callers: Vec<JoinHandle<Vec<Outcome>>>,
}

/// A create request with a fresh novel id and 1 to 3 subtasks.
pub fn request(novel_id: Uuid, subtasks: usize) -> CreateTranslationJobRequest {
    let priority = match fastrand::u8(0..10) {
        0 => Priority::High,
        1 => Priority::Low,
        _ => Priority::Normal,
    };
    CreateTranslationJobRequest {
        novel_id: novel_id.to_string(),
        target_lang: "en".into(),
        source_lang: "ja".into(),
        priority: priority.into(),
        subtasks: (0..subtasks)
            .map(|i| SubtaskSpec {
                entity_type: "chapter".into(),
                entity_id: format!("chapter-{i}"),
            })
            .collect(),
        ..Default::default()
    }
}

/// Sends one create and records what happened.
pub async fn create_one(
    client: &mut TranslationJobServiceClient<Channel>,
    deadline: Duration,
) -> Outcome {
    let novel_id = Uuid::new_v4();
    let subtasks = fastrand::usize(1..=3);
    let mut call = tonic::Request::new(request(novel_id, subtasks));
    call.set_timeout(deadline);
    let started = Instant::now();
    // The client's own limit too: a connection that never answers must not
    // hold the caller past its deadline.
    let answered = tokio::time::timeout(
        deadline + Duration::from_secs(1),
        client.create_translation_job(call),
    )
    .await;
    let latency = started.elapsed();
    let result = match answered {
        Ok(Ok(job)) => Uuid::parse_str(&job.into_inner().id).map_err(|_| Code::Internal),
        Ok(Err(status)) => Err(status.code()),
        Err(_) => Err(Code::DeadlineExceeded),
    };
    Outcome {
        novel_id,
        subtasks,
        result,
        started,
        latency,
    }
}

impl Load {
    /// Starts `shape.callers` callers, spread over `clients` in turn.
    pub fn start(clients: &[TranslationJobServiceClient<Channel>], shape: Shape) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let callers = (0..shape.callers)
            .map(|caller| {
                let mut clients: Vec<_> = clients.to_vec();
                let count = clients.len();
                clients.rotate_left(caller % count);
                let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
                tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    let mut turn = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let client = &mut clients[turn % count];
                        turn += 1;
                        let outcome = create_one(client, shape.deadline).await;
                        if outcome.result.is_ok() {
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                        }
                        let failed_now = outcome.result.is_err();
                        outcomes.push(outcome);
                        // After a failure, pause a little longer: a caller
                        // hammering a dead replica only burns the CPU the
                        // rest of the test needs.
                        let pause = if failed_now {
                            shape.pause.max(Duration::from_millis(20))
                        } else {
                            shape.pause
                        };
                        tokio::time::sleep(pause).await;
                    }
                    outcomes
                })
            })
            .collect();
        Self {
            stop,
            acknowledged,
            callers,
        }
    }

    /// Waits until `more` further creates were acknowledged (panics after
    /// `patience`).
    pub async fn wait_for_acks(&self, more: u64, patience: Duration) {
        let target = self.acknowledged.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + patience;
        while self.acknowledged.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < deadline,
                "creates stalled: {} acknowledged, waiting for {target}",
                self.acknowledged.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the callers and returns every outcome.
    pub async fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        let mut ledger = Ledger::default();
        for caller in self.callers {
            ledger.outcomes.extend(caller.await.expect("caller task"));
        }
        ledger.outcomes.sort_by_key(|o| o.started);
        ledger
    }
}
