//! Counters and gauges exported on `/metrics` in the Prometheus text format.
//!
//! Kept to a handful of atomics rendered by hand: the service needs a few
//! numbers, not a metrics framework.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// Process-wide counters. Shared behind an `Arc`.
#[derive(Debug, Default)]
pub struct Metrics {
    jobs_created: AtomicU64,
    jobs_replayed: AtomicU64,
    relay_pushed: AtomicU64,
    relay_duplicates_skipped: AtomicU64,
    relay_failures: AtomicU64,
    /// Age of the oldest row in the last published batch, in microseconds.
    relay_lag_micros: AtomicU64,
}

/// Figures read at scrape time from PostgreSQL and Redis.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    pub database_up: bool,
    pub redis_up: bool,
    pub outbox_backlog: Option<i64>,
    pub outbox_oldest_age: Option<Duration>,
    /// `(lane, length)` for each Redis lane that could be read.
    pub lane_lengths: Vec<(&'static str, u64)>,
    /// Redis's `maxmemory-policy`, when it could be read.
    pub redis_maxmemory_policy: Option<String>,
}

impl Metrics {
    pub fn job_created(&self) {
        self.jobs_created.fetch_add(1, Ordering::Relaxed);
    }

    pub fn job_replayed(&self) {
        self.jobs_replayed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn relay_published(&self, pushed: u64, skipped: u64) {
        self.relay_pushed.fetch_add(pushed, Ordering::Relaxed);
        self.relay_duplicates_skipped
            .fetch_add(skipped, Ordering::Relaxed);
    }

    pub fn relay_failed(&self) {
        self.relay_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn relay_lag(&self, lag: Duration) {
        let micros = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.relay_lag_micros.store(micros, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of the counters and `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let plain = |value: f64| vec![(String::new(), value)];
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed) as f64;

        metric(
            "translation_jobs_created_total",
            "counter",
            "Jobs accepted by CreateTranslationJob.",
            &plain(load(&self.jobs_created)),
        );
        metric(
            "translation_jobs_replayed_total",
            "counter",
            "Creates answered with an existing job because the request_id was reused.",
            &plain(load(&self.jobs_replayed)),
        );
        metric(
            "translation_relay_pushed_total",
            "counter",
            "Messages the relay pushed to Redis.",
            &plain(load(&self.relay_pushed)),
        );
        metric(
            "translation_relay_duplicates_skipped_total",
            "counter",
            "Messages not pushed again because an earlier uncommitted attempt had pushed them.",
            &plain(load(&self.relay_duplicates_skipped)),
        );
        metric(
            "translation_relay_failures_total",
            "counter",
            "Relay drains that failed (Redis or PostgreSQL unavailable).",
            &plain(load(&self.relay_failures)),
        );
        metric(
            "translation_relay_lag_seconds",
            "gauge",
            "Age of the oldest message in the last batch the relay published.",
            &plain(load(&self.relay_lag_micros) / 1e6),
        );
        metric(
            "translation_database_up",
            "gauge",
            "Whether PostgreSQL answered the scrape's query.",
            &plain(f64::from(u8::from(gauges.database_up))),
        );
        metric(
            "translation_redis_up",
            "gauge",
            "Whether Redis answered PING.",
            &plain(f64::from(u8::from(gauges.redis_up))),
        );
        if let Some(backlog) = gauges.outbox_backlog {
            metric(
                "translation_outbox_backlog",
                "gauge",
                "Outbox rows not yet published.",
                &plain(backlog as f64),
            );
        }
        metric(
            "translation_outbox_oldest_age_seconds",
            "gauge",
            "Age of the oldest unpublished outbox row (0 when empty).",
            &plain(gauges.outbox_oldest_age.unwrap_or_default().as_secs_f64()),
        );
        if let Some(policy) = &gauges.redis_maxmemory_policy {
            let policy: String = policy
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            metric(
                "translation_redis_maxmemory_policy_info",
                "gauge",
                "Redis's maxmemory-policy; anything but noeviction can drop queued messages.",
                &[(format!("{{policy=\"{policy}\"}}"), 1.0)],
            );
        }
        if !gauges.lane_lengths.is_empty() {
            let samples: Vec<(String, f64)> = gauges
                .lane_lengths
                .iter()
                .map(|(lane, length)| (format!("{{lane=\"{lane}\"}}"), *length as f64))
                .collect();
            metric(
                "translation_queue_length",
                "gauge",
                "Length of each Redis lane.",
                &samples,
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_labelled_lane_lengths() {
        let metrics = Metrics::default();
        metrics.job_created();
        metrics.job_created();
        metrics.relay_published(5, 1);
        let text = metrics.render(&Gauges {
            database_up: true,
            redis_up: false,
            outbox_backlog: Some(3),
            outbox_oldest_age: Some(Duration::from_millis(1500)),
            lane_lengths: vec![("normal", 7)],
            redis_maxmemory_policy: Some("allkeys-lru".into()),
        });
        assert!(
            text.contains("translation_jobs_created_total 2\n"),
            "{text}"
        );
        assert!(text.contains("translation_relay_pushed_total 5\n"));
        assert!(text.contains("translation_relay_duplicates_skipped_total 1\n"));
        assert!(text.contains("translation_redis_up 0\n"));
        assert!(text.contains("translation_outbox_backlog 3\n"));
        assert!(text.contains("translation_outbox_oldest_age_seconds 1.5\n"));
        assert!(text.contains("translation_queue_length{lane=\"normal\"} 7\n"));
        assert!(
            text.contains("translation_redis_maxmemory_policy_info{policy=\"allkeys-lru\"} 1\n")
        );
    }
}
