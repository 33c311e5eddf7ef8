//! The ETL pipeline: the `etl` job kind (extract → sync → verify → promote, one file each under
//! `stages/`), what it reads workbooks with (`workbook/`, `coerce`, `connector`, `mapping`,
//! `parse`), the isolated parser process (`isolate` starts `child`), the records artifact,
//! and `submit`, the one way an ETL job is enqueued.

pub mod artifact;
pub mod child;
pub mod coerce;
pub mod connector;
pub mod diff;
pub mod extractor;
pub mod isolate;
pub mod limits;
pub mod mapping;
pub mod parse;
pub mod payload;
pub mod preview;
pub mod rollback;
pub mod stages;
pub mod submit;
pub mod suggest;
pub mod work_dir;
pub mod workbook;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use crate::audit::AuditLog;
use crate::configuration::EtlSettings;
use crate::datasets::DatasetStore;
use crate::db::Pools;
use crate::faults::Faults;
use crate::pipeline::JobKind;
use crate::queue::JobStore;
use crate::sink::DocumentSink;
use crate::storage::BlobStore;

pub use isolate::Isolation;
pub use payload::{BlobKey, BuId, EtlPayload};

pub const ETL_KIND: &str = "etl";
pub const ETL_STAGES: [&str; 4] = ["extract", "sync", "verify", "promote"];

/// What the ETL stages and submissions share: stores, sink, connectors, limits.
pub struct EtlContext {
    pub blobs: BlobStore,
    pub sink: Arc<dyn DocumentSink>,
    pub connectors: BTreeMap<String, connector::Connector>,
    pub settings: EtlSettings,
    pub jobs: JobStore,
    pub datasets: DatasetStore,
    pub audit: AuditLog,
    /// Transactions that span stores (submit, promote).
    pub db: Pools,
    pub isolation: Isolation,
    /// Where extract stages its files (the source, the child's artifacts).
    pub work_dir: PathBuf,
    pub faults: Faults,
    pub limits: limits::StageLimits,
}

impl EtlContext {
    pub fn connector(&self, name: &str) -> Result<&connector::Connector, String> {
        self.connectors.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.connectors.keys().map(String::as_str).collect();
            format!(
                "unknown connector {:?}; configured connectors: {}",
                name.escape_debug().to_string(),
                known.join(", ")
            )
        })
    }

    /// The `etl` job kind, its stages sharing this context.
    pub fn kind(self: &Arc<Self>) -> JobKind {
        JobKind::new(ETL_KIND)
            .stage(stages::Extract(self.clone()))
            .stage(stages::Sync(self.clone()))
            .stage(stages::Verify(self.clone()))
            .stage(stages::Promote(self.clone()))
            .with_summary(summary)
    }
}

/// What `GET /v1/jobs/{id}` shows as `report`: the extract report, once extract is done.
pub fn summary(checkpoint: &Value) -> Option<Value> {
    checkpoint.get("extract")?.get("report").cloned()
}
