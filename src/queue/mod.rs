//! The job store: every SQL statement that reads or moves a job lives under this module.

mod backoff;
mod dead_letters;
mod store;
mod types;

pub use backoff::Backoff;
pub use dead_letters::{DeadLetter, DeadLetterFilter, RetryFrom};
pub use store::{Actor, JobStore, ListFilter, Page};
pub use types::*;

/// Channel notified when jobs become claimable.
pub const JOBS_CHANNEL: &str = "etlq_jobs";
/// Channel notified with a job id when that job is cancelled.
pub const CANCEL_CHANNEL: &str = "etlq_cancel";
/// Channel notified when fleet-wide commands are issued.
pub const CONTROL_CHANNEL: &str = "etlq_control";

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("job {0} not found")]
    NotFound(i64),
    /// The job exists but its state does not allow the operation.
    #[error("{0}")]
    Conflict(String),
    #[error("invalid job: {0}")]
    Invalid(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}
