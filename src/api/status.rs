//! The one mapping from domain errors to gRPC statuses.
//!
//! Callers get a code they can act on and a message that names what is
//! wrong with their request; internal causes are logged with their chain and
//! never sent to the caller.

use tonic::{Code, Status};

use crate::{
    backlog::BacklogError, jobs::JobError, jobs::fields::FieldError, telemetry::error_chain,
};

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field is missing or malformed.
    #[error(transparent)]
    InvalidArgument(#[from] FieldError),
    /// The service has not reached PostgreSQL yet (still starting up).
    #[error("the database is not reachable yet")]
    NotReady,
    #[error(transparent)]
    Job(#[from] JobError),
    /// Too many jobs wait; the caller should retry later.
    #[error(transparent)]
    Backlog(#[from] BacklogError),
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::InvalidArgument(field) => Status::invalid_argument(field.to_string()),
            ApiError::NotReady => Status::unavailable(
                "the service is starting and cannot reach PostgreSQL yet; retry shortly",
            ),
            ApiError::Job(job) => job_status(job),
            ApiError::Backlog(full @ BacklogError::Full { .. }) => {
                Status::resource_exhausted(full.to_string())
            }
            ApiError::Backlog(BacklogError::Database(database)) => {
                job_status(JobError::Database(database))
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
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => Code::Unavailable,
        sqlx::Error::Database(database) => match database.code().as_deref() {
            // Connection exceptions, shutdown, too many connections.
            Some(code)
                if code.starts_with("08") || code.starts_with("57P") || code.starts_with("53") =>
            {
                Code::Unavailable
            }
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

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let status: Status = ApiError::from(JobError::Database(sqlx::Error::Protocol(
            "secret detail".into(),
        )))
        .into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }
}
