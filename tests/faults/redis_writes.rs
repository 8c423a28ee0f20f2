//! Redis refusing writes: full under `maxmemory` with `noeviction` (OOM),
//! and turned into a read-only replica with `REPLICAOF` (READONLY).

use std::time::{Duration, Instant};

use fred::prelude::{Client, ClientLike, KeysInterface};

use crate::{
    common::free_port,
    consumer::Consumer,
    count::{Bulk, report},
    load::{Load, Shape},
    rig::{Rig, serial},
};

const PATIENCE: Duration = Duration::from_secs(60);
/// How long Redis refuses writes.
const REFUSING: Duration = Duration::from_secs(4);
const FILLER_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Refusal {
    /// `maxmemory` just above what is used, `noeviction`, then filled up.
    OutOfMemory,
    /// `REPLICAOF` a master that does not answer: read-only, data kept.
    ReadOnlyReplica,
}

impl Refusal {
    /// What Redis's refusal says, as it shows in the service's log.
    fn error_text(self) -> &'static str {
        match self {
            Self::OutOfMemory => "OOM",
            Self::ReadOnlyReplica => "READONLY",
        }
    }
}

async fn command(redis: &Client, name: &'static str, args: Vec<String>) -> Result<String, String> {
    redis
        .custom::<fred::prelude::Value, _>(fred::cmd!(name), args)
        .await
        .map(|v| v.as_string().unwrap_or_default())
        .map_err(|e| e.to_string())
}

async fn used_memory(redis: &Client) -> u64 {
    let info = command(redis, "INFO", vec!["memory".into()])
        .await
        .expect("INFO");
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO")
}

/// Makes Redis refuse writes; returns how many filler keys it wrote.
pub(crate) async fn refuse(redis: &Client, refusal: Refusal) -> usize {
    match refusal {
        Refusal::OutOfMemory => {
            let limit = used_memory(redis).await + 512 * 1024;
            command(
                redis,
                "CONFIG",
                vec!["SET".into(), "maxmemory".into(), limit.to_string()],
            )
            .await
            .expect("CONFIG SET maxmemory");
            let filler = "x".repeat(FILLER_BYTES);
            for key in 0.. {
                let set: Result<(), _> = redis
                    .set(format!("filler:{key}"), filler.as_str(), None, None, false)
                    .await;
                if let Err(error) = set {
                    assert!(error.to_string().contains("OOM"), "{error}");
                    return key;
                }
                assert!(key < 10_000, "Redis never ran out of memory");
            }
            unreachable!()
        }
        Refusal::ReadOnlyReplica => {
            let nowhere = free_port().to_string();
            command(redis, "REPLICAOF", vec!["127.0.0.1".into(), nowhere])
                .await
                .expect("REPLICAOF");
            0
        }
    }
}

pub(crate) async fn accept_writes_again(redis: &Client, refusal: Refusal, fillers: usize) {
    match refusal {
        Refusal::OutOfMemory => {
            let keys: Vec<String> = (0..fillers).map(|k| format!("filler:{k}")).collect();
            let _: i64 = redis.del(keys).await.expect("DEL the filler");
            command(
                redis,
                "CONFIG",
                vec!["SET".into(), "maxmemory".into(), "0".into()],
            )
            .await
            .expect("CONFIG SET maxmemory 0");
        }
        Refusal::ReadOnlyReplica => {
            command(redis, "REPLICAOF", vec!["NO".into(), "ONE".into()])
                .await
                .expect("REPLICAOF NO ONE");
        }
    }
}

async fn outbox_count(rig: &Rig) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&rig.pool)
        .await
        .unwrap_or(-1)
}

async fn rows_stay_in_the_outbox_while_redis_refuses_writes(refusal: Refusal, test: &str) {
    let _serial = serial().await;
    let rig = Rig::new(&[], &["--maxmemory-policy", "noeviction"]).await;
    let service = rig.service("replica", &[]);
    service.wait_ready().await;
    let consumer = Consumer::mover(&rig.redis.url(), &rig.queue).await;
    let load = Load::start(&[service.client()], Shape::default());
    load.wait_for_acks(100, PATIENCE).await;
    let failures_before = service
        .metric("translation_relay_failures_total")
        .await
        .expect("the failure counter is exported");

    let fillers = refuse(&rig.redis_client, refusal).await;
    tokio::time::sleep(REFUSING).await;
    let waiting = outbox_count(&rig).await;
    let failures_during = service
        .metric("translation_relay_failures_total")
        .await
        .unwrap_or(0.0);
    accept_writes_again(&rig.redis_client, refusal, fillers).await;

    // The relay resumes by itself.
    let resumed = Instant::now();
    loop {
        let left = outbox_count(&rig).await;
        if (0..=100).contains(&left) {
            break;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(20),
            "the relay did not resume: {left} rows wait"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed_after = resumed.elapsed();
    load.wait_for_acks(50, PATIENCE).await;
    let ledger = load.stop().await;
    let counts = rig.count(test, &ledger, &Bulk::default()).await;
    consumer.stop().await;
    let logged = service.warnings_with(refusal.error_text());
    report(
        test,
        &format!(
            "refused for {REFUSING:?}: outbox {waiting} rows, relay failures {failures_before} -> \
             {failures_during}, {} warning lines naming {}, relay resumed in {}ms",
            logged.len(),
            refusal.error_text(),
            resumed_after.as_millis()
        ),
    );

    // Creates go on; the rows wait in the outbox; the error shows in the
    // log and in /metrics.
    assert!(ledger.errors().is_empty(), "{:?}", ledger.errors());
    assert!(waiting > 100, "jobs wait in the outbox: {waiting}");
    assert!(
        failures_during > failures_before,
        "translation_relay_failures_total did not move: {failures_before} -> {failures_during}"
    );
    assert!(
        !logged.is_empty(),
        "no warning names {}:\n{}",
        refusal.error_text(),
        service.log_tail(20)
    );
    counts.assert_exactly_once(false);
    service.assert_no_panic();
    drop(service);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_under_noeviction_keeps_rows_in_the_outbox_until_memory_is_freed() {
    rows_stay_in_the_outbox_while_redis_refuses_writes(Refusal::OutOfMemory, "redis_oom").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_turned_read_only_replica_keeps_rows_in_the_outbox_until_it_is_master_again() {
    rows_stay_in_the_outbox_while_redis_refuses_writes(Refusal::ReadOnlyReplica, "redis_readonly")
        .await;
}
