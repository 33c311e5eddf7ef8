//! etlq: a durable ETL job queue on PostgreSQL. See ARCHITECTURE.md for a map.

pub mod api;
pub mod audit;
pub mod configuration;
pub mod datasets;
pub mod db;
pub mod etl;
pub mod faults;
pub mod fleet;
pub mod lifecycle;
pub mod maintenance;
pub mod metrics;
pub mod pipeline;
pub mod queue;
pub mod retry;
pub mod sink;
pub mod sources;
pub mod startup;
pub mod storage;
pub mod telemetry;
#[cfg(feature = "test-aids")]
pub mod testing;
pub mod worker;
