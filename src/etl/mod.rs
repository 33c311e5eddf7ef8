//! The ETL pipeline's building blocks (issue 3, in progress): cell coercion for ERP exports.
//! Connectors, the extract/sync/verify/promote stages and uploads build on this.

pub mod coerce;
pub mod connector;
pub mod extract;
pub mod workbook;
