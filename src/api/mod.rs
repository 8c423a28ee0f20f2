//! The edge: gRPC and HTTP handlers, request parsing and the mapping of
//! errors to statuses. Calls into `jobs`; nothing below calls back up.

pub mod convert;
mod grpc;
pub mod http;
pub mod observe;
pub mod proto;
mod rest;
mod status;

pub use grpc::{ApiDeps, JobsApi};
pub use status::ApiError;
