//! Dataset versions and their promotion (ADR 0005): `dataset_manifests`, `promotions`,
//! `superseded_versions` and `cache_manifest`, owned by [`DatasetStore`]. This is the seam a
//! second sink (Cosmos DB) mirrors promotions through; PostgreSQL stays the source of truth.

mod store;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use store::{DatasetError, DatasetStore};

/// One (bu_id, connector): the promoted version and how it got there.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Manifest {
    pub bu_id: String,
    pub connector: String,
    pub version: i64,
    pub records: i64,
    pub checksum: String,
    pub generation: i64,
    pub promoted_at: DateTime<Utc>,
}

/// A committed promotion (`promotions` row), keyed by job id.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Promotion {
    pub job_id: i64,
    pub bu_id: String,
    pub connector: String,
    /// `promoted`, or `stale` when a newer version had been promoted already.
    pub outcome: String,
    pub previous_version: Option<i64>,
    pub cache_counter: i64,
    pub promoted_at: DateTime<Utc>,
}

/// A superseded version due for deletion.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SupersededVersion {
    pub version: i64,
    pub bu_id: String,
    pub connector: String,
}

/// A version a promotion or a rollback replaced.
#[derive(Debug, Clone)]
pub struct Superseding<'a> {
    pub version: i64,
    pub bu_id: &'a str,
    pub connector: &'a str,
    /// The version that replaced it.
    pub by: i64,
    pub records: Option<i64>,
    pub checksum: Option<&'a str>,
}

/// A superseded version as a rollback finds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SupersededState {
    pub version: i64,
    pub records: Option<i64>,
    pub checksum: Option<String>,
    /// Within the rollback window, and the cleaner has not started on it.
    pub restorable: bool,
}

/// A committed rollback (`rollbacks` row).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Rollback {
    pub bu_id: String,
    pub connector: String,
    /// The manifest's generation this rollback made.
    pub generation: i64,
    pub from_version: i64,
    pub to_version: i64,
    pub cache_counter: i64,
    pub actor: String,
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// A superseded version still kept, and until when it can be rolled back to.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct KeptVersion {
    pub version: i64,
    pub superseded_by: i64,
    pub superseded_at: DateTime<Utc>,
    pub records: Option<i64>,
    pub restorable_until: DateTime<Utc>,
}

/// `GET /v1/datasets/{bu_id}/{connector}`: what happened to a dataset, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub promotions: Vec<Promotion>,
    pub rollbacks: Vec<Rollback>,
    pub kept: Vec<KeptVersion>,
}

/// `GET /v1/datasets`: each dataset's manifest with its recent promotions.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetView {
    #[serde(flatten)]
    pub manifest: Manifest,
    pub recent: Vec<Promotion>,
}
