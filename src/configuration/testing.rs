//! `[testing]`: the test aids' settings (builds with the `test-aids` feature only).

use serde::{Deserialize, Serialize};

/// `[testing]` settings (accepted only by builds with the feature).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestingSettings {
    /// Each stage (or only `pause_stage`) pauses this long after its first write.
    pub pause_in_stage_ms: u64,
    /// Only this stage pauses (empty: every stage).
    pub pause_stage: String,
    /// Source listings pause this long after each page, so a test can kill a process
    /// mid-listing.
    pub source_page_delay_ms: u64,
    /// Blobs per source listing page (0: the release size).
    pub source_page_size: usize,
    /// A dataset rollback waits this long before it commits, so a test can kill it midway.
    pub pause_in_rollback_ms: u64,
    /// A statement that finishes jobs (moving them out of `jobs_live`) waits this long before
    /// it commits, so a test can kill the process in the middle of the move.
    pub pause_in_finish_ms: u64,
    /// The worker ignores the notifications of jobs pushed to it, as if its LISTEN connection
    /// had lost them: it finds them when it withdraws its advertisement.
    pub drop_push_notices: bool,
}
