//! Network faults through a proxy: between the service and Redis, and
//! between the service and PostgreSQL: latency, cut connections, black
//! holes, and connections stranded for good.

use std::time::{Duration, Instant};

use fred::prelude::ListInterface;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use translation_jobs::api::proto::{
    CancelTranslationJobRequest, JobStatus, WatchTranslationJobRequest,
};

use crate::{
    common::proxy::{Mode, Proxy},
    consumer::Consumer,
    count::{Bulk, report},
    load::{Load, Outcome, Shape, create_one},
    rig::{Rig, serial},
    service::{HealthMonitor, Service},
};

const PATIENCE: Duration = Duration::from_secs(60);
/// The service's Redis command limit in the Redis test: a create that
/// waited on Redis would take at least this long.
const REDIS_COMMAND_TIMEOUT: &str = "4s";
/// What a create may take while Redis is black-holed: well under the
/// command limit (backpressure samples the lanes with its own 500 ms limit).
const CREATE_BOUND: Duration = Duration::from_secs(2);
/// An outbox this small counts as drained under the tests' load.
const CAUGHT_UP: i64 = 100;
/// How long the relay may take to catch up after a fault on its path ends
/// or starts: a few command limits, never "when the load stops".
const CATCH_UP_PATIENCE: Duration = Duration::from_secs(20);

async fn outbox_count(rig: &Rig) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&rig.pool)
        .await
        .unwrap_or(-1)
}

/// Waits, while the load goes on, until the relay has caught up (the
/// outbox holds no more than a moment's creates); how long that took.
async fn relay_catches_up(rig: &Rig, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let left = outbox_count(rig).await;
        if (0..=CAUGHT_UP).contains(&left) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < CATCH_UP_PATIENCE,
            "the relay did not catch up within {CATCH_UP_PATIENCE:?} after {what}: {left} rows wait"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_latency_cuts_and_black_holes_never_slow_creates_and_everything_drains_after() {
    let _serial = serial().await;
    let rig = Rig::plain().await;
    let proxy = Proxy::start(format!("127.0.0.1:{}", rig.redis.port).parse().unwrap()).await;
    let service = rig.service_at(
        "replica",
        &rig.postgres.url("postgres"),
        &format!("redis://127.0.0.1:{}/0", proxy.port()),
        &[("REDIS_COMMAND_TIMEOUT", REDIS_COMMAND_TIMEOUT)],
    );
    service.wait_ready().await;
    let consumer = Consumer::mover(&rig.redis.url(), &rig.queue).await;
    let load = Load::start(&[service.client()], Shape::default());
    load.wait_for_acks(50, PATIENCE).await;

    let mut phases = Vec::new();
    let mut phase = |name: &'static str, from: Instant| phases.push((name, from, Instant::now()));

    let from = Instant::now();
    proxy.set(Mode::Latency(Duration::from_millis(50)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set(Mode::Pass);
    phase("latency_50ms", from);

    let from = Instant::now();
    proxy.set(Mode::Cut);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set(Mode::Pass);
    phase("cut_2s", from);
    load.wait_for_acks(50, PATIENCE).await;

    let from = Instant::now();
    let backlog_before = outbox_count(&rig).await;
    proxy.set(Mode::BlackHole);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let backlog_during = outbox_count(&rig).await;
    proxy.set(Mode::Pass);
    phase("black_hole_6s", from);
    let (hole_from, hole_to) = (from, Instant::now());
    let after_hole = relay_catches_up(&rig, "the black hole").await;

    // The connection the service holds stops answering for good while new
    // ones work (a proxy that lost its upstream, a NAT that forgot the
    // flow): under steady load the relay must still notice and reconnect.
    let from = Instant::now();
    proxy.strand_open_connections();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_strand = relay_catches_up(&rig, "stranding its connection").await;
    phase("stranded", from);
    load.wait_for_acks(50, PATIENCE).await;

    let ledger = load.stop().await;
    let counts = rig.count("network_redis", &ledger, &Bulk::default()).await;
    consumer.stop().await;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let detail: Vec<String> = phases
        .iter()
        .map(|(name, from, to)| {
            let window = Some((*from, *to));
            format!(
                "{name}: acks={} p99_ms={:.0} max_ms={:.0}",
                ledger.acknowledged_between(*from, *to),
                ms(ledger.ack_latency(99.0, window)),
                ms(ledger.ack_latency(100.0, window)),
            )
        })
        .collect();
    report(
        "network_redis",
        &format!(
            "{} | outbox before/during the black hole {backlog_before}/{backlog_during}; \
             relay caught up {}ms after the black hole, {}ms after the strand",
            detail.join("; "),
            after_hole.as_millis(),
            after_strand.as_millis()
        ),
    );

    // Creates never wait on Redis: accepted all through the black hole,
    // each well under the Redis command limit; the jobs waited in the outbox.
    assert!(ledger.acknowledged_between(hole_from, hole_to) > 0);
    let slowest = ledger.ack_latency(100.0, Some((hole_from, hole_to)));
    assert!(
        slowest < CREATE_BOUND,
        "a create took {slowest:?} while Redis was black-holed"
    );
    assert!(
        backlog_during > backlog_before,
        "jobs wait in the outbox while Redis is black-holed"
    );
    assert!(ledger.errors().is_empty(), "{:?}", ledger.errors());
    counts.assert_exactly_once(false);
    service.assert_no_panic();
    drop(service);
    rig.stop().await;
}

/// Creates a job, opens a watch on it, cancels it and waits until the
/// watch says CANCELLED: the LISTEN connection is working. Returns how long
/// that took and the creates it made (for the ledger).
async fn a_watch_sees_a_cancel(service: &Service) -> (Duration, Vec<Outcome>) {
    let started = Instant::now();
    let deadline = started + PATIENCE;
    let mut client = service.client();
    let mut creates = Vec::new();
    let job = loop {
        let outcome = create_one(&mut client, Duration::from_secs(3)).await;
        let created = outcome.result;
        creates.push(outcome);
        if let Ok(id) = created {
            break id;
        }
        assert!(Instant::now() < deadline, "no create succeeded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut stream = loop {
        let watched = client
            .watch_translation_job(WatchTranslationJobRequest {
                id: job.to_string(),
            })
            .await;
        if let Ok(stream) = watched {
            break stream.into_inner();
        }
        assert!(Instant::now() < deadline, "no watch could be opened");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    loop {
        let cancelled = client
            .cancel_translation_job(CancelTranslationJobRequest {
                id: job.to_string(),
            })
            .await;
        if cancelled.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the cancel never went through");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(update))) if update.status() == JobStatus::Cancelled => {
                return (started.elapsed(), creates);
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("the watch never saw the cancel: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_latency_cuts_black_holes_and_stranded_connections_hang_no_loop() {
    let _serial = serial().await;
    let rig = Rig::plain().await;
    let proxy = Proxy::start(format!("127.0.0.1:{}", rig.postgres.port).parse().unwrap()).await;
    let service = rig.service_at(
        "replica",
        &format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port()),
        &rig.redis.url(),
        &[("DATABASE_STATEMENT_TIMEOUT", "1s")],
    );
    service.wait_ready().await;
    let consumer = Consumer::mover(&rig.redis.url(), &rig.queue).await;
    let load = Load::start(&[service.client()], Shape::default());
    let readiness = HealthMonitor::start(&service, "readiness");
    load.wait_for_acks(50, PATIENCE).await;

    proxy.set(Mode::Latency(Duration::from_millis(20)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set(Mode::Pass);
    load.wait_for_acks(20, PATIENCE).await;

    proxy.set(Mode::Cut);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set(Mode::Pass);
    load.wait_for_acks(20, PATIENCE).await;

    let hole = Instant::now();
    proxy.set(Mode::BlackHole);
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.set(Mode::Pass);
    let hole_end = Instant::now();
    load.wait_for_acks(20, PATIENCE).await;

    // Every open connection (the pool's, the probe's, the LISTEN one) goes
    // silent for good, as when a firewall forgets them: only time limits
    // and fresh connections get the loops going again.
    proxy.strand_open_connections();
    let stranded = Instant::now();
    let (listener_back, watched) = a_watch_sees_a_cancel(&service).await;
    load.wait_for_acks(20, PATIENCE).await;
    let back = stranded.elapsed();

    let mut ledger = load.stop().await;
    ledger.outcomes.extend(watched);
    let samples = readiness.stop().await;
    let counts = rig
        .count("network_postgres", &ledger, &Bulk::default())
        .await;
    consumer.stop().await;
    let lanes: i64 = rig
        .redis_client
        .llen(rig.queue.key(translation_jobs::queue::Lane::Normal))
        .await
        .unwrap_or(0);
    report(
        "network_postgres",
        &format!(
            "errors={:?} watch_saw_cancel_after_strand_ms={} back_after_strand_ms={} lane_left={lanes}",
            ledger.errors(),
            listener_back.as_millis(),
            back.as_millis()
        ),
    );
    assert!(
        samples.saw_between(
            ServingStatus::NotServing,
            hole,
            hole_end + Duration::from_secs(1)
        ),
        "readiness never went NOT_SERVING while PostgreSQL was black-holed"
    );
    // A broken path to PostgreSQL is an outage: UNAVAILABLE, or the
    // caller's own deadline running out (tonic answers CANCELLED then),
    // never INTERNAL.
    let internal: Vec<String> = service
        .warnings_with("internal error")
        .into_iter()
        .take(5)
        .collect();
    assert!(
        !ledger.errors().contains_key("Internal"),
        "INTERNAL answers to a network fault: {:?}\n{}",
        ledger.errors(),
        internal.join("\n")
    );
    // Every job committed is delivered once; creates the faults broke are
    // complete or absent.
    counts.assert_exactly_once(false);
    service.assert_no_panic();
    drop(service);
    rig.stop().await;
}
