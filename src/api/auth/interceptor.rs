//! Where calls meet the [`Authenticator`]: the tonic interceptor of the job
//! service, which leaves a [`Principal`] in the request's extensions, the
//! [`Caller`] a gRPC handler reads from there, and the axum extractor of
//! [`Caller`] that makes the same check on the HTTP job routes.

use axum::{
    extract::{FromRef, FromRequestParts},
    http::request::Parts,
};
use tonic::{Request, Status, service::Interceptor};

use super::{AUTHORIZATION, Authenticator};
use crate::api::{
    caller::{Caller, Principal, TRACEPARENT_METADATA, USER_ID_METADATA, traceparent_from},
    status::{ApiError, AuthError, HttpError},
};

/// The tonic interceptor of the job service: checks the call and leaves a
/// [`Principal`] in its extensions for the handler.
#[derive(Clone)]
pub struct AuthInterceptor {
    authenticator: Authenticator,
}

impl AuthInterceptor {
    pub fn new(authenticator: Authenticator) -> Self {
        Self { authenticator }
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let metadata = request.metadata();
        let principal = self.authenticator.authenticate(
            metadata.get(AUTHORIZATION).map(|v| v.as_bytes()),
            metadata.get(USER_ID_METADATA).map(|v| v.as_bytes()),
        )?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// The caller of a gRPC call, from what the interceptor left. A request
/// that did not pass the interceptor is refused (fails closed).
pub fn grpc_caller<T>(request: &Request<T>) -> Result<Caller, ApiError> {
    let principal = request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or(AuthError::Missing)?;
    Ok(Caller::new(
        principal,
        traceparent_from(
            request
                .metadata()
                .get(TRACEPARENT_METADATA)
                .map(|v| v.as_bytes()),
        ),
    ))
}

/// The caller of an HTTP job route, checked like a gRPC call. Any router
/// state that yields the [`Authenticator`] will do (the job routes' is
/// `JobsApi`).
impl<S> FromRequestParts<S> for Caller
where
    Authenticator: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let headers = &parts.headers;
        let principal = Authenticator::from_ref(state).authenticate(
            headers.get(AUTHORIZATION).map(|v| v.as_bytes()),
            headers.get(USER_ID_METADATA).map(|v| v.as_bytes()),
        )?;
        Ok(Caller::new(
            principal,
            traceparent_from(headers.get(TRACEPARENT_METADATA).map(|v| v.as_bytes())),
        ))
    }
}
