//! Background services each worker process runs. Each is safe to run in every process at once.

mod cleaner;
mod rescuer;

pub use cleaner::{Cleaner, CleanerConfig};
pub use rescuer::{Rescuer, RescuerConfig};
