//! What every call leaves behind: a tower layer over the gRPC server
//! ([`GrpcLayer`]) and one over the HTTP routes ([`HttpLayer`]). Each call is
//! counted and timed in the metrics by method and status; when traces are
//! exported it also runs in a server span that continues the caller's W3C
//! trace context (`traceparent` and `tracestate` headers, which is also what
//! gRPC metadata is), so the handlers' spans are its children.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::extract::MatchedPath;
use prost::Message as _;
use tonic::Code;
use tower_layer::Layer;
use tower_service::Service;
use tracing::{Instrument as _, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{
    metrics::{GrpcLabels, HttpLabels, Metrics},
    proto::FILE_DESCRIPTOR_SET,
    telemetry::traces,
};

/// Label and span name of a gRPC path that no served service declares.
const UNKNOWN: &str = "unknown";

/// Probed and scraped every few seconds: counted, never traced (a trace per
/// probe would drown the calls that matter).
const UNTRACED_GRPC_SERVICE: &str = "grpc.health.v1.Health";
const UNTRACED_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Observes the calls of the gRPC server (every service on it).
#[derive(Clone)]
pub struct GrpcLayer {
    metrics: Arc<Metrics>,
}

impl GrpcLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for GrpcLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observed {
            inner,
            metrics: self.metrics.clone(),
            protocol: Protocol::Grpc,
        }
    }
}

/// Observes the HTTP routes. Apply it with `Router::route_layer`, so that the
/// matched route template is known.
#[derive(Clone)]
pub struct HttpLayer {
    metrics: Arc<Metrics>,
}

impl HttpLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for HttpLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observed {
            inner,
            metrics: self.metrics.clone(),
            protocol: Protocol::Http,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Protocol {
    Grpc,
    Http,
}

/// A service wrapped by [`GrpcLayer`] or [`HttpLayer`].
#[derive(Clone)]
pub struct Observed<S> {
    inner: S,
    metrics: Arc<Metrics>,
    protocol: Protocol,
}

impl<S, B, R> Service<http::Request<B>> for Observed<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let call = match self.protocol {
            Protocol::Grpc => Call::grpc(&request),
            Protocol::Http => Call::http(&request),
        };
        let response = {
            let _entered = call.span.enter();
            self.inner.call(request)
        };
        let metrics = self.metrics.clone();
        let span = call.span.clone();
        Box::pin(async move {
            let result = response.instrument(span).await;
            call.finish(&metrics, result.as_ref().ok(), started.elapsed());
            result
        })
    }
}

/// One call in flight: its labels and its span (disabled when traces are
/// not exported).
struct Call {
    kind: CallKind,
    span: Span,
}

enum CallKind {
    Grpc(&'static KnownMethod),
    Http { method: &'static str, route: String },
}

impl Call {
    fn grpc<B>(request: &http::Request<B>) -> Self {
        let method = known_method(request.uri().path());
        let span = if traces::enabled() && method.service != UNTRACED_GRPC_SERVICE {
            let span = tracing::info_span!(
                "grpc",
                otel.name = method.full_name,
                otel.kind = "server",
                otel.status_code = tracing::field::Empty,
                rpc.system = "grpc",
                rpc.service = method.service,
                rpc.method = method.method,
                rpc.grpc.status_code = tracing::field::Empty,
            );
            let _ = span.set_parent(traces::extract(request.headers()));
            span
        } else {
            Span::none()
        };
        Self {
            kind: CallKind::Grpc(method),
            span,
        }
    }

    fn http<B>(request: &http::Request<B>) -> Self {
        let method = http_method(request.method());
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| UNKNOWN.to_owned(), |path| path.as_str().to_owned());
        let span = if traces::enabled() && !UNTRACED_ROUTES.contains(&route.as_str()) {
            let span = tracing::info_span!(
                "http",
                otel.name = format!("{method} {route}"),
                otel.kind = "server",
                otel.status_code = tracing::field::Empty,
                http.request.method = method,
                http.route = %route,
                http.response.status_code = tracing::field::Empty,
            );
            let _ = span.set_parent(traces::extract(request.headers()));
            span
        } else {
            Span::none()
        };
        Self {
            kind: CallKind::Http { method, route },
            span,
        }
    }

    /// Records the outcome. `response` is `None` when the service failed
    /// without answering (the connection is then dropped).
    fn finish<R>(self, metrics: &Metrics, response: Option<&http::Response<R>>, took: Duration) {
        match self.kind {
            CallKind::Grpc(method) => {
                let code = response.map_or(Code::Unknown, grpc_code);
                self.span.record("rpc.grpc.status_code", code as i32);
                if server_fault(code) {
                    self.span.record("otel.status_code", "ERROR");
                }
                metrics.grpc_call(
                    &GrpcLabels {
                        service: method.service,
                        method: method.method,
                        code: code_name(code),
                    },
                    took,
                );
            }
            CallKind::Http { method, route } => {
                let status = response.map_or(500, |r| r.status().as_u16());
                self.span.record("http.response.status_code", status);
                if status >= 500 {
                    self.span.record("otel.status_code", "ERROR");
                }
                metrics.http_request(
                    &HttpLabels {
                        method,
                        route,
                        status,
                    },
                    took,
                );
            }
        }
    }
}

/// The status of a gRPC response as far as its headers tell: an error
/// answered by a handler is a trailers-only response with `grpc-status` in
/// the headers; without it the call succeeded (for a stream: it started).
fn grpc_code<R>(response: &http::Response<R>) -> Code {
    match response.headers().get("grpc-status") {
        None => Code::Ok,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|value| value.parse::<i32>().ok())
            .map_or(Code::Unknown, Code::from_i32),
    }
}

/// The codes that are the server's fault (OpenTelemetry marks those spans
/// as errors; a caller's mistake is not).
fn server_fault(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// The gRPC name of a status code, as in `grpc-status` documentation.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn http_method(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// A method some served service declares.
#[derive(Debug)]
struct KnownMethod {
    /// `translation.v1.TranslationJobService/CreateTranslationJob`: the span name.
    full_name: &'static str,
    service: &'static str,
    method: &'static str,
}

static UNKNOWN_METHOD: KnownMethod = KnownMethod {
    full_name: UNKNOWN,
    service: UNKNOWN,
    method: UNKNOWN,
};

/// The method a request path (`/<service>/<method>`) names, or
/// [`UNKNOWN_METHOD`]: labels stay a fixed set whatever paths callers send.
fn known_method(path: &str) -> &'static KnownMethod {
    static KNOWN: OnceLock<HashMap<String, KnownMethod>> = OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        served_methods()
            .into_iter()
            .map(|(service, method)| {
                let full_name = format!("{service}/{method}");
                // Built once per process from the descriptors compiled in.
                let method = KnownMethod {
                    full_name: leak(full_name.clone()),
                    service: leak(service),
                    method: leak(method),
                };
                (full_name, method)
            })
            .collect()
    });
    path.strip_prefix('/')
        .and_then(|name| known.get(name))
        .unwrap_or(&UNKNOWN_METHOD)
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// `(service, method)` of every service the gRPC server hosts, read from
/// the descriptor sets it serves for reflection.
fn served_methods() -> Vec<(String, String)> {
    let sets: [&[u8]; 4] = [
        FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = Vec::new();
    for set in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = service.name.unwrap_or_default();
                let service_name = if package.is_empty() {
                    name
                } else {
                    format!("{package}.{name}")
                };
                for method in service.method {
                    methods.push((service_name.clone(), method.name.unwrap_or_default()));
                }
            }
        }
    }
    methods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_of_served_services_are_known_and_anything_else_is_unknown() {
        let create = known_method("/translation.v1.TranslationJobService/CreateTranslationJob");
        assert_eq!(create.service, "translation.v1.TranslationJobService");
        assert_eq!(create.method, "CreateTranslationJob");
        assert_eq!(
            create.full_name,
            "translation.v1.TranslationJobService/CreateTranslationJob"
        );
        assert_eq!(known_method("/grpc.health.v1.Health/Check").method, "Check");
        assert_eq!(
            known_method("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo").service,
            "grpc.reflection.v1alpha.ServerReflection"
        );
        for path in [
            "/translation.v1.TranslationJobService/NoSuchMethod",
            "/x/y",
            "",
            "/",
        ] {
            assert_eq!(known_method(path).method, UNKNOWN, "{path}");
        }
    }

    #[test]
    fn the_grpc_code_is_read_from_the_headers_and_defaults_to_ok() {
        let ok = http::Response::new(());
        assert_eq!(grpc_code(&ok), Code::Ok);
        let failed = http::Response::builder()
            .header("grpc-status", "3")
            .body(())
            .unwrap();
        assert_eq!(grpc_code(&failed), Code::InvalidArgument);
        assert_eq!(code_name(grpc_code(&failed)), "INVALID_ARGUMENT");
        let garbage = http::Response::builder()
            .header("grpc-status", "x")
            .body(())
            .unwrap();
        assert_eq!(grpc_code(&garbage), Code::Unknown);
    }
}
