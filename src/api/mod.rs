//! The edge: gRPC and HTTP handlers, request parsing, who is calling
//! (`auth`), TLS and the limits of the listeners, cross-site writes
//! (`origin`), and the mapping of errors to statuses. Calls into `jobs`;
//! nothing below calls back up.
//!
//! The modules form a one-way stack; each uses only the layers below its
//! own (`tests/layout.rs` checks it), bottom first:
//! - leaves, using nothing of `api`: `caller` (who is calling), `shares`,
//!   `wire`, `body`, `tls`, `transport`, `scrape`, `observe`;
//! - `http_server` (uses `tls`);
//! - `convert`: requests into domain types, results into responses;
//! - `json`: the JSON shapes;
//! - `status`: every error a call can fail with, the refusals of `auth`
//!   and `limits` included, and its one mapping to a gRPC status and an
//!   HTTP answer;
//! - `limits`, `origin`;
//! - `auth`: the token checks, the interceptor, the `Caller` extractor;
//! - `grpc`: [`JobsApi`], the job service;
//! - `events`, then `rest`: the HTTP routes;
//! - `http`: the routers.

pub mod auth;
pub mod body;
pub mod caller;
pub mod convert;
pub mod events;
mod grpc;
pub mod http;
pub mod http_server;
pub mod json;
pub mod limits;
pub mod observe;
pub mod origin;
mod rest;
pub mod scrape;
pub mod shares;
mod status;
pub mod tls;
pub mod transport;
pub mod wire;

pub use grpc::{ApiDeps, JobsApi};
pub use status::ApiError;

/// The generated code of the API, where clients and tests have always
/// found it (it lives in [`crate::proto`], below `api` and `health`).
pub use crate::proto;

/// The job service as the gRPC server serves it: every call checked by the
/// auth interceptor, behind the limits (calls in flight, message size).
pub fn job_service(
    api: JobsApi,
) -> limits::Guarded<
    tonic::codegen::InterceptedService<
        proto::translation_job_service_server::TranslationJobServiceServer<JobsApi>,
        auth::AuthInterceptor,
    >,
> {
    let limits = api.limits().clone();
    let wire = api.wire_limits();
    let interceptor = auth::AuthInterceptor::new(api.authenticator().clone());
    let server = proto::translation_job_service_server::TranslationJobServiceServer::new(api)
        .max_decoding_message_size(limits.settings().max_message_size);
    limits::Guarded::new(
        tonic::codegen::InterceptedService::new(server, interceptor),
        limits,
        wire,
    )
}
