//! Logging: human-readable by default, one JSON object per line with
//! `LOG_FORMAT=json`; the filter comes from `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

/// Log output format (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Filter when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "info,sqlx=warn,fred=warn,h2=warn,tower=warn";

/// Installs the global subscriber. Safe to call more than once (tests): later
/// calls do nothing.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colours only for a person at a terminal, never into files or pipes.
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(std::io::stdout().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// An error followed by its sources, for one log field.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A URL with its passwords (userinfo and a Sentinel URL's
/// `sentinelPassword`) replaced by `***`, for log lines.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| authority_start + i);
    let rest = redact_query_password(&url[authority_end..]);
    let authority = &url[authority_start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return format!("{}{rest}", &url[..authority_end]);
    };
    let userinfo = &authority[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    let shown_user = if userinfo.contains(':') {
        format!("{user}:***")
    } else {
        // A lone userinfo in a Redis URL is the password.
        "***".to_owned()
    };
    format!(
        "{}{}@{}{}",
        &url[..authority_start],
        shown_user,
        &authority[at + 1..],
        rest
    )
}

/// The path and query of a URL with the value of `sentinelPassword=` masked.
fn redact_query_password(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((name, _)) if name.eq_ignore_ascii_case("sentinelPassword") => {
                format!("{name}=***")
            }
            _ => param.to_owned(),
        })
        .collect();
    format!("{path}?{}", params.join("&"))
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(
            redact_url("redis://user:s3cret@cache:6379/0"),
            "redis://user:***@cache:6379/0"
        );
        assert_eq!(
            redact_url("rediss://:s3cret@cache:6380"),
            "rediss://:***@cache:6380"
        );
        assert_eq!(redact_url("redis://s3cret@cache"), "redis://***@cache");
        assert_eq!(
            redact_url("redis://localhost:6379/0"),
            "redis://localhost:6379/0"
        );
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(
            redact_url(
                "redis-sentinel://:s3cret@s1:26379/0?sentinelServiceName=jobs&sentinelPassword=p@ss&node=s2:26379"
            ),
            "redis-sentinel://:***@s1:26379/0?sentinelServiceName=jobs&sentinelPassword=***&node=s2:26379"
        );
        assert_eq!(
            redact_url("redis-cluster://:s3cret@a:6379?node=b:6379"),
            "redis-cluster://:***@a:6379?node=b:6379"
        );
        assert_eq!(
            redact_url("redis-sentinel://s1:26379?sentinelServiceName=jobs&sentinelPassword=x"),
            "redis-sentinel://s1:26379?sentinelServiceName=jobs&sentinelPassword=***"
        );
    }
}
