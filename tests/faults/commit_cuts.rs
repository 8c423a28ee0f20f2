//! Connections cut while creates commit: a proxy between the service and
//! PostgreSQL loses the reply of create statements that PostgreSQL has run
//! and committed, cuts others before PostgreSQL sees them, and now and then
//! closes every connection, under a burst of creates without `request_id`.
//! Callers retry a create that failed, as callers do; since nothing but the
//! service's answer tells them whether the job exists, a retried create must
//! never become a second job. Counted: every stored job was acknowledged to
//! the one caller that asked for it, and a caller finally told UNAVAILABLE
//! has no job.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tonic::Code;
use uuid::Uuid;

use crate::{
    common::proxy::{CutAt, Mode, Proxy},
    consumer::Consumer,
    count::{Bulk, report},
    load::{Ledger, Outcome, request},
    rig::{Rig, serial},
};

/// Every create of the burst carries it, so the proxy can find create
/// statements among the service's traffic.
const MARKER: &str = "outputs/commit-cuts";
/// How long the faults go on.
const BURST: Duration = Duration::from_secs(8);
const CALLERS: usize = 6;
/// Tries of one create before its caller gives up.
const TRIES: usize = 8;
const DEADLINE: Duration = Duration::from_secs(10);

/// One create as its caller finally saw it, after its retries.
struct Asked {
    novel_id: Uuid,
    subtasks: usize,
    tries: usize,
    result: Result<Uuid, Code>,
    started: Instant,
    latency: Duration,
}

async fn caller(
    mut client: translation_jobs::api::proto::translation_job_service_client::TranslationJobServiceClient<
        tonic::transport::Channel,
    >,
    stop: Arc<AtomicBool>,
) -> Vec<Asked> {
    let mut asked = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let novel_id = Uuid::new_v4();
        let subtasks = fastrand::usize(1..=3);
        let started = Instant::now();
        let mut tries = 0;
        let result = loop {
            tries += 1;
            let mut create = request(novel_id, subtasks);
            create.output_dir = MARKER.into();
            let mut call = tonic::Request::new(create);
            call.set_timeout(DEADLINE);
            let answer = tokio::time::timeout(
                DEADLINE + Duration::from_secs(1),
                client.create_translation_job(call),
            )
            .await;
            let result = match answer {
                Ok(Ok(job)) => Uuid::parse_str(&job.into_inner().id).map_err(|_| Code::Internal),
                Ok(Err(status)) => Err(status.code()),
                Err(_) => Err(Code::DeadlineExceeded),
            };
            match result {
                Err(Code::Unavailable) if tries < TRIES => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other,
            }
        };
        asked.push(Asked {
            novel_id,
            subtasks,
            tries,
            result,
            started,
            latency: started.elapsed(),
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    asked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_while_creates_commit_never_turn_a_retried_create_into_a_second_job() {
    let _serial = serial().await;
    let rig = Rig::plain().await;
    let proxy = Proxy::start(format!("127.0.0.1:{}", rig.postgres.port).parse().unwrap()).await;
    let service = rig.service_at(
        "replica",
        &format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port()),
        &rig.redis.url(),
        &[],
    );
    service.wait_ready().await;
    let consumer = Consumer::mover(&rig.redis.url(), &rig.queue).await;
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| tokio::spawn(caller(service.client(), stop.clone())))
        .collect();

    let started = Instant::now();
    let mut round = 0_u32;
    while started.elapsed() < BURST {
        round += 1;
        if round.is_multiple_of(25) {
            // Every connection at once, new ones refused for a moment.
            proxy.set(Mode::Cut);
            tokio::time::sleep(Duration::from_millis(30)).await;
            proxy.set(Mode::Pass);
        } else if !proxy.cut_armed() {
            let at = if round.is_multiple_of(3) {
                CutAt::Request
            } else {
                CutAt::Reply
            };
            proxy.cut_once(&[MARKER.as_bytes()], at);
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut asked = Vec::new();
    for caller in callers {
        asked.extend(caller.await.expect("caller"));
    }
    let cuts = proxy.cuts_fired();

    let stored: Vec<(Uuid, Uuid)> = sqlx::query_as("SELECT id, novel_id FROM translation_jobs")
        .fetch_all(&rig.pool)
        .await
        .expect("read the jobs");
    let mut by_novel: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for (id, novel_id) in &stored {
        by_novel.entry(*novel_id).or_default().push(*id);
    }
    let mut doubled = Vec::new();
    let mut unavailable_but_stored = Vec::new();
    let mut acknowledged_but_other = Vec::new();
    for one in &asked {
        let jobs = by_novel.get(&one.novel_id).cloned().unwrap_or_default();
        if jobs.len() > 1 {
            doubled.push((one.novel_id, one.tries, jobs.clone()));
        }
        match one.result {
            Ok(id) if jobs != [id] => acknowledged_but_other.push((id, jobs)),
            Err(Code::Unavailable) if !jobs.is_empty() => {
                unavailable_but_stored.push((one.novel_id, jobs))
            }
            _ => {}
        }
    }
    let errors: HashMap<String, usize> =
        asked
            .iter()
            .filter_map(|a| a.result.err())
            .fold(HashMap::new(), |mut errors, code| {
                *errors.entry(format!("{code:?}")).or_default() += 1;
                errors
            });
    let retried = asked.iter().filter(|a| a.tries > 1).count();

    let ledger = Ledger {
        outcomes: asked
            .iter()
            .map(|a| Outcome {
                novel_id: a.novel_id,
                subtasks: a.subtasks,
                result: a.result,
                started: a.started,
                latency: a.latency,
            })
            .collect(),
    };
    let counts = rig.count("commit_cuts", &ledger, &Bulk::default()).await;
    consumer.stop().await;
    report(
        "commit_cuts",
        &format!(
            "creates={} retried={retried} cuts={cuts} stored={} doubled={} \
             unavailable_but_stored={} final_errors={errors:?}",
            asked.len(),
            stored.len(),
            doubled.len(),
            unavailable_but_stored.len()
        ),
    );

    assert!(cuts >= 20, "the proxy cut only {cuts} create statements");
    let unsettled = service.warnings_with("could not settle");
    assert!(
        doubled.is_empty(),
        "retried creates stored twice (novel_id, tries, jobs): {:?}\n{}",
        doubled.iter().take(5).collect::<Vec<_>>(),
        unsettled.join("\n")
    );
    assert!(
        unavailable_but_stored.is_empty(),
        "callers finally told UNAVAILABLE whose job exists: {:?}",
        unavailable_but_stored.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        acknowledged_but_other.is_empty(),
        "acknowledged ids that are not the stored job: {:?}",
        acknowledged_but_other.iter().take(5).collect::<Vec<_>>()
    );
    counts.assert_exactly_once(false);
    service.assert_no_panic();
    drop(service);
    rig.stop().await;
}
