//! What every fault test sets up: a PostgreSQL and a Redis of its own, a
//! queue name, direct clients of both, a temporary directory for logs; and
//! the lock that runs the tests one at a time.

use std::time::Duration;

use fred::prelude::{Client, ClientLike};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::sync::{Mutex, MutexGuard};
use translation_jobs::queue::QueueName;

use crate::{
    common::{postgres::TestPostgres, redis::TestRedis},
    consumer::redis_client,
    count::{Bulk, Counts, reconcile, report, wait_drained},
    load::Ledger,
    service::Service,
};

static SERIAL: Mutex<()> = Mutex::const_new(());

/// Taken by every test for its whole run: one fault test at a time.
pub async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

pub struct Rig {
    pub dir: tempfile::TempDir,
    pub postgres: TestPostgres,
    pub redis: TestRedis,
    pub queue: QueueName,
    /// Straight to PostgreSQL (never through a proxy); connects lazily, so
    /// it outlives restarts.
    pub pool: PgPool,
    /// Straight to Redis.
    pub redis_client: Client,
}

impl Rig {
    /// A fresh PostgreSQL (with `settings` in postgresql.conf) and Redis
    /// (with `redis_args`).
    pub async fn new(settings: &[(&str, &str)], redis_args: &[&str]) -> Self {
        let postgres = tokio::task::block_in_place(|| TestPostgres::start_with(settings));
        let redis = TestRedis::started_with(redis_args).await;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(postgres.options("postgres"));
        let redis_client = redis_client(&redis.url()).await;
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            postgres,
            redis,
            queue: QueueName::parse("faults_jobs").expect("queue name"),
            pool,
            redis_client,
        }
    }

    pub async fn plain() -> Self {
        Self::new(&[], &[]).await
    }

    /// A replica against the given URLs (a proxy's, or the servers').
    pub fn service_at(
        &self,
        name: &str,
        database_url: &str,
        redis_url: &str,
        env: &[(&str, &str)],
    ) -> Service {
        let mut all = vec![
            ("DATABASE_URL", database_url),
            ("REDIS_URL", redis_url),
            ("TRANSLATION_QUEUE", self.queue.as_str()),
        ];
        all.extend_from_slice(env);
        Service::start(name, self.dir.path(), &all)
    }

    /// A replica connected straight to both servers.
    pub fn service(&self, name: &str, env: &[(&str, &str)]) -> Service {
        self.service_at(name, &self.postgres.url("postgres"), &self.redis.url(), env)
    }

    /// Waits for the drain, reconciles, prints the tally under `test`.
    pub async fn count(&self, test: &str, ledger: &Ledger, bulk: &Bulk) -> Counts {
        wait_drained(&self.pool, &self.redis_client, &self.queue).await;
        let counts = reconcile(&self.pool, &self.redis_client, &self.queue, ledger, bulk).await;
        let errors = ledger.errors();
        report(
            test,
            &format!(
                "{} p99_create_ms={:.1} errors={errors:?}",
                counts.line(),
                ledger.ack_latency(99.0, None).as_secs_f64() * 1000.0
            ),
        );
        counts
    }

    /// Writes `count` jobs and their outbox rows straight into the
    /// database in one statement, as `bench/drain.sh` does (creating them
    /// through gRPC would take minutes); returns their ids. The relay finds
    /// them at its next poll.
    pub async fn bulk_backlog(&self, count: i64) -> Vec<uuid::Uuid> {
        sqlx::query_scalar(
            "WITH jobs AS ( \
               INSERT INTO translation_jobs \
                   (id, novel_id, source_lang, target_lang, target_fields, output_dir) \
               SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') \
                       || lpad(to_hex(g), 20, '0'))::uuid, \
                      gen_random_uuid(), 'ja', 'en', '{title,description,content}', \
                      'outputs/novel_jobs' \
               FROM generate_series(1, $1) AS g \
               RETURNING id) \
             INSERT INTO outbox (job_id, lane, payload) \
             SELECT id, 'normal', json_build_object('job_id', id, 'target_lang', 'en', \
                    'source_lang', 'ja', 'output_dir', 'outputs/novel_jobs', \
                    'target_fields', ARRAY['title', 'description', 'content'], \
                    'attempt', 0)::text \
             FROM jobs RETURNING job_id",
        )
        .bind(count)
        .fetch_all(&self.pool)
        .await
        .expect("bulk backlog")
    }

    pub async fn stop(self) {
        let _ = self.redis_client.quit().await;
        self.pool.close().await;
    }
}
