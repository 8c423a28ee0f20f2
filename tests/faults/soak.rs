//! The soak: mixed load (creates on two replicas, cancels, retries, a
//! worker that claims with the attempt) while random faults from the rest
//! of this suite hit, one after another, for `SOAK_DURATION` (default
//! 60 s). Run by `scripts/soak.sh DURATION`; ignored in the normal test run.
//! Prints one summary line.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::PgPool;
use tonic::transport::Channel;
use translation_jobs::api::proto::{
    CancelTranslationJobRequest, RetryTranslationJobRequest,
    translation_job_service_client::TranslationJobServiceClient,
};
use uuid::Uuid;

use crate::{
    common::{
        postgres::Shutdown,
        proxy::{Mode, Proxy},
    },
    consumer::Consumer,
    count::{Bulk, report},
    load::{Load, Shape},
    redis_writes::{Refusal, accept_writes_again, refuse},
    rig::{Rig, serial},
    service::Service,
};

const PATIENCE: Duration = Duration::from_secs(120);

const FAULTS: &[&str] = &[
    "postgres_restart_fast",
    "postgres_restart_immediate",
    "postgres_black_hole",
    "redis_kill",
    "redis_black_hole",
    "redis_oom",
    "redis_readonly",
    "replica_kill",
];

/// Cancels jobs waiting or running and retries failed or cancelled ones,
/// through the API, until stopped.
fn cancels_and_retries(
    pool: PgPool,
    clients: Vec<TranslationJobServiceClient<Channel>>,
    stop: Arc<AtomicBool>,
    done: Arc<[AtomicU64; 2]>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut turn = 0;
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(fastrand::u64(20..80))).await;
            turn += 1;
            let retry = turn % 3 == 0;
            let sql = if retry {
                "SELECT id FROM translation_jobs WHERE status IN ('FAILED', 'CANCELLED') \
                 ORDER BY updated_at DESC LIMIT 20"
            } else {
                "SELECT id FROM translation_jobs WHERE status IN ('PENDING', 'IN_PROGRESS') \
                 ORDER BY id DESC LIMIT 20"
            };
            let Ok(Ok(ids)) = tokio::time::timeout(
                Duration::from_secs(2),
                sqlx::query_scalar::<_, Uuid>(sql).fetch_all(&pool),
            )
            .await
            else {
                continue;
            };
            if ids.is_empty() {
                continue;
            }
            let id = ids[fastrand::usize(0..ids.len())].to_string();
            let mut client = clients[turn % clients.len()].clone();
            let answered = if retry {
                let mut call = tonic::Request::new(RetryTranslationJobRequest { id });
                call.set_timeout(Duration::from_secs(3));
                client.retry_translation_job(call).await.is_ok()
            } else {
                let mut call = tonic::Request::new(CancelTranslationJobRequest { id });
                call.set_timeout(Duration::from_secs(3));
                client.cancel_translation_job(call).await.is_ok()
            };
            if answered {
                done[usize::from(retry)].fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

fn soak_duration() -> Duration {
    std::env::var("SOAK_DURATION")
        .ok()
        .and_then(|raw| humantime::parse_duration(&raw).ok())
        .unwrap_or(Duration::from_secs(60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by scripts/soak.sh"]
async fn soak() {
    let _serial = serial().await;
    let duration = soak_duration();
    let mut rig = Rig::new(&[], &["--maxmemory-policy", "noeviction"]).await;
    let redis_proxy = Proxy::start(format!("127.0.0.1:{}", rig.redis.port).parse().unwrap()).await;
    let pg_proxy = Proxy::start(format!("127.0.0.1:{}", rig.postgres.port).parse().unwrap()).await;
    let database_url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg_proxy.port());
    let redis_url = format!("redis://127.0.0.1:{}/0", redis_proxy.port());
    // Rescues and re-queues of popped-but-unclaimed messages happen within
    // the run.
    let env = [("STUCK_JOB_TIMEOUT", "20s"), ("RELAY_BATCH_SIZE", "100")];
    let mut replicas = [
        rig.service_at("a", &database_url, &redis_url, &env),
        rig.service_at("b", &database_url, &redis_url, &env),
    ];
    for replica in &replicas {
        replica.wait_ready().await;
    }
    let worker = Consumer::worker(&rig.redis.url(), &rig.queue, rig.pool.clone()).await;
    let clients: Vec<_> = replicas.iter().map(Service::client).collect();
    let load = Load::start(&clients, Shape::default());
    let stop_mix = Arc::new(AtomicBool::new(false));
    let mixed = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let mix = cancels_and_retries(rig.pool.clone(), clients, stop_mix.clone(), mixed.clone());

    let mut injected: BTreeMap<&str, u32> = BTreeMap::new();
    let started = Instant::now();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(3000..8000))).await;
        if started.elapsed() >= duration {
            break;
        }
        let fault = FAULTS[fastrand::usize(0..FAULTS.len())];
        *injected.entry(fault).or_default() += 1;
        let hold = Duration::from_millis(fastrand::u64(1000..4000));
        match fault {
            "postgres_restart_fast" | "postgres_restart_immediate" => {
                let mode = if fault.ends_with("fast") {
                    Shutdown::Fast
                } else {
                    Shutdown::Immediate
                };
                tokio::task::block_in_place(|| rig.postgres.stop(mode));
                tokio::time::sleep(hold).await;
                tokio::task::block_in_place(|| rig.postgres.start());
            }
            "postgres_black_hole" => {
                pg_proxy.set(Mode::BlackHole);
                tokio::time::sleep(hold).await;
                pg_proxy.set(Mode::Pass);
            }
            "redis_kill" => {
                rig.redis.stop();
                tokio::time::sleep(hold).await;
                rig.redis.start().await;
            }
            "redis_black_hole" => {
                redis_proxy.set(Mode::BlackHole);
                tokio::time::sleep(hold).await;
                redis_proxy.set(Mode::Pass);
            }
            "redis_oom" | "redis_readonly" => {
                let refusal = if fault == "redis_oom" {
                    Refusal::OutOfMemory
                } else {
                    Refusal::ReadOnlyReplica
                };
                let fillers = refuse(&rig.redis_client, refusal).await;
                tokio::time::sleep(hold).await;
                accept_writes_again(&rig.redis_client, refusal, fillers).await;
            }
            _ => {
                let victim = fastrand::usize(0..2);
                replicas[victim].kill();
                tokio::time::sleep(hold / 4).await;
                replicas[victim].spawn();
            }
        }
    }
    for replica in &replicas {
        replica.wait_ready().await;
    }
    load.wait_for_acks(20, PATIENCE).await;
    stop_mix.store(true, Ordering::Relaxed);
    mix.await.expect("cancels and retries");
    let ledger = load.stop().await;
    let counts = rig.count("soak", &ledger, &Bulk::default()).await;
    let worked = worker.stop().await;
    let line = format!(
        "soak duration={}s created={} acknowledged={} delivered={} lost={} duplicated={} \
         stale={} phantom={} incomplete={} p99_create_ms={:.1} cancels={} retries={} \
         worker_claimed={} worker_refused={} faults={}",
        duration.as_secs(),
        counts.created,
        counts.acknowledged,
        counts.delivered,
        counts.lost,
        counts.duplicated,
        counts.stale,
        counts.phantom,
        counts.incomplete,
        ledger.ack_latency(99.0, None).as_secs_f64() * 1000.0,
        mixed[0].load(Ordering::Relaxed),
        mixed[1].load(Ordering::Relaxed),
        worked.claimed,
        worked.refused,
        injected
            .iter()
            .map(|(fault, n)| format!("{fault}:{n}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    report("soak", &line);
    println!("{line}");
    // Retries, cancels and rescues hand jobs out again: stale copies are
    // expected (the claim refuses them); nothing may be lost or doubled.
    counts.assert_exactly_once(true);
    for replica in &replicas {
        replica.assert_no_panic();
    }
    drop(replicas);
    rig.stop().await;
}
