//! Document sinks: where synced records land, one dataset version (= job id) at a time.
//! PostgreSQL by default (`postgres.rs`), Azure Cosmos DB in production (`cosmos.rs`).

pub mod cosmos;
mod postgres;

use std::sync::atomic::AtomicUsize;

use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};

pub use cosmos::CosmosSink;
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

/// A stored document as a scan returns it (for diffs).
#[derive(Debug, Clone)]
pub struct StoredDoc {
    pub id: String,
    pub hash: i64,
    /// The record as JSON text (the sink's rendering: key order may differ from the artifact).
    pub body: String,
}

/// A version's documents in id order (byte order: ids are hex), pulled page by page.
pub type DocStream<'a> = BoxStream<'a, Result<StoredDoc, SinkError>>;

/// One id-ordered stream out of several (a version spread over partitions): each step takes
/// the smallest head, so memory is one document per input, whatever the version's size.
pub fn merge_by_id(inputs: Vec<DocStream<'_>>) -> DocStream<'_> {
    struct Merge<'a> {
        inputs: Vec<DocStream<'a>>,
        heads: Vec<Option<StoredDoc>>,
        started: bool,
    }
    let state = Merge {
        heads: inputs.iter().map(|_| None).collect(),
        inputs,
        started: false,
    };
    futures_util::stream::try_unfold(state, |mut m| async move {
        if !m.started {
            for (i, input) in m.inputs.iter_mut().enumerate() {
                m.heads[i] = input.try_next().await?;
            }
            m.started = true;
        }
        let Some(i) = (0..m.heads.len())
            .filter(|i| m.heads[*i].is_some())
            .min_by(|a, b| {
                let (x, y) = (m.heads[*a].as_ref(), m.heads[*b].as_ref());
                x.map(|d| d.id.as_bytes()).cmp(&y.map(|d| d.id.as_bytes()))
            })
        else {
            return Ok(None);
        };
        let doc = m.heads[i].take();
        m.heads[i] = m.inputs[i].try_next().await?;
        Ok(doc.map(|d| (d, m)))
    })
    .boxed()
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

/// The promoted state of one dataset, as PostgreSQL (the source of truth) has it, for sinks
/// whose readers look for it there too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedManifest {
    pub bu_id: String,
    pub connector: String,
    pub version: i64,
    /// Promotions of this dataset so far: a newer manifest has a higher generation.
    pub generation: i64,
    pub records: i64,
    pub checksum: String,
    pub promoted_at: chrono::DateTime<chrono::Utc>,
    /// The cache counter after the promotion.
    pub cache_counter: i64,
}

/// What sync sends a sink while it writes a version.
#[derive(Debug)]
pub enum VersionItem {
    Batch(Vec<Document>),
    /// Every document was sent. A stream that ends without it is incomplete: the sink must
    /// not make what it received so far final.
    End,
}

#[async_trait::async_trait]
pub trait DocumentSink: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Writes one whole version from `items`, replacing whatever an earlier attempt left
    /// (a re-run after a crash neither duplicates nor keeps strays). Counts documents in
    /// `written`. Returns the version's summary when the sink could read it back inside the
    /// same write (verify then needs no second read), else `None`.
    ///
    /// The default upserts batch by batch: ids are deterministic, so a re-run replaces.
    async fn write_version(
        &self,
        dataset: &Dataset,
        items: &mut tokio::sync::mpsc::Receiver<VersionItem>,
        written: &AtomicUsize,
    ) -> Result<Option<Summary>, SinkError> {
        while let Some(item) = items.recv().await {
            match item {
                VersionItem::Batch(docs) => self.upsert(dataset, &docs, written).await?,
                VersionItem::End => return Ok(None),
            }
        }
        Err(SinkError::Unavailable(
            "the records stream ended before its last document".into(),
        ))
    }
    /// Inserts or replaces `docs` under `dataset`, counting each document written in
    /// `written` (progress). Idempotent.
    async fn upsert(
        &self,
        dataset: &Dataset,
        docs: &[Document],
        written: &AtomicUsize,
    ) -> Result<(), SinkError>;
    async fn summary(&self, dataset: &Dataset) -> Result<Summary, SinkError>;
    /// The version's documents in id order, streamed (bounded memory at any size).
    fn scan_version(&self, dataset: &Dataset) -> DocStream<'_>;
    /// Removes a whole version; returns how many documents went.
    async fn delete_version(&self, dataset: &Dataset) -> Result<u64, SinkError>;
    /// Whether [`DocumentSink::publish`] does anything (so promote skips reading the manifest
    /// back when it would not).
    fn mirrors_promotions(&self) -> bool {
        false
    }
    /// Makes a committed promotion visible to the sink's own readers. Idempotent, and never
    /// moves them backwards (an older generation or counter leaves the newer in place). The
    /// PostgreSQL sink's readers read PostgreSQL's manifest directly: nothing to do.
    async fn publish(&self, _manifest: &PublishedManifest) -> Result<(), SinkError> {
        Ok(())
    }
}
