//! Counters, gauges and histograms exported on `/metrics` in the Prometheus
//! text format (0.0.4), kept by `prometheus-client`: it renders histograms,
//! `_total` suffixes, units and label escaping exactly as Prometheus expects.
//!
//! Two kinds of figures: those the service counts as things happen (calls,
//! creates, relay batches, reaper hand-outs), held in one registry for the
//! process; and those read from PostgreSQL and Redis when Prometheus scrapes
//! ([`Gauges`], read by `api::http` with a time limit each), rendered from a
//! registry made for that one scrape, so concurrent scrapes never mix.

use std::{sync::atomic::AtomicU64, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::{Registry, Unit},
};

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the latency buckets of calls and relay
/// batches: from half a millisecond (a replayed create) to the 30 s
/// statement timeout.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Upper bounds (seconds) of the reaper's pass durations: fine below 50 ms,
/// where a pass on an indexed, bounded search belongs, with 20 ms among them
/// (the bound BENCHMARKS.md holds a pass to at 10 million jobs).
const REAPER_PASS_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn reaper_pass_histogram() -> Histogram {
    Histogram::new(REAPER_PASS_BUCKETS)
}

/// Labels of a gRPC call. `service` and `method` come from the served
/// descriptors (or are `unknown`), so the set of series stays bounded.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    /// Full service name, `translation.v1.TranslationJobService`.
    pub service: &'static str,
    /// Method name, `CreateTranslationJob`.
    pub method: &'static str,
    /// gRPC status code name, `OK`, `INVALID_ARGUMENT`.
    pub code: &'static str,
}

/// Labels of an HTTP request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// `GET`, `POST`, ... (`OTHER` for anything unusual).
    pub method: &'static str,
    /// The route template, `/api/v1/translation-jobs/{id}`: never the path
    /// itself, which would make a series per job.
    pub route: String,
    /// HTTP status code.
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PriorityLabel {
    priority: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartLabel {
    part: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneLabel {
    lane: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabel {
    policy: String,
}

type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Process-wide figures. Shared behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    jobs_created: Family<PriorityLabel, Counter>,
    jobs_replayed: Counter,
    relay_pushed: Counter,
    relay_skipped: Counter,
    relay_failures: Counter,
    relay_lag: Gauge<f64, AtomicU64>,
    auth_open: Gauge<i64>,
    relay_batch: Histogram,
    reaper_requeued: Counter,
    reaper_dead_lettered: Counter,
    reaper_republished: Counter,
    reaper_pass: Family<PartLabel, Histogram, fn() -> Histogram>,
    dead_letters_trimmed: Counter,
    jobs_pruned: Family<StatusLabel, Counter>,
    grpc_calls: Family<GrpcLabels, Counter>,
    grpc_latency: LatencyFamily<GrpcLabels>,
    http_requests: Family<HttpLabels, Counter>,
    http_latency: LatencyFamily<HttpLabels>,
}

/// Figures read at scrape time from PostgreSQL, Redis and the process.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    pub database_up: bool,
    pub redis_up: bool,
    /// Outbox rows, exact up to `outbox::EXACT_UP_TO`, estimated above.
    pub outbox_backlog: Option<i64>,
    /// Whether `outbox_backlog` is PostgreSQL's estimate.
    pub outbox_backlog_estimated: bool,
    pub outbox_oldest_age: Option<Duration>,
    /// `(lane, length)` for each Redis lane that could be read.
    pub lane_lengths: Vec<(&'static str, u64)>,
    /// Redis's `maxmemory-policy`, when it could be read.
    pub redis_maxmemory_policy: Option<String>,
    /// WatchTranslationJob streams open in this process.
    pub open_watch_streams: usize,
    /// PostgreSQL's `pg_notification_queue_usage()` (0 to 1), when read.
    pub notification_queue_usage: Option<f64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let jobs_created = Family::<PriorityLabel, Counter>::default();
        registry.register(
            "translation_jobs_created",
            "Jobs accepted (CreateTranslationJob, BatchCreateTranslationJobs, HTTP), by priority",
            jobs_created.clone(),
        );
        let jobs_replayed = Counter::default();
        registry.register(
            "translation_jobs_replayed",
            "Creates answered with an existing job because the request_id was reused",
            jobs_replayed.clone(),
        );
        let relay_pushed = Counter::default();
        registry.register(
            "translation_relay_pushed",
            "Messages the relay pushed to Redis",
            relay_pushed.clone(),
        );
        let relay_skipped = Counter::default();
        registry.register(
            "translation_relay_duplicates_skipped",
            "Messages not pushed again because an earlier uncommitted attempt had pushed them",
            relay_skipped.clone(),
        );
        let relay_failures = Counter::default();
        registry.register(
            "translation_relay_failures",
            "Relay drains that failed (Redis or PostgreSQL unavailable)",
            relay_failures.clone(),
        );
        let relay_lag = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "translation_relay_lag",
            "Age of the oldest message in the last batch the relay published",
            Unit::Seconds,
            relay_lag.clone(),
        );
        let auth_open = Gauge::<i64>::default();
        registry.register(
            "translation_auth_open",
            "1 when the job service runs without authentication (AUTH_MODE=none, or no key with every listener on loopback)",
            auth_open.clone(),
        );
        let relay_batch = latency_histogram();
        registry.register_with_unit(
            "translation_relay_batch_duration",
            "Time from claiming a batch of outbox rows to committing it, pushes included",
            Unit::Seconds,
            relay_batch.clone(),
        );
        let reaper_requeued = Counter::default();
        registry.register(
            "translation_reaper_requeued",
            "Jobs stuck IN_PROGRESS that the reaper put back to PENDING and queued again",
            reaper_requeued.clone(),
        );
        let reaper_dead_lettered = Counter::default();
        registry.register(
            "translation_reaper_dead_lettered",
            "Jobs out of attempts that the reaper failed and sent to the dead lane",
            reaper_dead_lettered.clone(),
        );
        let reaper_republished = Counter::default();
        registry.register(
            "translation_reaper_republished",
            "PENDING jobs whose message was lost that the reaper queued again",
            reaper_republished.clone(),
        );
        let reaper_pass: Family<PartLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(reaper_pass_histogram);
        registry.register_with_unit(
            "translation_reaper_pass_duration",
            "Time one reaper pass took, by part (stuck: stuck jobs, lost: lost messages; lost_batch: one transaction of the search for lost messages, of which a pass runs up to ten), failed passes included",
            Unit::Seconds,
            reaper_pass.clone(),
        );
        let dead_letters_trimmed = Counter::default();
        registry.register(
            "translation_dead_letters_trimmed",
            "Dead letters dropped from the dead lane: their job gone or moved on, older than DEAD_LETTER_MAX_AGE, or beyond DEAD_LETTER_MAX_LENGTH",
            dead_letters_trimmed.clone(),
        );
        let jobs_pruned = Family::<StatusLabel, Counter>::default();
        registry.register(
            "translation_jobs_pruned",
            "Finished jobs deleted once past RETAIN_COMPLETED, RETAIN_FAILED or RETAIN_CANCELLED, by status",
            jobs_pruned.clone(),
        );
        let grpc_calls = Family::<GrpcLabels, Counter>::default();
        registry.register(
            "translation_grpc_requests",
            "gRPC calls handled, by service, method and status code",
            grpc_calls.clone(),
        );
        let grpc_latency: LatencyFamily<GrpcLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "translation_grpc_request_duration",
            "Time to answer a gRPC call (to the first response for streams)",
            Unit::Seconds,
            grpc_latency.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "translation_http_requests",
            "HTTP requests handled, by method, route template and status",
            http_requests.clone(),
        );
        let http_latency: LatencyFamily<HttpLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "translation_http_request_duration",
            "Time to answer an HTTP request",
            Unit::Seconds,
            http_latency.clone(),
        );
        Self {
            registry,
            jobs_created,
            jobs_replayed,
            relay_pushed,
            relay_skipped,
            relay_failures,
            relay_lag,
            auth_open,
            relay_batch,
            reaper_requeued,
            reaper_dead_lettered,
            reaper_republished,
            reaper_pass,
            dead_letters_trimmed,
            jobs_pruned,
            grpc_calls,
            grpc_latency,
            http_requests,
            http_latency,
        }
    }

    /// A job was accepted; `priority` as stored (`LOW`, `NORMAL`, `HIGH`).
    pub fn job_created(&self, priority: &'static str) {
        self.jobs_created
            .get_or_create(&PriorityLabel { priority })
            .inc();
    }

    pub fn job_replayed(&self) {
        self.jobs_replayed.inc();
    }

    /// A batch was committed: `pushed` messages reached Redis now,
    /// `skipped` had been pushed by an earlier attempt that did not commit,
    /// and the batch took `took` from claim to commit.
    pub fn relay_published(&self, pushed: u64, skipped: u64, took: Duration) {
        self.relay_pushed.inc_by(pushed);
        self.relay_skipped.inc_by(skipped);
        self.relay_batch.observe(took.as_secs_f64());
    }

    pub fn relay_failed(&self) {
        self.relay_failures.inc();
    }

    /// Whether the job service runs without authentication.
    pub fn auth_open(&self, open: bool) {
        self.auth_open.set(i64::from(open));
    }

    pub fn relay_lag(&self, lag: Duration) {
        self.relay_lag.set(lag.as_secs_f64());
    }

    /// What one reaper pass handed out again.
    pub fn reaper_handed_out(&self, requeued: usize, dead_lettered: usize, republished: usize) {
        self.reaper_requeued.inc_by(requeued as u64);
        self.reaper_dead_lettered.inc_by(dead_lettered as u64);
        self.reaper_republished.inc_by(republished as u64);
    }

    /// One reaper pass of `part` (`stuck` or `lost`), or one batch of the
    /// search for lost messages (`lost_batch`), took `took`.
    pub fn reaper_pass(&self, part: &'static str, took: Duration) {
        self.reaper_pass
            .get_or_create(&PartLabel { part })
            .observe(took.as_secs_f64());
    }

    /// Dead letters a trim pass dropped.
    pub fn dead_letters_trimmed(&self, dropped: u64) {
        self.dead_letters_trimmed.inc_by(dropped);
    }

    /// Finished jobs of `status` (`COMPLETED`, `FAILED`, `CANCELLED`) that
    /// retention deleted.
    pub fn jobs_pruned(&self, status: &'static str, count: u64) {
        self.jobs_pruned
            .get_or_create(&StatusLabel { status })
            .inc_by(count);
    }

    /// One gRPC call answered.
    pub fn grpc_call(&self, labels: &GrpcLabels, took: Duration) {
        self.grpc_calls.get_or_create(labels).inc();
        self.grpc_latency
            .get_or_create(labels)
            .observe(took.as_secs_f64());
    }

    /// One HTTP request answered.
    pub fn http_request(&self, labels: &HttpLabels, took: Duration) {
        self.http_requests.get_or_create(labels).inc();
        self.http_latency
            .get_or_create(labels)
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of everything, with `gauges` read for
    /// this scrape.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail; a metric that could not be
        // encoded would only be missing from this scrape.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        let _ = prometheus_text::encode(&mut out, &scrape_registry(gauges));
        out
    }
}

/// A registry holding the figures of one scrape.
fn scrape_registry(gauges: &Gauges) -> Registry {
    let mut registry = Registry::default();
    let flag = |up: bool| {
        let gauge = Gauge::<i64>::default();
        gauge.set(i64::from(up));
        gauge
    };
    registry.register(
        "translation_database_up",
        "Whether PostgreSQL answered the scrape's query",
        flag(gauges.database_up),
    );
    registry.register(
        "translation_redis_up",
        "Whether Redis answered the scrape's reads",
        flag(gauges.redis_up),
    );
    if let Some(backlog) = gauges.outbox_backlog {
        let gauge = Gauge::<i64>::default();
        gauge.set(backlog);
        registry.register(
            "translation_outbox_backlog",
            "Outbox rows not yet published: counted when few, PostgreSQL's estimate when many (see translation_outbox_backlog_estimated)",
            gauge,
        );
        registry.register(
            "translation_outbox_backlog_estimated",
            "1 when translation_outbox_backlog is PostgreSQL's estimate (more rows than are counted one by one)",
            flag(gauges.outbox_backlog_estimated),
        );
    }
    let oldest = Gauge::<f64, AtomicU64>::default();
    oldest.set(gauges.outbox_oldest_age.unwrap_or_default().as_secs_f64());
    registry.register_with_unit(
        "translation_outbox_oldest_age",
        "Age of the oldest unpublished outbox row (0 when empty)",
        Unit::Seconds,
        oldest,
    );
    if !gauges.lane_lengths.is_empty() {
        let lanes = Family::<LaneLabel, Gauge>::default();
        for (lane, length) in &gauges.lane_lengths {
            lanes
                .get_or_create(&LaneLabel { lane })
                .set(i64::try_from(*length).unwrap_or(i64::MAX));
        }
        registry.register(
            "translation_queue_length",
            "Length of each Redis lane",
            lanes,
        );
    }
    if let Some(policy) = &gauges.redis_maxmemory_policy {
        registry.register(
            "translation_redis_maxmemory_policy",
            "Redis's maxmemory-policy; anything but noeviction can drop queued messages",
            Info::new(PolicyLabel {
                policy: policy.clone(),
            }),
        );
    }
    if let Some(usage) = gauges.notification_queue_usage {
        let gauge = Gauge::<f64, AtomicU64>::default();
        gauge.set(usage);
        registry.register(
            "translation_notification_queue_usage",
            "Share of PostgreSQL's notification queue in use (pg_notification_queue_usage); \
             notifying commits fail when it is full",
            gauge,
        );
    }
    let streams = Gauge::<i64>::default();
    streams.set(i64::try_from(gauges.open_watch_streams).unwrap_or(i64::MAX));
    registry.register(
        "translation_watch_streams",
        "WatchTranslationJob streams open in this process",
        streams,
    );
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges() -> Gauges {
        Gauges {
            database_up: true,
            redis_up: false,
            outbox_backlog: Some(3),
            outbox_backlog_estimated: false,
            outbox_oldest_age: Some(Duration::from_millis(1500)),
            lane_lengths: vec![("normal", 7), ("high", 0)],
            redis_maxmemory_policy: Some("allkeys-lru".into()),
            open_watch_streams: 2,
            notification_queue_usage: Some(0.25),
        }
    }

    #[test]
    fn renders_counters_gauges_and_labelled_series_under_their_stable_names() {
        let metrics = Metrics::default();
        metrics.job_created("HIGH");
        metrics.job_created("HIGH");
        metrics.job_created("NORMAL");
        metrics.relay_published(5, 1, Duration::from_millis(3));
        metrics.reaper_handed_out(1, 2, 3);
        metrics.reaper_pass("lost", Duration::from_millis(15));
        metrics.jobs_pruned("COMPLETED", 1000);
        metrics.jobs_pruned("COMPLETED", 5);
        metrics.jobs_pruned("FAILED", 2);
        let text = metrics.render(&gauges());
        for line in [
            "# TYPE translation_jobs_created_total counter\n",
            "translation_jobs_created_total{priority=\"HIGH\"} 2\n",
            "translation_jobs_created_total{priority=\"NORMAL\"} 1\n",
            "translation_jobs_replayed_total 0\n",
            "translation_relay_pushed_total 5\n",
            "translation_relay_duplicates_skipped_total 1\n",
            "translation_relay_batch_duration_seconds_count 1\n",
            "translation_relay_batch_duration_seconds_bucket{le=\"0.005\"} 1\n",
            "translation_relay_batch_duration_seconds_bucket{le=\"0.0025\"} 0\n",
            "translation_reaper_requeued_total 1\n",
            "translation_reaper_pass_duration_seconds_bucket{part=\"lost\",le=\"0.02\"} 1\n",
            "translation_reaper_pass_duration_seconds_bucket{part=\"lost\",le=\"0.01\"} 0\n",
            "translation_reaper_dead_lettered_total 2\n",
            "translation_reaper_republished_total 3\n",
            "# TYPE translation_jobs_pruned_total counter\n",
            "translation_jobs_pruned_total{status=\"COMPLETED\"} 1005\n",
            "translation_jobs_pruned_total{status=\"FAILED\"} 2\n",
            "translation_redis_up 0\n",
            "translation_database_up 1\n",
            "translation_outbox_backlog 3\n",
            "translation_outbox_backlog_estimated 0\n",
            "translation_outbox_oldest_age_seconds 1.5\n",
            "translation_queue_length{lane=\"normal\"} 7\n",
            "translation_queue_length{lane=\"high\"} 0\n",
            "translation_redis_maxmemory_policy_info{policy=\"allkeys-lru\"} 1\n",
            "translation_watch_streams 2\n",
            "translation_notification_queue_usage 0.25\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn calls_are_counted_and_timed_by_their_labels() {
        let metrics = Metrics::default();
        let ok = GrpcLabels {
            service: "translation.v1.TranslationJobService",
            method: "CreateTranslationJob",
            code: "OK",
        };
        metrics.grpc_call(&ok, Duration::from_millis(2));
        metrics.grpc_call(&ok, Duration::from_millis(40));
        metrics.http_request(
            &HttpLabels {
                method: "GET",
                route: "/api/v1/translation-jobs/{id}".into(),
                status: 404,
            },
            Duration::from_micros(300),
        );
        let text = metrics.render(&Gauges::default());
        let grpc = "service=\"translation.v1.TranslationJobService\",method=\"CreateTranslationJob\",code=\"OK\"";
        assert!(
            text.contains(&format!("translation_grpc_requests_total{{{grpc}}} 2\n")),
            "{text}"
        );
        assert!(text.contains(&format!(
            "translation_grpc_request_duration_seconds_bucket{{{grpc},le=\"0.005\"}} 1\n"
        )));
        assert!(text.contains(&format!(
            "translation_grpc_request_duration_seconds_count{{{grpc}}} 2\n"
        )));
        assert!(text.contains(
            "translation_http_requests_total{method=\"GET\",route=\"/api/v1/translation-jobs/{id}\",status=\"404\"} 1\n"
        ));
    }

    #[test]
    fn odd_label_values_are_escaped_and_absent_readings_are_left_out() {
        let metrics = Metrics::default();
        let text = metrics.render(&Gauges {
            redis_maxmemory_policy: Some("a\"b\\c\nd".into()),
            ..Gauges::default()
        });
        assert!(
            text.contains(
                "translation_redis_maxmemory_policy_info{policy=\"a\\\"b\\\\c\\nd\"} 1\n"
            ),
            "{text}"
        );
        assert!(!text.contains("translation_outbox_backlog "));
        assert!(!text.contains("translation_outbox_backlog_estimated "));
        assert!(!text.contains("translation_queue_length{"));
        assert!(text.contains("translation_database_up 0\n"));
    }
}
