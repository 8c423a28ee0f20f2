//! OpenTelemetry traces: the OTLP/gRPC pipeline, W3C trace context in and
//! out, and the flush at shutdown.
//!
//! Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set: then no OpenTelemetry layer
//! is installed, [`enabled`] is false, and the call sites skip their span
//! work. When on, the SDK reads the standard variables itself
//! (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`
//! and `_ARG`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `_HEADERS`,
//! `_COMPRESSION`, `OTEL_SPAN_LINK_COUNT_LIMIT`, ...); this module adds only
//! the default `service.name` of `translation-jobs`.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{SpanContext, TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_otlp::WithTonicConfig as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tonic::transport::ClientTlsConfig;
use tracing::{Level, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{Layer, filter::Targets, registry::LookupSpan};

/// `service.name` unless `OTEL_SERVICE_NAME` or a `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES` says otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "translation-jobs";

/// The W3C header (gRPC metadata key) and the message key that carry the
/// trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Longest the shutdown waits for the last spans to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Instrumentation scope of the service's spans.
const TRACER_NAME: &str = "translation-jobs";

/// Set once the trace layer is installed.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported; call sites skip span work (extracting
/// context, links) when not.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(super) fn set_enabled() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Why traces cannot be exported; the service then runs without them.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL is {0:?}; this build exports OTLP over gRPC only")]
    Protocol(String),
    #[error("cannot build the OTLP exporter")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Where spans go, decided from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exporter {
    /// The collector, for the start-up log line.
    pub endpoint: String,
    /// `Some` when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES`
    /// names the service.
    pub default_service_name: Option<&'static str>,
}

impl Exporter {
    /// From the process environment.
    pub fn from_env() -> Result<Option<Self>, TraceError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// `None` when no OTLP endpoint is set, or when `OTEL_SDK_DISABLED=true`
    /// or `OTEL_TRACES_EXPORTER=none` turn exporting off.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, TraceError> {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let Some(endpoint) = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        else {
            return Ok(None);
        };
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
            || get("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        if let Some(protocol) = get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .filter(|p| p.trim() != "grpc")
        {
            return Err(TraceError::Protocol(protocol));
        }
        let named_in_attributes = get("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attributes| {
            attributes
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .any(|(key, value)| key.trim() == "service.name" && !value.trim().is_empty())
        });
        let named = get("OTEL_SERVICE_NAME").is_some() || named_in_attributes;
        Ok(Some(Self {
            endpoint,
            default_service_name: (!named).then_some(DEFAULT_SERVICE_NAME),
        }))
    }

    /// The tracer provider: OTLP over gRPC (tonic) behind the SDK's batch
    /// processor, which exports from a thread of its own. Must be called
    /// inside the Tokio runtime (the gRPC channel lives on it). An `https`
    /// collector is verified against the webpki (Mozilla) roots.
    fn provider(&self) -> Result<SdkTracerProvider, TraceError> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if self.endpoint.trim().starts_with("https://") {
            exporter = exporter.with_tls_config(ClientTlsConfig::new().with_webpki_roots());
        }
        let exporter = exporter.build()?;
        let mut resource = Resource::builder();
        if let Some(name) = self.default_service_name {
            resource = resource.with_service_name(name);
        }
        Ok(SdkTracerProvider::builder()
            .with_resource(resource.build())
            .with_batch_exporter(exporter)
            .build())
    }
}

/// Keeps the tracer provider; [`shutdown`](Self::shutdown) flushes it.
#[must_use = "call shutdown() before exiting, or the last spans are lost"]
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub(super) fn disabled() -> Self {
        Self { provider: None }
    }

    /// Sends the spans still buffered and stops the exporter (at most a few
    /// seconds when the collector does not answer).
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The batch processor's thread is joined: keep it off the runtime's
        // workers, which the gRPC channel needs to send the last batch.
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT))
                .await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(error = %error, "could not flush the last spans"),
            Err(error) => tracing::warn!(error = %error, "could not flush the last spans"),
        }
    }
}

/// The OpenTelemetry layer for `exporter` and the handle that flushes it.
/// Only the service's own spans at INFO and above are exported (not those of
/// sqlx, h2 or fred, whatever `RUST_LOG` lets through to the logs).
pub(super) fn layer<S>(
    exporter: &Exporter,
) -> Result<(impl Layer<S> + use<S>, Telemetry), TraceError>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let provider = exporter.provider()?;
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(TRACER_NAME))
        .with_threads(false)
        .with_filter(Targets::new().with_target("translation_jobs", Level::INFO));
    Ok((
        layer,
        Telemetry {
            provider: Some(provider),
        },
    ))
}

/// The caller's trace context from HTTP headers or gRPC metadata (both are
/// an `http::HeaderMap` below tonic): `traceparent` and `tracestate`. An
/// invalid or missing header gives an empty context, never an error.
pub fn extract(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// The span context named by a message's or header's `traceparent` value.
pub fn span_context(traceparent: &str) -> Option<SpanContext> {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// The W3C `traceparent` naming the current span, when spans are exported.
/// This is what a message carries so that the worker continues the trace
/// under the span that created it.
pub fn current_traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = TraceparentOnly(None);
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.0
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Keeps `traceparent` and drops `tracestate`: the message has one key.
struct TraceparentOnly(Option<String>);

impl Injector for TraceparentOnly {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exporter(vars: &[(&str, &str)]) -> Result<Option<Exporter>, TraceError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Exporter::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        assert_eq!(exporter(&[]).unwrap(), None);
        assert_eq!(
            exporter(&[
                ("OTEL_SERVICE_NAME", "x"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", " ")
            ])
            .unwrap(),
            None
        );
        let off = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        assert_eq!(exporter(&off).unwrap(), None);
        let none = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ];
        assert_eq!(exporter(&none).unwrap(), None);
    }

    #[test]
    fn the_service_is_named_translation_jobs_unless_configured() {
        let plain = exporter(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")])
            .unwrap()
            .unwrap();
        assert_eq!(plain.endpoint, "http://collector:4317");
        assert_eq!(plain.default_service_name, Some(DEFAULT_SERVICE_NAME));
        let traces_only = exporter(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4317"),
            ("OTEL_SERVICE_NAME", "jobs-eu"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(traces_only.endpoint, "http://t:4317");
        assert_eq!(traces_only.default_service_name, None);
        let by_attribute = exporter(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod, service.name=jobs",
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(by_attribute.default_service_name, None);
    }

    #[test]
    fn only_grpc_is_accepted_as_protocol() {
        let http = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ];
        assert!(matches!(exporter(&http), Err(TraceError::Protocol(_))));
        let grpc = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        assert!(exporter(&grpc).unwrap().is_some());
    }

    #[test]
    fn trace_context_is_read_from_headers_and_traceparent_values() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        headers.insert("tracestate", "vendor=value".parse().unwrap());
        let context = extract(&headers);
        let span = context.span();
        let caller = span.span_context();
        assert_eq!(
            caller.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(caller.span_id().to_string(), "00f067aa0ba902b7");
        assert!(caller.is_sampled());
        assert_eq!(caller.trace_state().get("vendor"), Some("value"));

        assert!(!extract(&http::HeaderMap::new()).has_active_span());
        assert!(span_context("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(span_context("garbage").is_none());
        let parsed =
            span_context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!parsed.is_sampled());
    }
}
