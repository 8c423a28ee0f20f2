//! Logs and traces. Logs: human-readable by default, one JSON object per
//! line with `LOG_FORMAT=json`; the filter comes from `RUST_LOG`. Traces:
//! exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, see [`traces`]; without it
//! no span leaves the process and the OpenTelemetry layer is not installed.

pub mod traces;

use tracing_subscriber::{EnvFilter, Layer as _, fmt, layer::SubscriberExt as _};

pub use traces::Telemetry;

/// Log output format (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Filter when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str =
    "info,sqlx=warn,fred=warn,h2=warn,tower=warn,opentelemetry=warn,opentelemetry_sdk=warn";

/// Installs the global subscriber: the log layer and, when an OTLP endpoint
/// is configured, the trace layer. Safe to call more than once (tests):
/// later calls install nothing and export nothing. Keep the returned value
/// and call [`Telemetry::shutdown`] before exiting, so buffered spans are
/// sent.
pub fn init(format: LogFormat) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let logs = match format {
        LogFormat::Text => fmt::layer().with_target(true).boxed(),
        LogFormat::Json => fmt::layer()
            .with_target(true)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
    };
    // Built before the subscriber is installed, so a failure is logged
    // through it below.
    let mut failure = None;
    let (trace_layer, telemetry, endpoint) = match traces::Exporter::from_env() {
        Ok(Some(exporter)) => match traces::layer(&exporter) {
            Ok((layer, telemetry)) => (Some(layer), telemetry, Some(exporter.endpoint)),
            Err(error) => {
                failure = Some(error);
                (None, Telemetry::disabled(), None)
            }
        },
        Ok(None) => (None, Telemetry::disabled(), None),
        Err(error) => {
            failure = Some(error);
            (None, Telemetry::disabled(), None)
        }
    };
    let installed = tracing::subscriber::set_global_default(
        tracing_subscriber::registry()
            .with(logs.with_filter(filter))
            .with(trace_layer),
    )
    .is_ok();
    if !installed {
        // Another subscriber was first (tests): its spans are not ours to export.
        return Telemetry::disabled();
    }
    if let Some(endpoint) = endpoint {
        traces::set_enabled();
        tracing::info!(endpoint = %redact_url(&endpoint), "exporting traces over OTLP");
    }
    if let Some(error) = failure {
        tracing::warn!(error = %error_chain(&error), "cannot export traces; running without them");
    }
    telemetry
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

/// A URL with its password replaced by `***`, for log lines.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find('/')
        .map_or(url.len(), |i| authority_start + i);
    let authority = &url[authority_start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
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
        &url[authority_end..]
    )
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
    }
}
