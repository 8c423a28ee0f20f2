//! Redis: `REDIS_URL` (every topology: plain, TLS, cluster, sentinel), the
//! queue's name, the time limit of a command and the replicas a push waits
//! for.

use std::time::Duration;

use super::{
    ConfigError,
    parse::{duration, number},
};
use crate::queue::{QueueName, ReplicaWait};

pub const DEFAULT_REDIS_URL: &str = "redis://localhost:6379/0";
pub const DEFAULT_QUEUE: &str = "translation_jobs";
/// Limit for one Redis command, including waiting for a reconnection.
pub const DEFAULT_REDIS_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Replicas that must confirm each relay push before it counts; 0: none
/// (Redis replicates asynchronously, see `queue::replicas`).
pub const DEFAULT_REDIS_WAIT_REPLICAS: u32 = 0;
/// How long a push waits for those replicas before it counts as failed.
pub const DEFAULT_REDIS_WAIT_TIMEOUT: Duration = Duration::from_secs(1);
/// Most replicas `REDIS_WAIT_REPLICAS` may ask for.
pub const MAX_REDIS_WAIT_REPLICAS: u32 = 100;

/// `REDIS_URL`: one of the URL forms fred connects with; a sentinel URL
/// must name its master.
pub(super) fn redis_url(get: &impl Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let redis_url = get("REDIS_URL").unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned());
    let known_scheme = [
        "redis://",
        "rediss://",
        "redis-cluster://",
        "rediss-cluster://",
        "redis-sentinel://",
        "rediss-sentinel://",
    ]
    .iter()
    .any(|scheme| redis_url.starts_with(scheme));
    if !known_scheme {
        return Err(ConfigError::new(
            "REDIS_URL",
            "must start with redis://, rediss://, redis-cluster://, rediss-cluster://, \
             redis-sentinel:// or rediss-sentinel://",
        ));
    }
    if redis_url.contains("-sentinel://") && !redis_url.contains("sentinelServiceName=") {
        return Err(ConfigError::new(
            "REDIS_URL",
            "a redis-sentinel:// URL needs ?sentinelServiceName=<the monitored master's name>",
        ));
    }
    Ok(redis_url)
}

/// `TRANSLATION_QUEUE`: the prefix of every Redis key of the queue.
pub(super) fn queue_name(get: &impl Fn(&str) -> Option<String>) -> Result<QueueName, ConfigError> {
    let queue_raw = get("TRANSLATION_QUEUE").unwrap_or_else(|| DEFAULT_QUEUE.to_owned());
    QueueName::parse(&queue_raw)
        .map_err(|error| ConfigError::new("TRANSLATION_QUEUE", error.to_string()))
}

/// `REDIS_COMMAND_TIMEOUT`, then `REDIS_WAIT_REPLICAS` and
/// `REDIS_WAIT_TIMEOUT`, which must be shorter than a command may take.
pub(super) fn command_timeout_and_wait(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<(Duration, ReplicaWait), ConfigError> {
    let redis_command_timeout =
        duration(get, "REDIS_COMMAND_TIMEOUT", DEFAULT_REDIS_COMMAND_TIMEOUT)?;
    let redis_wait = ReplicaWait {
        replicas: number(
            get,
            "REDIS_WAIT_REPLICAS",
            DEFAULT_REDIS_WAIT_REPLICAS,
            0,
            MAX_REDIS_WAIT_REPLICAS,
        )?,
        timeout: duration(get, "REDIS_WAIT_TIMEOUT", DEFAULT_REDIS_WAIT_TIMEOUT)?,
    };
    if !redis_wait.is_off() && redis_wait.timeout >= redis_command_timeout {
        return Err(ConfigError::new(
            "REDIS_WAIT_TIMEOUT",
            format!(
                "must be shorter than REDIS_COMMAND_TIMEOUT ({})",
                humantime::format_duration(redis_command_timeout)
            ),
        ));
    }
    Ok((redis_command_timeout, redis_wait))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::tests::settings;

    #[test]
    fn every_redis_topology_url_form_is_accepted() {
        for url in [
            "redis://:pw@cache:6379/0",
            "rediss://cache:6380/0",
            "redis-cluster://a:6379?node=b:6379&node=c:6379",
            "rediss-cluster://:pw@a:6379?node=b:6379",
            "redis-sentinel://:pw@s1:26379/0?sentinelServiceName=jobs&node=s2:26379",
            "rediss-sentinel://s1:26379/0?sentinelServiceName=jobs&sentinelPassword=x",
        ] {
            let s = settings(&[("DATABASE_URL", "postgres://db/jobs"), ("REDIS_URL", url)]);
            assert!(s.is_ok(), "{url}");
        }
        let error = settings(&[
            ("DATABASE_URL", "postgres://db/jobs"),
            ("REDIS_URL", "redis-sentinel://s1:26379/0?node=s2:26379"),
        ])
        .err()
        .unwrap();
        assert_eq!(error.name, "REDIS_URL");
        assert!(error.reason.contains("sentinelServiceName"));
    }

    #[test]
    fn waiting_for_replicas_is_off_by_default_and_bounded_by_the_command_timeout() {
        let s = settings(&[("DATABASE_URL", "postgres://db/jobs")]).unwrap();
        assert!(s.redis_wait.is_off());
        let s = settings(&[
            ("DATABASE_URL", "postgres://db/jobs"),
            ("REDIS_WAIT_REPLICAS", "1"),
            ("REDIS_WAIT_TIMEOUT", "250ms"),
        ])
        .unwrap();
        assert_eq!(s.redis_wait.replicas, 1);
        assert_eq!(s.redis_wait.timeout, Duration::from_millis(250));
        let error = settings(&[
            ("DATABASE_URL", "postgres://db/jobs"),
            ("REDIS_WAIT_REPLICAS", "1"),
            ("REDIS_WAIT_TIMEOUT", "5s"),
            ("REDIS_COMMAND_TIMEOUT", "5s"),
        ])
        .err()
        .unwrap();
        assert_eq!(error.name, "REDIS_WAIT_TIMEOUT");
    }
}
