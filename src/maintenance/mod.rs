//! Background services each worker process runs. Each is safe to run in every process at once.

mod cleaner;
mod rescuer;
mod superseded;

pub use cleaner::{Cleaner, CleanerConfig};
pub use rescuer::{Rescuer, RescuerConfig};
pub use superseded::{SupersededCleaner, SupersededCleanerConfig};
