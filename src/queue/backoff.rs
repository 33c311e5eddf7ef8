//! Job retry backoff: the crate's one schedule (`retry::Backoff`) with the `[retry]`
//! settings; the delay is stored in `jobs.run_at`.

use std::time::Duration;

use crate::configuration::RetrySettings;
pub use crate::retry::Backoff;

/// The backoff between a job's attempts.
pub fn job_backoff(s: &RetrySettings) -> Backoff {
    Backoff::new(
        Duration::from_millis(s.backoff_base_ms),
        Duration::from_millis(s.backoff_max_ms),
    )
    .with_jitter(s.jitter)
}
