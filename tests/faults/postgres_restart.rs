//! PostgreSQL restarted under load, in fast and in immediate shutdown mode.

use std::time::{Duration, Instant};

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    common::postgres::Shutdown,
    consumer::Consumer,
    count::{Bulk, report},
    load::{Load, Shape},
    rig::{Rig, serial},
    service::HealthMonitor,
};

const PATIENCE: Duration = Duration::from_secs(60);
/// How long PostgreSQL stays down each time.
const OUTAGE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarts_under_load_fail_creates_fast_and_lose_or_duplicate_nothing() {
    let _serial = serial().await;
    let mut rig = Rig::plain().await;
    let service = rig.service("replica", &[]);
    service.wait_ready().await;
    let consumer = Consumer::mover(&rig.redis.url(), &rig.queue).await;
    let shape = Shape::default();
    let load = Load::start(&[service.client()], shape);
    let readiness = HealthMonitor::start(&service, "readiness");

    let mut outages = Vec::new();
    for mode in [Shutdown::Fast, Shutdown::Immediate] {
        load.wait_for_acks(100, PATIENCE).await;
        let down = Instant::now();
        tokio::task::block_in_place(|| rig.postgres.stop(mode));
        tokio::time::sleep(OUTAGE).await;
        tokio::task::block_in_place(|| rig.postgres.start());
        let up = Instant::now();
        // The service recovers by itself: readiness returns, creates work.
        let deadline = Instant::now() + PATIENCE;
        while service.health_status("readiness").await != Some(ServingStatus::Serving) {
            assert!(
                Instant::now() < deadline,
                "readiness never came back after {mode:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        outages.push((mode, down, up, up.duration_since(down)));
    }
    load.wait_for_acks(100, PATIENCE).await;
    let ledger = load.stop().await;
    let samples = readiness.stop().await;
    let counts = rig
        .count("postgres_restart", &ledger, &Bulk::default())
        .await;
    consumer.stop().await;

    for (mode, down, up, _) in &outages {
        assert!(
            samples.saw_between(
                ServingStatus::NotServing,
                *down,
                *up + Duration::from_secs(1)
            ),
            "readiness never went NOT_SERVING during the {mode:?} restart"
        );
        let failed = ledger
            .unacknowledged()
            .filter(|o| o.started >= *down && o.started < *up)
            .count();
        assert!(
            failed > 0,
            "no create was refused during the {mode:?} outage"
        );
    }
    // Creates during an outage fail fast, with UNAVAILABLE, inside their
    // deadline (never DEADLINE_EXCEEDED, never INTERNAL).
    for outcome in ledger.unacknowledged() {
        assert_eq!(
            outcome.result,
            Err(Code::Unavailable),
            "a create during the outage: {outcome:?}"
        );
        assert!(outcome.latency < shape.deadline, "{outcome:?}");
    }
    let slowest_failure = ledger
        .unacknowledged()
        .map(|o| o.latency)
        .max()
        .unwrap_or_default();
    report(
        "postgres_restart",
        &format!(
            "outages={:?} slowest_refusal_ms={} log_warnings={}",
            outages
                .iter()
                .map(|(mode, _, _, took)| format!("{mode:?}:{}ms", took.as_millis()))
                .collect::<Vec<_>>(),
            slowest_failure.as_millis(),
            service.warnings_with("").len()
        ),
    );
    counts.assert_exactly_once(false);
    service.assert_no_panic();
    drop(service);
    rig.stop().await;
}
