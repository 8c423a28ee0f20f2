//! OpenTelemetry traces: the real binary exports to an OTLP receiver started
//! here (a tonic `TraceService` from `opentelemetry-proto`), and the spans
//! that arrive continue the caller's trace from the call through the create
//! statement to the relay's batch and the message.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value},
    trace::v1::{Span, span::SpanKind},
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, metadata::MetadataValue, transport::server::TcpIncoming};
use translation_jobs::{
    api::proto::translation_job_service_client::TranslationJobServiceClient, queue::Lane,
};

use crate::{
    binary::{Binary, database_url},
    support::{
        NOVEL_ID, PATIENCE, SHARED_REDIS_URL, cleanup, create_request, http_request, redis_client,
        unique_queue, wait_for_messages,
    },
};

/// An OTLP trace receiver on a free port, keeping every span it is sent
/// with the `service.name` of its resource.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    stop: Option<oneshot::Sender<()>>,
}

#[derive(Clone)]
struct Collect(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Collect {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| attribute(&resource.attributes, "service.name"))
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = oneshot::channel::<()>();
        let service = TraceServiceServer::new(Collect(spans.clone()));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                }),
        );
        Self {
            addr,
            spans,
            stop: Some(stop),
        }
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A string or integer attribute as text.
fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value {
        AnyValue {
            value: Some(any_value::Value::StringValue(text)),
        } => Some(text.clone()),
        AnyValue {
            value: Some(any_value::Value::IntValue(number)),
        } => Some(number.to_string()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The one span named `name` in trace `trace_id`.
fn span_named<'a>(spans: &'a [Span], trace_id: &str, name: &str) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == name && hex(&s.trace_id) == trace_id)
        .collect();
    assert_eq!(found.len(), 1, "spans named {name:?} in trace {trace_id}");
    found[0]
}

/// Whether `ancestor` is `span`'s parent, grandparent, ...
fn descends_from(spans: &[Span], span: &Span, ancestor: &Span) -> bool {
    let by_id: HashMap<&[u8], &Span> = spans.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    let mut current = span;
    for _ in 0..spans.len() {
        if current.parent_span_id == ancestor.span_id {
            return true;
        }
        match by_id.get(current.parent_span_id.as_slice()) {
            Some(parent) => current = parent,
            None => return false,
        }
    }
    false
}

/// The service binary, exporting traces to `receiver`.
async fn start_service(database: &PgConnectOptions, queue: &str, receiver: &Receiver) -> Binary {
    Binary::start_ready(
        &[
            ("DATABASE_URL", database_url(database)),
            ("REDIS_URL", SHARED_REDIS_URL.into()),
            ("TRANSLATION_QUEUE", queue.into()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{}", receiver.addr),
            ),
            // Nothing is sent on a timer during the test: what arrives was
            // flushed at shutdown.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000".into()),
        ],
        &[
            "OTEL_SERVICE_NAME",
            "OTEL_RESOURCE_ATTRIBUTES",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_TRACES_SAMPLER",
        ],
    )
    .await
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_create_is_traced_from_the_callers_span_through_the_statement_to_the_relay_batch(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let receiver = Receiver::start().await;
    let queue = unique_queue();
    let mut service = start_service(&database, queue.as_str(), &receiver).await;

    // A gRPC caller and an HTTP caller, each inside a trace of its own.
    let grpc_trace = uuid::Uuid::new_v4().simple().to_string();
    let grpc_parent = "00f067aa0ba902b7";
    let mut client =
        TranslationJobServiceClient::connect(format!("http://127.0.0.1:{}", service.grpc_port))
            .await
            .unwrap();
    let mut request = Request::new(create_request());
    let traceparent: MetadataValue<_> =
        format!("00-{grpc_trace}-{grpc_parent}-01").parse().unwrap();
    request.metadata_mut().insert("traceparent", traceparent);
    request
        .metadata_mut()
        .insert("tracestate", "vendor=opaque".parse().unwrap());
    let grpc_job = client
        .create_translation_job(request)
        .await
        .unwrap()
        .into_inner();

    let http_trace = uuid::Uuid::new_v4().simple().to_string();
    let http_parent = "b7ad6b7169203331";
    let body = format!(r#"{{"novel_id": "{NOVEL_ID}", "target_lang": "de"}}"#);
    let (status, created) = http_request(
        "POST",
        &format!(
            "http://127.0.0.1:{}/api/v1/translation-jobs",
            service.http_port
        ),
        Some(&body),
        &[("traceparent", &format!("00-{http_trace}-{http_parent}-01"))],
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{created}");
    let http_job: serde_json::Value = serde_json::from_str(&created).unwrap();

    let redis = redis_client(SHARED_REDIS_URL).await;
    let messages = wait_for_messages(&redis, &queue, Lane::Normal, 2).await;
    assert!(
        receiver.spans().is_empty(),
        "spans were sent before shutdown despite the long schedule delay"
    );
    let exit = service.terminate(PATIENCE).await;
    assert!(
        exit.success(),
        "exit status {exit:?}; its output:\n{}",
        service.output()
    );

    let arrived = receiver.spans();
    assert!(!arrived.is_empty(), "no span was flushed at shutdown");
    assert!(
        arrived
            .iter()
            .all(|(service, _)| service == "translation-jobs"),
        "service.name: {:?}",
        arrived.iter().map(|(s, _)| s).collect::<Vec<_>>()
    );
    let spans: Vec<Span> = arrived.into_iter().map(|(_, span)| span).collect();
    assert!(
        !spans.iter().any(|s| s.name.contains("readyz")),
        "probes are not traced"
    );

    // The RPC span continues the caller's trace under the caller's span.
    let rpc = span_named(
        &spans,
        &grpc_trace,
        "translation.v1.TranslationJobService/CreateTranslationJob",
    );
    assert_eq!(hex(&rpc.parent_span_id), grpc_parent);
    assert_eq!(rpc.kind, SpanKind::Server as i32);
    assert_eq!(rpc.trace_state, "vendor=opaque");
    assert_eq!(
        attribute(&rpc.attributes, "rpc.system").as_deref(),
        Some("grpc")
    );
    assert_eq!(
        attribute(&rpc.attributes, "rpc.service").as_deref(),
        Some("translation.v1.TranslationJobService")
    );
    assert_eq!(
        attribute(&rpc.attributes, "rpc.method").as_deref(),
        Some("CreateTranslationJob")
    );
    assert_eq!(
        attribute(&rpc.attributes, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );

    // The create statement runs inside it, and the message names it.
    let statement = span_named(&spans, &grpc_trace, "INSERT translation_jobs");
    assert!(
        descends_from(&spans, statement, rpc),
        "the create statement is not under the RPC span"
    );
    assert_eq!(statement.kind, SpanKind::Client as i32);
    let grpc_message = messages
        .iter()
        .find(|m| m.job_id == grpc_job.id)
        .expect("the gRPC job's message");
    assert_eq!(
        grpc_message.traceparent.as_deref(),
        Some(format!("00-{grpc_trace}-{}-01", hex(&statement.span_id)).as_str())
    );

    // The same over HTTP.
    let http = span_named(&spans, &http_trace, "POST /api/v1/translation-jobs");
    assert_eq!(hex(&http.parent_span_id), http_parent);
    assert_eq!(
        attribute(&http.attributes, "http.response.status_code").as_deref(),
        Some("201")
    );
    let http_statement = span_named(&spans, &http_trace, "INSERT translation_jobs");
    assert!(descends_from(&spans, http_statement, http));
    let http_message = messages
        .iter()
        .find(|m| Some(m.job_id.as_str()) == http_job["id"].as_str())
        .expect("the HTTP job's message");
    assert_eq!(
        http_message.traceparent.as_deref(),
        Some(format!("00-{http_trace}-{}-01", hex(&http_statement.span_id)).as_str())
    );

    // The relay's batches link to the statements that created their rows.
    let batches: Vec<&Span> = spans.iter().filter(|s| s.name == "relay batch").collect();
    assert!(!batches.is_empty(), "no relay batch span");
    for (trace, created_by) in [(&grpc_trace, statement), (&http_trace, http_statement)] {
        let linked = batches.iter().any(|batch| {
            batch.kind == SpanKind::Producer as i32
                && batch
                    .links
                    .iter()
                    .any(|link| hex(&link.trace_id) == *trace && link.span_id == created_by.span_id)
        });
        assert!(
            linked,
            "no relay batch links to the create span of trace {trace}"
        );
    }

    cleanup(&redis, &queue).await;
}
