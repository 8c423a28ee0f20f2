//! Logs and traces. Logs: human-readable by default, one JSON object per
//! line with `LOG_FORMAT=json`; the filter comes from `RUST_LOG`. Traces:
//! exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, see [`traces`]; without it
//! no span leaves the process and the OpenTelemetry layer is not installed.

pub mod traces;

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, Layer as _, fmt, layer::SubscriberExt as _};

pub use traces::Telemetry;

use crate::redact::redact_url;

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
    // Colours only for a person at a terminal, never into files or pipes.
    let colour = std::io::stdout().is_terminal();
    let logs = match format {
        LogFormat::Text => fmt::layer().with_target(true).with_ansi(colour).boxed(),
        LogFormat::Json => fmt::layer()
            .with_target(true)
            .with_ansi(false)
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
