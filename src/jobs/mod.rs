//! The domain: what a job is, the transaction that creates one, and the
//! queries that read them back. Writes the outbox row of a new job in the
//! same statement; publishing is the `outbox` module's business.

mod create;
mod error;
pub mod fields;
mod get;
mod model;

pub use create::{Created, create_job};
pub use error::JobError;
pub use get::get_job;
pub use model::{Job, JobStatus, NewJob, Priority, StoredStatus, Subtask};
