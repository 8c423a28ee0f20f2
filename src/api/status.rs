//! The one mapping from domain errors to gRPC statuses.
//!
//! Callers get a code they can act on and a message that names what is
//! wrong with their request; internal causes are logged with their chain and
//! never sent to the caller.

use tonic::{Code, Status};

use super::{auth::AuthError, limits::LimitError};
use crate::{
    backlog::BacklogError,
    jobs::{JobError, RedriveError, fields::FieldError},
    queue::QueueError,
    telemetry::error_chain,
};

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
