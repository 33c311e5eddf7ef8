//! The ETL pipeline: cell coercion for ERP exports, connectors, workbook reading, extraction,
//! the records artifact, and the `etl` job kind (extract → sync → verify → promote).

pub mod artifact;
pub mod coerce;
pub mod connector;
pub mod extract;
pub mod job;
pub mod workbook;

pub use job::{ETL_KIND, ETL_STAGES, Etl, EtlPayload, validate_blob_key, validate_bu_id};
