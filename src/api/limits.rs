//! Limits that keep a flood of calls, a huge message or a slow call from
//! taking the service down: the largest request message, a deadline per
//! call, a cap on calls in flight (shed with RESOURCE_EXHAUSTED rather than
//! queued without bound) and a cap on open watch streams.
//!
//! They apply to the job service only (gRPC and the HTTP job routes):
//! health checks and reflection are never shed, so probes keep answering
//! under load.

use std::{
    convert::Infallible,
    future::{Future, ready},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{
    Status,
    body::Body,
    codegen::{Service, http},
    server::NamedService,
};

use super::{
    shares::{Share, Shares},
    status::{ApiError, HttpError, LimitError},
    wire::{self, WireLimits},
};
use crate::jobs::fields::FieldError;

/// Largest request message, decoded (gRPC) or as sent (HTTP body).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
/// Longest a unary call may run on the server; a shorter `grpc-timeout`
/// from the client wins.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Calls of the job service in flight at once; more are refused. Far above
/// what the database pool (16 connections) serves at once, so it only
/// bites when calls pile up faster than they finish.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 512;
/// Open WatchTranslationJob streams (about 16 KiB of memory each).
pub const DEFAULT_MAX_WATCH_STREAMS: usize = 5000;
/// Calls one authenticated caller may have in flight at once.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS_PER_CALLER: usize = 64;
/// Watch streams one authenticated caller may have open at once.
pub const DEFAULT_MAX_WATCH_STREAMS_PER_CALLER: usize = 100;

/// Status of gRPC's OUT_OF_RANGE in the `grpc-status` header.
const GRPC_OUT_OF_RANGE: &str = "11";

/// The limits, as read from the environment (see `config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    /// `GRPC_MAX_MESSAGE_SIZE`, in bytes.
    pub max_message_size: usize,
    /// `RPC_TIMEOUT`.
    pub rpc_timeout: Duration,
    /// `MAX_CONCURRENT_REQUESTS`.
    pub max_concurrent_requests: usize,
    /// `MAX_WATCH_STREAMS`.
    pub max_watch_streams: usize,
    /// `MAX_CONCURRENT_REQUESTS_PER_CALLER`.
    pub max_concurrent_requests_per_caller: usize,
    /// `MAX_WATCH_STREAMS_PER_CALLER`.
    pub max_watch_streams_per_caller: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_watch_streams: DEFAULT_MAX_WATCH_STREAMS,
            max_concurrent_requests_per_caller: DEFAULT_MAX_CONCURRENT_REQUESTS_PER_CALLER,
            max_watch_streams_per_caller: DEFAULT_MAX_WATCH_STREAMS_PER_CALLER,
        }
    }
}

/// The limits and the permits they hand out. Cheap to clone; clones share
/// the permits.
#[derive(Clone)]
pub struct Limits {
    settings: LimitSettings,
    calls: Arc<Semaphore>,
    watch_streams: Arc<Semaphore>,
    caller_calls: Shares,
    caller_watch_streams: Shares,
}

impl Limits {
    pub fn new(settings: LimitSettings) -> Self {
        Self {
            settings,
            calls: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
            watch_streams: Arc::new(Semaphore::new(settings.max_watch_streams)),
            caller_calls: Shares::new(settings.max_concurrent_requests_per_caller),
            caller_watch_streams: Shares::new(settings.max_watch_streams_per_caller),
        }
    }

    /// `caller`'s share of the calls in flight, held by the handler for
    /// the call (taken once the request is read, so a body still arriving
    /// holds none).
    pub fn try_caller_call(&self, caller: &str) -> Result<Share, LimitError> {
        self.caller_calls
            .try_take(caller)
            .ok_or(LimitError::CallerCalls {
                limit: self.caller_calls.limit(),
            })
    }

    /// `caller`'s share of the open watch streams, held by the stream.
    pub fn try_caller_watch(&self, caller: &str) -> Result<Share, LimitError> {
        self.caller_watch_streams
            .try_take(caller)
            .ok_or(LimitError::CallerWatchStreams {
                limit: self.caller_watch_streams.limit(),
            })
    }

    pub fn settings(&self) -> LimitSettings {
        self.settings
    }

    /// A place for one call, or RESOURCE_EXHAUSTED at once: never a queue.
    pub fn try_call(&self) -> Result<OwnedSemaphorePermit, LimitError> {
        self.calls
            .clone()
            .try_acquire_owned()
            .map_err(|_| LimitError::Calls {
                limit: self.settings.max_concurrent_requests,
            })
    }

    /// A place for one watch stream, held until the stream ends.
    pub fn try_watch(&self) -> Result<OwnedSemaphorePermit, LimitError> {
        self.watch_streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| LimitError::WatchStreams {
                limit: self.settings.max_watch_streams,
            })
    }

    /// Watch streams open now.
    pub fn open_watch_streams(&self) -> usize {
        self.settings.max_watch_streams - self.watch_streams.available_permits()
    }

    /// The message of a request over the size limit, the same over gRPC and
    /// HTTP.
    pub fn too_large(&self) -> String {
        format!(
            "the request message is larger than the limit of {} bytes",
            self.settings.max_message_size
        )
    }
}

/// The job service behind the limit on calls in flight. A call holds its
/// place until its response starts: the whole of a unary call, the opening
/// read of a watch stream (the stream itself is counted by
/// [`Limits::try_watch`]). Also gives tonic's "message too large" error the
/// same wording as the HTTP side.
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    limits: Limits,
    wire: WireLimits,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, limits: Limits, wire: WireLimits) -> Self {
        Self {
            inner,
            limits,
            wire,
        }
    }
}

/// The wire check of a method whose request holds repeated fields that
/// could be inflated (see `wire`); `None` for the others.
type WireCheck = fn(&[u8], &WireLimits) -> Result<(), FieldError>;

fn wire_check(path: &str) -> Option<WireCheck> {
    if path.ends_with("/CreateTranslationJob") {
        Some(|message, limits| wire::check_create(message, limits, ""))
    } else if path.ends_with("/BatchCreateTranslationJobs") {
        Some(wire::check_batch)
    } else {
        None
    }
}

/// Runs `check` over every uncompressed gRPC frame of `body` (a unary
/// request has one). Malformed or compressed frames are left to tonic,
/// which refuses them with its own error.
fn check_frames(body: &[u8], check: WireCheck, limits: &WireLimits) -> Result<(), FieldError> {
    let mut rest = body;
    while rest.len() >= 5 {
        let compressed = rest[0] != 0;
        let length = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let Some(message) = rest.get(5..5 + length) else {
            return Ok(());
        };
        if !compressed {
            check(message, limits)?;
        }
        rest = &rest[5 + length..];
    }
    Ok(())
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<Body>> for Guarded<S>
where
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if let Some(check) = wire_check(request.uri().path()) {
            // The ready service goes into the future; a clone stays.
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            return Box::pin(checked_call(
                inner,
                request,
                self.limits.clone(),
                self.wire,
                check,
            ));
        }
        let permit = match self.limits.try_call() {
            Ok(permit) => permit,
            Err(full) => {
                let status = Status::from(ApiError::from(full));
                return Box::pin(ready(Ok(status.into_http())));
            }
        };
        let too_large = self.limits.too_large();
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?.map(Body::new);
            drop(permit);
            Ok(reword_too_large(response, too_large))
        })
    }
}

/// A create or batch create: the whole body is read first (it is at most
/// the message size limit, which tonic would buffer anyway), its repeated
/// fields counted on the wire, and only then does the call take its place
/// among the calls in flight and go on to be decoded. A body still
/// arriving holds no place; a request over a count is refused before
/// anything of it is decoded.
async fn checked_call<S, B>(
    mut inner: S,
    request: http::Request<Body>,
    limits: Limits,
    wire: WireLimits,
    check: WireCheck,
) -> Result<http::Response<Body>, Infallible>
where
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible> + Send,
    S::Future: Send,
    B: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    use http_body_util::{BodyExt, Full, Limited};
    let (parts, body) = request.into_parts();
    // One frame: five bytes of header and the message.
    let most = limits.settings.max_message_size.saturating_add(5);
    let bytes = match Limited::new(body, most).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return Ok(Status::out_of_range(limits.too_large()).into_http());
        }
        Err(_) => {
            return Ok(Status::cancelled("the request did not arrive whole").into_http());
        }
    };
    if let Err(field) = check_frames(&bytes, check, &wire) {
        return Ok(Status::from(ApiError::from(field)).into_http());
    }
    let permit = match limits.try_call() {
        Ok(permit) => permit,
        Err(full) => return Ok(Status::from(ApiError::from(full)).into_http()),
    };
    let request = http::Request::from_parts(parts, Body::new(Full::new(bytes)));
    let response = inner.call(request).await?.map(Body::new);
    drop(permit);
    Ok(reword_too_large(response, limits.too_large()))
}

/// tonic refuses an oversized message with OUT_OF_RANGE before the handler
/// runs ("Error, decoded message length too large: ..."); the answer says
/// the same as the HTTP side instead. Nothing else of this service answers
/// OUT_OF_RANGE.
fn reword_too_large(response: http::Response<Body>, message: String) -> http::Response<Body> {
    let out_of_range = response
        .headers()
        .get("grpc-status")
        .is_some_and(|code| code == GRPC_OUT_OF_RANGE);
    let too_large = response
        .headers()
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
    if out_of_range && too_large {
        Status::out_of_range(message).into_http()
    } else {
        response
    }
}

/// The HTTP job routes behind the same limits: the call limit (shared with
/// gRPC), the deadline, and the body size (axum's `DefaultBodyLimit`
/// refuses a larger body with 413; this gives it the JSON error body).
pub async fn http_guard(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    let _permit = match limits.try_call() {
        Ok(permit) => permit,
        Err(full) => return HttpError::from(ApiError::from(full)).into_response(),
    };
    match tokio::time::timeout(limits.settings.rpc_timeout, next.run(request)).await {
        Ok(response) if response.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let mut response =
                HttpError::from(Status::out_of_range(limits.too_large())).into_response();
            *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            response
        }
        Ok(response) => response,
        Err(_) => HttpError::from(Status::deadline_exceeded(format!(
            "the call did not finish within {} (RPC_TIMEOUT)",
            humantime::format_duration(limits.settings.rpc_timeout)
        )))
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_beyond_the_limit_are_refused_at_once_and_places_come_back() {
        let limits = Limits::new(LimitSettings {
            max_concurrent_requests: 2,
            max_watch_streams: 1,
            ..LimitSettings::default()
        });
        let first = limits.try_call().unwrap();
        let _second = limits.try_call().unwrap();
        assert_eq!(
            limits.try_call().unwrap_err(),
            LimitError::Calls { limit: 2 }
        );
        drop(first);
        assert!(limits.try_call().is_ok());

        let stream = limits.try_watch().unwrap();
        assert_eq!(limits.open_watch_streams(), 1);
        assert!(limits.try_watch().is_err());
        drop(stream);
        assert_eq!(limits.open_watch_streams(), 0);
    }

    #[test]
    fn tonics_too_large_error_is_reworded_and_others_are_left_alone() {
        let limits = Limits::new(LimitSettings::default());
        let tonic = Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        )
        .into_http::<Body>();
        let reworded = reword_too_large(tonic, limits.too_large());
        let status = Status::from_header_map(reworded.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert_eq!(
            status.message(),
            "the request message is larger than the limit of 4194304 bytes"
        );

        let other = Status::not_found("job x not found").into_http::<Body>();
        let kept = reword_too_large(other, limits.too_large());
        let status = Status::from_header_map(kept.headers()).unwrap();
        assert_eq!(status.message(), "job x not found");
    }
}
