//! Document sinks: where synced records land, one dataset version (= job id) at a time.
//! PostgreSQL by default; the Cosmos DB sink (a later issue) implements the same trait.

mod postgres;

pub use postgres::PgSink;

/// One dataset version: the records of one job for one (bu_id, connector).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    pub bu_id: String,
    pub connector: String,
    /// The job id that produced it.
    pub version: i64,
}

/// A record as the sink stores it. `id` is deterministic (bu_id, connector, key columns), so
/// writing the same document twice replaces it.
#[derive(Debug, Clone)]
pub struct Document {
    pub id: String,
    /// The record as JSON text, exactly as in the records artifact.
    pub body: String,
    pub hash: i64,
}

/// What verify compares: the number of documents and the sum of their content hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub count: i64,
    pub checksum: i128,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Connection or service trouble: the stage is retried.
    #[error("sink unavailable: {0}")]
    Unavailable(String),
    /// The data cannot be written as is.
    #[error("sink rejected the data: {0}")]
    Rejected(String),
}

#[async_trait::async_trait]
pub trait DocumentSink: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Inserts or replaces `docs` under `dataset`. Idempotent.
    async fn upsert(&self, dataset: &Dataset, docs: &[Document]) -> Result<(), SinkError>;
    async fn summary(&self, dataset: &Dataset) -> Result<Summary, SinkError>;
    /// Removes a whole version; returns how many documents went.
    async fn delete_version(&self, dataset: &Dataset) -> Result<u64, SinkError>;
}
