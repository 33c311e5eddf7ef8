//! Background services every worker process runs, each safe to run in every process at once,
//! each holding only the store operations it needs (River's maintenance services are the
//! model), with a config struct built from settings. `startup.rs` starts them all in one
//! place and awaits them on the way out.

mod job_cleaner;
mod orphans;
mod rescuer;
mod source_runs;
mod stats_rollup;
mod superseded;

pub use job_cleaner::{JobCleaner, JobCleanerConfig};
pub use orphans::{OrphanCleaner, OrphanCleanerConfig, Reclaimed};
pub use rescuer::{Rescuer, RescuerConfig};
pub use source_runs::{SourceRunCleaner, SourceRunCleanerConfig};
pub use stats_rollup::{StatsRollup, StatsRollupConfig};
pub use superseded::{SupersededCleaner, SupersededCleanerConfig};
