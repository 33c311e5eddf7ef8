//! The job store: the only owner of `jobs`, `job_events` (`job_event_log`) and `dead_letters`. Every SQL
//! statement that reads or moves a job lives under this module.

mod backoff;
mod dead_letters;
mod enqueue;
mod filter;
mod history;
mod listen;
mod push;
mod reads;
mod reclaim;
mod stats;
mod store;
mod types;

pub use backoff::{Backoff, job_backoff};
pub use dead_letters::{DeadLetter, DeadLetterFilter, RetryFrom};
pub use filter::{FilterCount, ListFilter};
pub use history::DroppedPartition;
pub use listen::{Listener, Notification};
pub use push::{Advert, PushedJob, push_channel};
pub use stats::{FailureRow, MinuteBucket, StateKindCount, Stats};
pub use store::{JobStore, Page};
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
    /// Client input PostgreSQL would refuse; the message names the field.
    #[error("invalid job: {0}")]
    Invalid(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl QueueError {
    /// PostgreSQL could not be reached (as opposed to refusing a statement).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, QueueError::Db(e) if crate::db::is_unavailable(e))
    }

    /// SQLSTATE 40001 raised because a row the statement waited for moved to another
    /// partition meanwhile (a job that finished, or a dead job retried, in another
    /// transaction). Nothing was written; running the statement again reads where the row is
    /// now.
    pub(crate) fn moved_meanwhile(&self) -> bool {
        matches!(self, QueueError::Db(sqlx::Error::Database(d)) if d.code().as_deref() == Some("40001"))
    }

    /// A statement PostgreSQL refused (not a connection problem): its SQLSTATE, when the
    /// server gave one, and the server's text. None when PostgreSQL was unreachable.
    pub fn refusal(&self) -> Option<(Option<String>, String)> {
        match self {
            _ if self.is_unavailable() => None,
            QueueError::Db(sqlx::Error::Database(d)) => {
                Some((d.code().map(|c| c.to_string()), d.message().to_string()))
            }
            other => Some((None, other.to_string())),
        }
    }
}

/// Filter text (kind, bu_id, connector…) PostgreSQL would refuse or that no stored value can
/// match: a NUL, or more than 255 bytes. Names the field.
pub(crate) fn check_filter_text(fields: &[(&str, &Option<String>)]) -> Result<(), QueueError> {
    for (name, v) in fields {
        if v.as_deref()
            .is_some_and(|v| v.contains('\0') || v.len() > 255)
        {
            return Err(QueueError::Invalid(format!(
                "{name} must be at most 255 characters without NUL"
            )));
        }
    }
    Ok(())
}

/// PostgreSQL's `timestamptz` spans 4713 BC to 294276 AD; filters are kept to years
/// 1900–9999 so a typo is a clear 422, not a database error.
pub fn check_timestamp(field: &str, t: chrono::DateTime<chrono::Utc>) -> Result<(), QueueError> {
    use chrono::Datelike;
    if (1900..=9999).contains(&t.year()) {
        Ok(())
    } else {
        Err(QueueError::Invalid(format!(
            "{field} must be a timestamp between years 1900 and 9999"
        )))
    }
}

/// Runs `op` again, a few times, while it fails with [`QueueError::moved_meanwhile`].
pub(crate) async fn again_if_moved<T, F, Fut>(mut op: F) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, QueueError>>,
{
    let mut tries = 0;
    loop {
        match op().await {
            Err(e) if e.moved_meanwhile() && tries < 5 => tries += 1,
            r => return r,
        }
    }
}
