//! `/metrics`: scraped over HTTP and parsed with a strict Prometheus text
//! parser after calls, creates and a relay drain; the reaper's counters.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use openmetrics_parser::{
    MetricsExposition, PrometheusType, PrometheusValue, prometheus::parse_prometheus,
};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tonic::Code;
use translation_jobs::{
    api::proto::{CreateTranslationJobRequest, Priority, WatchTranslationJobRequest},
    jobs::RescuePolicy,
    metrics::{Gauges, Metrics},
    queue::Lane,
    reaper::{Reaper, ReaperSettings},
    wake::Wake,
};
use uuid::Uuid;

use crate::{
    reaper::stuck_since,
    support::{
        NOVEL_ID, PATIENCE, SHARED_REDIS_URL, TestApp, TestRedis, cleanup, create_jobs,
        create_request, http_get, http_request, queue, redis_client, unique_queue,
        wait_for_messages,
    },
};

type Exposition = MetricsExposition<PrometheusType, PrometheusValue>;

const SERVICE: &str = "translation.v1.TranslationJobService";

/// Scrapes `/metrics` and parses it; a text the parser refuses fails the test.
async fn scrape(app: &TestApp) -> Exposition {
    let (status, body) = http_get(&format!("http://{}/metrics", app.http_addr))
        .await
        .expect("/metrics answers");
    assert_eq!(status, 200, "{body}");
    parse_prometheus(&body).unwrap_or_else(|error| panic!("{error:?} in\n{body}"))
}

/// The value of the one sample of `family` whose labels include `labels`:
/// a counter's or gauge's value, a histogram's count.
fn value(exposition: &Exposition, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let family = exposition.families.get(family)?;
    family.iter_samples().find_map(|sample| {
        let set = sample.get_labelset().ok()?;
        if !labels
            .iter()
            .all(|(name, value)| set.get_label_value(name) == Some(*value))
        {
            return None;
        }
        Some(match &sample.value {
            PrometheusValue::Counter(counter) => counter.value.as_f64(),
            PrometheusValue::Gauge(number) | PrometheusValue::Unknown(number) => number.as_f64(),
            PrometheusValue::Histogram(histogram) => histogram.count.unwrap_or_default() as f64,
            PrometheusValue::Summary(summary) => summary.count.unwrap_or_default() as f64,
        })
    })
}

fn request(priority: Priority) -> CreateTranslationJobRequest {
    CreateTranslationJobRequest {
        priority: priority.into(),
        ..create_request()
    }
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn metrics_count_calls_creates_relay_pushes_and_read_lanes_and_streams(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database).await;
    let mut created = Vec::new();
    for priority in [Priority::High, Priority::High, Priority::Normal] {
        created.push(
            app.client
                .create_translation_job(request(priority))
                .await
                .expect("create succeeds")
                .into_inner(),
        );
    }
    let invalid = app
        .client
        .create_translation_job(CreateTranslationJobRequest {
            target_lang: String::new(),
            ..create_request()
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    let body = format!(r#"{{"novel_id": "{NOVEL_ID}", "target_lang": "fr", "priority": "low"}}"#);
    let jobs_url = format!("http://{}/api/v1/translation-jobs", app.http_addr);
    let (status, _) = http_request("POST", &jobs_url, Some(&body), &[])
        .await
        .unwrap();
    assert_eq!(status, 201);
    let unknown = format!("{jobs_url}/{}", uuid::Uuid::now_v7());
    assert_eq!(http_get(&unknown).await.unwrap().0, 404);
    let mut watch = app
        .client
        .watch_translation_job(WatchTranslationJobRequest {
            id: created[2].id.clone(),
        })
        .await
        .expect("watch starts")
        .into_inner();
    watch
        .message()
        .await
        .expect("first message")
        .expect("a job");

    // The relay drains all four; its counters move after its commit.
    let redis = redis_client(SHARED_REDIS_URL).await;
    wait_for_messages(&redis, &app.queue, Lane::High, 2).await;
    wait_for_messages(&redis, &app.queue, Lane::Normal, 1).await;
    wait_for_messages(&redis, &app.queue, Lane::Low, 1).await;
    let deadline = Instant::now() + PATIENCE;
    while value(&scrape(&app).await, "translation_relay_pushed_total", &[]) != Some(4.0) {
        assert!(
            Instant::now() < deadline,
            "the relay never counted 4 pushes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Scraped again: the last one may have read the outbox before the commit.
    let metrics = scrape(&app).await;
    assert_eq!(
        value(&metrics, "translation_relay_pushed_total", &[]),
        Some(4.0)
    );

    for (priority, count) in [("HIGH", 2.0), ("NORMAL", 1.0), ("LOW", 1.0)] {
        assert_eq!(
            value(
                &metrics,
                "translation_jobs_created_total",
                &[("priority", priority)]
            ),
            Some(count),
            "{priority}"
        );
    }
    let create = [
        ("service", SERVICE),
        ("method", "CreateTranslationJob"),
        ("code", "OK"),
    ];
    assert_eq!(
        value(&metrics, "translation_grpc_requests_total", &create),
        Some(3.0)
    );
    assert_eq!(
        value(
            &metrics,
            "translation_grpc_request_duration_seconds",
            &create
        ),
        Some(3.0)
    );
    let refused = [
        ("method", "CreateTranslationJob"),
        ("code", "INVALID_ARGUMENT"),
    ];
    assert_eq!(
        value(&metrics, "translation_grpc_requests_total", &refused),
        Some(1.0)
    );
    let watch_call = [("method", "WatchTranslationJob"), ("code", "OK")];
    assert_eq!(
        value(&metrics, "translation_grpc_requests_total", &watch_call),
        Some(1.0)
    );
    let posted = [
        ("method", "POST"),
        ("route", "/api/v1/translation-jobs"),
        ("status", "201"),
    ];
    assert_eq!(
        value(&metrics, "translation_http_requests_total", &posted),
        Some(1.0)
    );
    assert_eq!(
        value(
            &metrics,
            "translation_http_request_duration_seconds",
            &posted
        ),
        Some(1.0)
    );
    let missing = [
        ("method", "GET"),
        ("route", "/api/v1/translation-jobs/{id}"),
        ("status", "404"),
    ];
    assert_eq!(
        value(&metrics, "translation_http_requests_total", &missing),
        Some(1.0)
    );

    assert_eq!(
        value(&metrics, "translation_relay_duplicates_skipped_total", &[]),
        Some(0.0)
    );
    let batches =
        value(&metrics, "translation_relay_batch_duration_seconds", &[]).expect("batch latency");
    assert!((1.0..=4.0).contains(&batches), "{batches} batches");
    assert_eq!(
        value(&metrics, "translation_relay_failures_total", &[]),
        Some(0.0)
    );
    for (lane, length) in [("high", 2.0), ("normal", 1.0), ("low", 1.0), ("dead", 0.0)] {
        assert_eq!(
            value(&metrics, "translation_queue_length", &[("lane", lane)]),
            Some(length),
            "{lane}"
        );
    }
    assert_eq!(
        value(&metrics, "translation_outbox_backlog", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&metrics, "translation_outbox_oldest_age_seconds", &[]),
        Some(0.0)
    );
    assert_eq!(value(&metrics, "translation_database_up", &[]), Some(1.0));
    assert_eq!(value(&metrics, "translation_redis_up", &[]), Some(1.0));
    assert_eq!(value(&metrics, "translation_watch_streams", &[]), Some(1.0));
    let policy = metrics
        .families
        .get("translation_redis_maxmemory_policy_info")
        .expect("the policy is reported");
    let labels = policy
        .iter_samples()
        .next()
        .expect("one sample")
        .get_labelset()
        .unwrap()
        .get_label_value("policy")
        .map(str::to_owned);
    assert!(labels.is_some_and(|policy| !policy.is_empty()));
    for counter in [
        "translation_reaper_requeued_total",
        "translation_reaper_dead_lettered_total",
        "translation_reaper_republished_total",
        "translation_jobs_replayed_total",
    ] {
        assert_eq!(value(&metrics, counter, &[]), Some(0.0), "{counter}");
    }

    drop(watch);
    cleanup(&redis, &app.queue).await;
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn the_reaper_counts_what_it_requeues_and_dead_letters(pool: PgPool) {
    let metrics = Arc::new(Metrics::default());
    let name = unique_queue();
    let reaper = Reaper::new(
        pool.clone(),
        queue(&name).await,
        ReaperSettings {
            interval: Duration::from_secs(3600),
            policy: RescuePolicy {
                stuck_after: Duration::from_secs(600),
                batch_size: 100,
            },
            lost_scan: translation_jobs::config::REAPER_LOST_SCAN,
            call_timeout: Duration::from_secs(10),
        },
        Wake::new(),
    )
    .with_metrics(metrics.clone());
    let ids: Vec<Uuid> = create_jobs(&pool, 2)
        .await
        .iter()
        .map(|id| id.parse().unwrap())
        .collect();
    sqlx::query("UPDATE translation_jobs SET max_attempts = 2")
        .execute(&pool)
        .await
        .unwrap();
    let long_ago = Duration::from_secs(3600);

    for id in &ids {
        stuck_since(&pool, *id, long_ago).await;
    }
    reaper.reap_once().await.unwrap();
    // The second time the first job is found stuck it has run out of attempts.
    stuck_since(&pool, ids[0], long_ago).await;
    reaper.reap_once().await.unwrap();

    let text = metrics.render(&Gauges::default());
    let parsed = parse_prometheus(&text).unwrap_or_else(|error| panic!("{error:?} in\n{text}"));
    assert_eq!(
        value(&parsed, "translation_reaper_requeued_total", &[]),
        Some(2.0)
    );
    assert_eq!(
        value(&parsed, "translation_reaper_dead_lettered_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&parsed, "translation_reaper_republished_total", &[]),
        Some(0.0)
    );
    let redis = redis_client(SHARED_REDIS_URL).await;
    cleanup(&redis, &name).await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_scrape_with_redis_down_answers_promptly_and_reports_it_down(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let redis = TestRedis::stopped();
    let mut app = TestApp::spawn_with(database, &redis.url(), unique_queue(), &[]).await;
    app.wait_ready().await;
    app.create().await;

    let started = Instant::now();
    let metrics = scrape(&app).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the scrape waited {:?}",
        started.elapsed()
    );
    assert_eq!(value(&metrics, "translation_redis_up", &[]), Some(0.0));
    assert_eq!(value(&metrics, "translation_database_up", &[]), Some(1.0));
    assert_eq!(
        value(&metrics, "translation_outbox_backlog", &[]),
        Some(1.0)
    );
    assert!(!metrics.families.contains_key("translation_queue_length"));
    assert!(
        !metrics
            .families
            .contains_key("translation_redis_maxmemory_policy_info")
    );
    app.stop().await;
}
