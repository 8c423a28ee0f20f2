//! Crashes at random points: two replicas against one database and one
//! Redis, killed with SIGKILL again and again while creates run and while
//! the relays drain backlogs.

use std::time::Duration;

use crate::{
    consumer::Consumer,
    count::{Bulk, report},
    load::{Load, Shape},
    rig::{Rig, serial},
    service::Service,
};

const PATIENCE: Duration = Duration::from_secs(60);
/// Kills in one run (a kill of both replicas at once counts once).
const KILLS: usize = 24;
/// A backlog written every few kills, so that kills land inside drains.
const BACKLOG_EVERY: usize = 6;
const BACKLOG_JOBS: i64 = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_killed_at_random_moments_deliver_every_acknowledged_job_exactly_once() {
    let _serial = serial().await;
    let rig = Rig::plain().await;
    // Small batches: more relay transactions for a kill to land in.
    let env = [("RELAY_BATCH_SIZE", "50")];
    let mut replicas: [Service; 2] = [rig.service("a", &env), rig.service("b", &env)];
    for replica in &replicas {
        replica.wait_ready().await;
    }
    let consumer = Consumer::mover(&rig.redis.url(), &rig.queue).await;
    let clients: Vec<_> = replicas.iter().map(Service::client).collect();
    let load = Load::start(&clients, Shape::default());
    load.wait_for_acks(50, PATIENCE).await;

    let mut bulk = Bulk::default();
    let mut both = 0;
    for kill in 0..KILLS {
        if kill % BACKLOG_EVERY == 0 {
            bulk.job_ids.extend(rig.bulk_backlog(BACKLOG_JOBS).await);
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(150..1200))).await;
        let victims: Vec<usize> = match fastrand::u8(0..10) {
            0 => {
                both += 1;
                vec![0, 1]
            }
            pick => vec![usize::from(pick % 2)],
        };
        for &victim in &victims {
            replicas[victim].kill();
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..400))).await;
        for &victim in &victims {
            replicas[victim].spawn();
        }
    }
    for replica in &replicas {
        replica.wait_ready().await;
    }
    load.wait_for_acks(50, PATIENCE).await;
    let ledger = load.stop().await;
    let counts = rig.count("crashes", &ledger, &bulk).await;
    consumer.stop().await;
    report(
        "crashes",
        &format!(
            "kills={KILLS} (both replicas at once {both}), starts a={} b={}, bulk jobs={}",
            replicas[0].starts,
            replicas[1].starts,
            bulk.job_ids.len()
        ),
    );
    // Acknowledged: delivered once. Unacknowledged (the replica died with
    // the call): complete with its message, or absent.
    counts.assert_exactly_once(false);
    for replica in &replicas {
        replica.assert_no_panic();
    }
    drop(replicas);
    rig.stop().await;
}
