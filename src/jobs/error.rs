//! What can go wrong in the domain.

use uuid::Uuid;

/// Errors of the job operations. `api::status` maps each to a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No job has this id.
    #[error("job {0} not found")]
    NotFound(Uuid),
    /// The caller reused an idempotency key for a different request.
    #[error("request_id {request_id:?} was already used for job {job_id} with a different request")]
    RequestIdReused { request_id: String, job_id: Uuid },
    /// A job of a batch failed; the whole batch was rolled back.
    #[error("requests[{index}]: {source}")]
    InBatch {
        index: usize,
        #[source]
        source: Box<JobError>,
    },
    /// The job is not in a status the requested change applies to.
    #[error("job {job_id} is {status}; {action} applies only to {allowed} jobs")]
    WrongStatus {
        job_id: Uuid,
        status: &'static str,
        action: &'static str,
        allowed: &'static str,
    },
    /// A row holds a value the service cannot read (e.g. a worker wrote an
    /// unknown status despite the CHECK constraint being dropped).
    #[error("stored job {job_id} is unreadable: {reason}")]
    Corrupt { job_id: Uuid, reason: String },
    /// The request_id was taken when the job was inserted, and the job that
    /// held it was gone when it was looked up (deleted in between): asking
    /// again stores the job.
    #[error("request_id {request_id:?} was taken by a job deleted meanwhile; retry")]
    RequestIdVanished { request_id: String },
    /// PostgreSQL failed or is unreachable.
    #[error("database error")]
    Database(#[from] sqlx::Error),
}
