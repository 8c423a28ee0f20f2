//! The settings helpers every test of `config` uses, and the tests that
//! read many concerns at once.

use std::{collections::HashMap, time::Duration};

use super::*;
use crate::api::limits::LimitSettings;

/// Settings from `vars`; open by `AUTH_MODE=none` unless `vars` say
/// anything about authentication.
pub(super) fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let mut map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    if !map.keys().any(|name| name.starts_with("AUTH_")) {
        map.insert("AUTH_MODE".into(), "none".into());
    }
    Settings::from_lookup(|name| map.get(name).cloned())
}

/// Settings from exactly `vars`.
pub(super) fn exactly(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Settings::from_lookup(|name| map.get(name).cloned())
}

#[test]
fn defaults_follow_the_design() {
    let s = settings(&[("DATABASE_URL", "postgres://u:secret@db:5432/jobs")]).unwrap();
    assert_eq!(s.redis.url, DEFAULT_REDIS_URL);
    assert_eq!(s.queue.as_str(), "translation_jobs");
    assert_eq!(s.grpc_addr.to_string(), "0.0.0.0:50051");
    assert_eq!(s.http_addr.to_string(), "0.0.0.0:8000");
    assert_eq!(s.relay.batch_size, DEFAULT_RELAY_BATCH_SIZE);
    assert!(s.relay_enabled);
    assert_eq!(s.queue_max_backlog, 1000);
    assert_eq!(s.reaper.interval, Duration::from_secs(30));
    assert_eq!(s.reaper.policy.stuck_after, Duration::from_secs(3600));
    assert_eq!(s.retries.default_max_attempts, 1);
    assert_eq!(
        s.dead_lane,
        crate::dead_lane::DeadLaneSettings {
            max_age: Some(Duration::from_secs(30 * 24 * 3600)),
            max_length: 100_000
        }
    );
    assert_eq!(s.retries.backoff_base, Duration::from_secs(10));
    assert_eq!(s.retries.backoff_max, Duration::from_secs(3600));
    assert_eq!(
        s.retries.max_schedule_ahead,
        Duration::from_secs(30 * 24 * 3600)
    );
    assert_eq!(s.log_format, LogFormat::Text);
}

#[test]
fn bad_values_name_their_variable() {
    let base = ("DATABASE_URL", "postgres://db/jobs");
    let cases = [
        ("RELAY_BATCH_SIZE", "0"),
        ("RELAY_BATCH_SIZE", "many"),
        ("RELAY_POLL_INTERVAL", "soon"),
        ("GRPC_ADDR", "localhost"),
        ("TRANSLATION_QUEUE", "has space"),
        ("REDIS_URL", "http://redis"),
        ("LOG_FORMAT", "xml"),
        ("RELAY_MARKER_TTL", "10s"),
        ("RELAY_ENABLED", "maybe"),
        ("MAX_JOB_ATTEMPTS", "3"),
        ("DATABASE_URL", "mysql://root@db/jobs"),
        ("JOB_MAX_ATTEMPTS", "0"),
        ("JOB_MAX_ATTEMPTS", "101"),
        ("RETRY_BACKOFF_BASE", "0"),
        ("RETRY_BACKOFF_MAX", "1s"),
        ("MAX_SCHEDULE_AHEAD", "later"),
        ("DEAD_LETTER_MAX_AGE", "a month"),
        ("DEAD_LETTER_MAX_LENGTH", "-1"),
        ("STUCK_JOB_TIMEOUT", "an hour"),
        ("QUEUE_MAX_BACKLOG", "-1"),
        ("REDIS_WAIT_REPLICAS", "-1"),
        ("REDIS_WAIT_TIMEOUT", "soon"),
    ];
    for (name, value) in cases {
        let error = settings(&[base, (name, value)]).err().unwrap();
        assert_eq!(error.name, name, "{name}={value}");
    }
}

#[test]
fn security_and_limit_settings_default_sensibly_and_name_bad_values() {
    let base = ("DATABASE_URL", "postgres://db/jobs");
    let s = settings(&[base]).unwrap();
    assert!(!s.auth.enabled());
    assert!(s.tls.is_none());
    assert_eq!(s.limits, LimitSettings::default());
    assert_eq!(s.limits.max_message_size, 4 * 1024 * 1024);

    let secret = "a-secret-of-at-least-32-bytes-0123";
    let s = settings(&[
        base,
        ("AUTH_JWT_SECRET", secret),
        ("AUTH_JWT_AUDIENCE", " translation-jobs "),
        ("GRPC_TLS_CERT", "/tls/tls.crt"),
        ("GRPC_TLS_KEY", "/tls/tls.key"),
        ("RPC_TIMEOUT", "5s"),
    ])
    .unwrap();
    assert!(s.auth.enabled());
    assert_eq!(s.auth.audience.as_deref(), Some("translation-jobs"));
    assert_eq!(s.tls.unwrap().client_ca, None);
    assert_eq!(s.limits.rpc_timeout, Duration::from_secs(5));

    let cases = [
        ("AUTH_JWT_SECRET", "short"),
        ("AUTH_JWT_PUBLIC_KEY", "/no/such/key.pem"),
        (
            "AUTH_JWT_PUBLIC_KEY",
            "-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----",
        ),
        ("GRPC_TLS_KEY", "/tls/only-a-key"),
        ("GRPC_TLS_CLIENT_CA", "/tls/ca.crt"),
        ("GRPC_MAX_MESSAGE_SIZE", "10"),
        ("GRPC_MAX_MESSAGE_SIZE", "4MiB"),
        ("RPC_TIMEOUT", "soon"),
        ("MAX_CONCURRENT_REQUESTS", "0"),
        ("MAX_WATCH_STREAMS", "-1"),
    ];
    for (name, value) in cases {
        let error = settings(&[base, (name, value)]).err().unwrap();
        let expected = if name == "GRPC_TLS_KEY" {
            "GRPC_TLS_CERT"
        } else {
            name
        };
        assert_eq!(error.name, expected, "{name}={value}");
        assert!(!error.to_string().contains("short"), "{error}");
    }
}
