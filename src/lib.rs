//! etlq: a durable ETL job queue on PostgreSQL. See ARCHITECTURE.md for a map.

pub mod api;
pub mod configuration;
pub mod db;
pub mod etl;
pub mod fleet;
pub mod lifecycle;
pub mod maintenance;
pub mod metrics;
pub mod pipeline;
pub mod queue;
pub mod sink;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod worker;
