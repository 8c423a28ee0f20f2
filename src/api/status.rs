//! The one mapping from errors to answers: every error a call can fail
//! with ([`ApiError`], including the refusals of `auth` and `limits`), its
//! gRPC status, and that status's HTTP twin ([`HttpError`], with the JSON
//! error body).
//!
//! Callers get a code they can act on and a message that names what is
//! wrong with their request; internal causes are logged with their chain and
//! never sent to the caller.
//!
//! The refusals [`AuthError`] and [`LimitError`] are defined here, beside
//! their mapping, so that `status` sits below `auth` and `limits`: they
//! answer with these, and nothing here reaches up to them.

use axum::{
    Json,
    extract::rejection::{BytesRejection, PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header::WWW_AUTHENTICATE},
    response::{IntoResponse, Response},
};
use tonic::{Code, Status};

use super::{caller::ADMIN_SCOPE, json::ErrorJson};
use crate::{
    backlog::BacklogError,
    jobs::{JobError, RedriveError, fields::FieldError},
    queue::QueueError,
    telemetry::error_chain,
};

/// Why a caller is not let in. The messages say what is wrong with the
/// token, never what it contained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: send `authorization: Bearer <JWT>`")]
    Missing,
    #[error("the authorization value is not `Bearer <JWT>`")]
    NotBearer,
    #[error("invalid bearer token: {0}")]
    Invalid(&'static str),
    /// The token is good but does not allow the call.
    #[error("{action} needs a token with the {ADMIN_SCOPE} scope")]
    NotAdmin { action: &'static str },
}

/// A limit the service is at (see `limits`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error(
        "the service is handling its limit of {limit} calls at once (MAX_CONCURRENT_REQUESTS); \
         retry shortly"
    )]
    Calls { limit: usize },
    #[error(
        "the service holds its limit of {limit} open watch streams (MAX_WATCH_STREAMS); \
         retry later or poll GetTranslationJob"
    )]
    WatchStreams { limit: usize },
    #[error(
        "this caller has its limit of {limit} calls in flight \
         (MAX_CONCURRENT_REQUESTS_PER_CALLER); retry shortly"
    )]
    CallerCalls { limit: usize },
    #[error(
        "this caller holds its limit of {limit} open watch streams \
         (MAX_WATCH_STREAMS_PER_CALLER); close one, or poll GetTranslationJob"
    )]
    CallerWatchStreams { limit: usize },
}

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field is missing or malformed.
    #[error(transparent)]
    InvalidArgument(#[from] FieldError),
    /// PostgreSQL is unreachable (or not migrated yet, at start-up), or the
    /// service is shutting down.
    #[error("the database is not reachable")]
    NotReady,
    #[error(transparent)]
    Job(#[from] JobError),
    /// Too many jobs wait; the caller should retry later.
    #[error(transparent)]
    Backlog(#[from] BacklogError),
    /// No valid bearer token, or one without the scope the call needs.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The service is at one of its limits (calls, watch streams).
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// Redis failed or is unreachable, for a call that needs it (a redrive).
    #[error("Redis is not reachable")]
    Queue(#[from] QueueError),
}

impl From<RedriveError> for ApiError {
    fn from(error: RedriveError) -> Self {
        match error {
            RedriveError::Queue(queue) => ApiError::Queue(queue),
            RedriveError::Job(job) => ApiError::Job(job),
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::InvalidArgument(field) => Status::invalid_argument(field.to_string()),
            ApiError::NotReady => Status::unavailable(
                "the service cannot reach PostgreSQL right now (starting up, an outage or \
                 shutting down); retry shortly",
            ),
            ApiError::Job(job) => job_status(job),
            ApiError::Backlog(full @ BacklogError::Full { .. }) => {
                Status::resource_exhausted(full.to_string())
            }
            ApiError::Backlog(BacklogError::Database(database)) => {
                job_status(JobError::Database(database))
            }
            ApiError::Backlog(BacklogError::RecentlyFailed) => {
                Status::unavailable("PostgreSQL is unavailable; retry shortly")
            }
            ApiError::Auth(denied @ AuthError::NotAdmin { .. }) => {
                Status::permission_denied(denied.to_string())
            }
            ApiError::Auth(refused) => Status::unauthenticated(refused.to_string()),
            ApiError::Limit(limit) => Status::resource_exhausted(limit.to_string()),
            ApiError::Queue(QueueError::InvalidUrl(_) | QueueError::Reply(_)) => {
                tracing::error!(error = %error_chain(&error), "internal error");
                Status::internal("internal error")
            }
            ApiError::Queue(ref queue) => {
                tracing::warn!(error = %error_chain(queue), "Redis unavailable");
                Status::unavailable("Redis is unavailable; retry shortly")
            }
        }
    }
}

fn job_status(error: JobError) -> Status {
    match error {
        JobError::NotFound(id) => Status::not_found(format!("translation job {id} not found")),
        JobError::RequestIdReused { request_id, job_id } => Status::already_exists(format!(
            "request_id {request_id:?} was already used for job {job_id} with a different request"
        )),
        JobError::WrongStatus { .. } => Status::failed_precondition(error.to_string()),
        JobError::InBatch { index, source } => {
            let inner = job_status(*source);
            Status::new(
                inner.code(),
                format!("requests[{index}]: {}", inner.message()),
            )
        }
        JobError::RequestIdVanished { .. } => Status::aborted(error.to_string()),
        JobError::Corrupt { .. } => internal(&error),
        JobError::Database(ref database) => match database_code(database) {
            Code::Unavailable => {
                tracing::warn!(error = %error_chain(&error), "database unavailable");
                Status::unavailable("PostgreSQL is unavailable; retry shortly")
            }
            Code::AlreadyExists => Status::already_exists("the job already exists"),
            Code::Aborted => Status::aborted("the transaction conflicted with another; retry"),
            _ => internal(&error),
        },
    }
}

/// Logs the full cause and answers with a generic message.
fn internal(error: &JobError) -> Status {
    tracing::error!(error = %error_chain(error), "internal error");
    Status::internal("internal error")
}

/// Which code a database failure deserves: outages are UNAVAILABLE (the
/// caller should retry), everything unexpected is INTERNAL.
fn database_code(error: &sqlx::Error) -> Code {
    if crate::db::is_outage(error) {
        return Code::Unavailable;
    }
    match error {
        sqlx::Error::Database(database) => match database.code().as_deref() {
            Some("23505") => Code::AlreadyExists,
            Some("40001" | "40P01") => Code::Aborted,
            _ => Code::Internal,
        },
        _ => Code::Internal,
    }
}

/// An error answered as `{"error": {"code", "message"}}`, with the HTTP
/// status matching its gRPC code (or an explicit one, for 404, 405 and 413
/// answers that have no gRPC twin).
pub struct HttpError {
    status: StatusCode,
    code: Code,
    message: String,
}

impl HttpError {
    pub fn new(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for HttpError {
    fn from(status: tonic::Status) -> Self {
        let http = match status.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(http, status.code(), status.message())
    }
}

impl From<ApiError> for HttpError {
    fn from(error: ApiError) -> Self {
        tonic::Status::from(error).into()
    }
}

impl From<FieldError> for HttpError {
    fn from(error: FieldError) -> Self {
        ApiError::from(error).into()
    }
}

impl From<BytesRejection> for HttpError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            // gRPC answers an over-size message with RESOURCE_EXHAUSTED.
            Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::ResourceExhausted,
                format!("body: {}", rejection.body_text()),
            )
        } else {
            FieldError::new("body", rejection.body_text()).into()
        }
    }
}

impl From<PathRejection> for HttpError {
    fn from(rejection: PathRejection) -> Self {
        FieldError::new("id", rejection.body_text()).into()
    }
}

impl From<QueryRejection> for HttpError {
    fn from(rejection: QueryRejection) -> Self {
        FieldError::new("query", rejection.body_text()).into()
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let mut response =
            (self.status, Json(ErrorJson::new(self.code, self.message))).into_response();
        if unauthorized {
            // RFC 6750: how to authenticate, and that this token was bad.
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"translation-jobs\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn field_errors_are_invalid_argument_naming_the_field() {
        let status: Status = ApiError::from(FieldError::new("target_lang", "is required")).into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "target_lang: is required");
    }

    #[test]
    fn outages_are_unavailable_and_unknown_ids_not_found() {
        let status: Status = ApiError::from(JobError::Database(sqlx::Error::PoolTimedOut)).into();
        assert_eq!(status.code(), Code::Unavailable);
        let status: Status = ApiError::from(JobError::NotFound(Uuid::nil())).into();
        assert_eq!(status.code(), Code::NotFound);
        let status: Status = ApiError::NotReady.into();
        assert_eq!(status.code(), Code::Unavailable);
    }

    /// A database error with a given SQLSTATE, as PostgreSQL would send it.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "sqlstate {}", self.0)
        }
    }

    impl std::error::Error for Sqlstate {}

    impl sqlx::error::DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            "from the server"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn code_of(sqlstate: &'static str) -> Code {
        let status: Status = ApiError::from(JobError::Database(sqlx::Error::Database(Box::new(
            Sqlstate(sqlstate),
        ))))
        .into();
        status.code()
    }

    #[test]
    fn failover_shutdown_and_cancel_are_unavailable_never_internal() {
        // read-only transaction (a standby after failover), admin shutdown,
        // crash shutdown, cannot connect now, statement cancelled or timed
        // out, connection failure, too many connections, I/O error.
        for sqlstate in [
            "25006", "57P01", "57P02", "57P03", "57014", "08006", "53300", "58030",
        ] {
            assert_eq!(code_of(sqlstate), Code::Unavailable, "{sqlstate}");
        }
        assert_eq!(code_of("23505"), Code::AlreadyExists);
        assert_eq!(code_of("40001"), Code::Aborted);
        assert_eq!(code_of("42P01"), Code::Internal);
        let timed_out: Status = ApiError::from(JobError::Database(crate::db::timed_out(
            std::time::Duration::from_secs(1),
        )))
        .into();
        assert_eq!(timed_out.code(), Code::Unavailable);
    }

    #[test]
    fn a_connection_closed_during_its_start_up_exchange_is_unavailable() {
        // What sqlx reports when a proxy accepts and closes at once.
        let status: Status = ApiError::from(JobError::Database(sqlx::Error::Protocol(
            "unexpected response from SSLRequest: 0x00".into(),
        )))
        .into();
        assert_eq!(status.code(), Code::Unavailable);
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let status: Status = ApiError::from(JobError::Database(sqlx::Error::ColumnNotFound(
            "secret detail".into(),
        )))
        .into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }
}
