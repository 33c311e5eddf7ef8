//! The Azure Cosmos DB (NoSQL API) sink, through the official SDK (`azure_data_cosmos`, a
//! beta pinned exactly; ADR 0013). Layout and costs: ADR 0008; readers: docs/cosmos.md.
//!
//! - Dataset documents go to `sink.cosmos.container`, partition key `/pk` =
//!   `{bu_id}|{connector}|{version}|{bucket}`, the bucket taken from the document id, so one
//!   version's writes spread over `partitions_per_version` logical partitions. The id stays
//!   the deterministic document id (bu_id, connector, key columns): re-running sync replaces.
//! - Each document carries its content hash as a string (JSON numbers are doubles to Cosmos
//!   DB: a 64-bit hash would not survive), which verify sums.
//! - Promotions are mirrored into `sink.cosmos.manifest_container` (partition `manifests`):
//!   one manifest per (bu_id, connector) and the cache counter, each moved forward only
//!   (compare-and-set on its etag; an older generation or counter never overwrites a newer).
//! - Writes run with bounded concurrency; 429s are waited out (the SDK honours
//!   `x-ms-retry-after-ms`, and this module keeps waiting past its retry budget); transient
//!   errors are retried with backoff for `sink.cosmos.retry_budget_ms`, then reported as
//!   unavailable (the stage retries); 401/403, a missing container that may not be created,
//!   and bad documents are fatal.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::models::{ContainerProperties, ThroughputProperties};
use azure_data_cosmos::options::{
    BinaryEncodingOptions, ConnectionPoolOptions, CreateContainerOptions, FeedOptions,
    ItemWriteOptions, MaxItemCountHint, Precondition, QueryOptions, ServerCertificateValidation,
};
use azure_data_cosmos::{
    AccountEndpoint, AccountReference, CosmosClient, CosmosError, FeedScope, Query, RoutingStrategy,
};
use futures_util::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::OnceCell;

use super::{
    Dataset, DocStream, Document, DocumentSink, PublishedManifest, SinkError, StoredDoc, Summary,
    merge_by_id,
};
use crate::configuration::CosmosSettings;
use crate::retry::Backoff;

/// Between retries of one Cosmos DB call (throttled or transient), within the budgets.
const CALL_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
/// The logical partition of the manifest and cache-counter documents.
pub const MANIFEST_PARTITION: &str = "manifests";
pub const COUNTER_ID: &str = "cache-counter";

struct Connected {
    data: ContainerClient,
    manifests: ContainerClient,
}

pub struct CosmosSink {
    settings: CosmosSettings,
    connected: OnceCell<Connected>,
}

/// What a failed call means for the caller.
enum Failure {
    Throttled,
    Transient,
    Fatal(String),
    NotFound,
    Conflict,
    PreconditionFailed,
}

fn classify(e: &CosmosError, settings: &CosmosSettings) -> Failure {
    let status = e.status();
    let code = status.status_code();
    let n = u16::from(code);
    let detail = e.to_string().lines().next().unwrap_or_default().to_string();
    match n {
        429 => Failure::Throttled,
        401 | 403 if !status.is_write_forbidden() => Failure::Fatal(format!(
            "Cosmos DB refused the credentials (HTTP {n}): check sink.cosmos.key (ETLQ__SINK__COSMOS__KEY) and that the key may write to {}",
            settings.endpoint
        )),
        404 => Failure::NotFound,
        409 => Failure::Conflict,
        412 => Failure::PreconditionFailed,
        400 | 413 => Failure::Fatal(format!("Cosmos DB refused the document: {detail}")),
        _ => Failure::Transient,
    }
}

/// The bucket of a document: a spread of ids over `buckets` logical partitions.
pub fn bucket(doc_id: &str, buckets: u32) -> u32 {
    let head = u32::from_str_radix(doc_id.get(..8).unwrap_or("0"), 16).unwrap_or(0);
    head % buckets.max(1)
}

/// The partition key of bucket `b` of a dataset version.
pub fn partition_key(ds: &Dataset, b: u32) -> String {
    format!("{}|{}|{}|{b}", ds.bu_id, ds.connector, ds.version)
}

/// `select … WHERE` the documents of one dataset version.
fn version_query(select: &str, ds: &Dataset) -> Result<Query, SinkError> {
    Query::from(format!(
        "{select} WHERE c.dataset = @dataset AND c.version = @version"
    ))
    .with_parameter("@dataset", format!("{}|{}", ds.bu_id, ds.connector))
    .and_then(|q| q.with_parameter("@version", ds.version))
    .map_err(|e| SinkError::Rejected(e.to_string()))
}

/// A manifest document's id (one per dataset).
pub fn manifest_id(bu_id: &str, connector: &str) -> String {
    format!("{bu_id}|{connector}")
}

#[derive(Deserialize)]
struct HashRow {
    hash: String,
}

#[derive(Deserialize)]
struct ScanRow {
    id: String,
    hash: String,
    data: Value,
}

#[derive(Deserialize)]
struct IdRow {
    id: String,
    pk: String,
}

impl CosmosSink {
    /// Connects and, when allowed, creates the database and containers. An unreachable
    /// account is not an error here: the sink connects on first use, and stages retry.
    pub async fn open(settings: &CosmosSettings) -> Result<Self, SinkError> {
        let sink = CosmosSink {
            settings: settings.clone(),
            connected: OnceCell::new(),
        };
        match sink.connected().await {
            Ok(_) => {
                tracing::info!(endpoint = %settings.endpoint, database = %settings.database, "Cosmos DB sink ready")
            }
            Err(SinkError::Unavailable(e)) => {
                tracing::warn!(error = %e, "Cosmos DB unreachable at startup; the sink connects on first use")
            }
            Err(e) => return Err(e),
        }
        Ok(sink)
    }

    async fn connect(&self) -> Result<Connected, SinkError> {
        let s = &self.settings;
        let endpoint: AccountEndpoint = s.endpoint.parse().map_err(|e| {
            SinkError::Rejected(format!("sink.cosmos.endpoint {:?}: {e}", s.endpoint))
        })?;
        let account = AccountReference::with_authentication_key(endpoint, s.key.clone());
        let mut builder = CosmosClient::builder();
        if s.emulator {
            // The local emulator: a self-signed certificate (accepted for loopback hosts only),
            // HTTP/1.1, and no binary encoding (ADR 0013).
            let pool = ConnectionPoolOptions::builder()
                .with_is_http2_allowed(false)
                .with_server_certificate_validation(
                    ServerCertificateValidation::RequiredUnlessEmulator,
                )
                .build()
                .map_err(|e| SinkError::Rejected(format!("Cosmos DB connection options: {e}")))?;
            let runtime = azure_data_cosmos::CosmosRuntime::builder()
                .with_connection_pool(pool)
                .build()
                .await
                .map_err(|e| SinkError::Unavailable(format!("Cosmos DB runtime: {e}")))?;
            builder = builder
                .with_runtime(runtime)
                .with_binary_encoding_options(BinaryEncodingOptions::new().with_enabled(false));
        }
        let client = builder
            .build(
                account,
                RoutingStrategy::ProximityTo(s.preferred_region.clone().into()),
            )
            .await
            .map_err(|e| self.failure("connecting", &e))?;
        if s.create_if_missing {
            match client.create_database(&s.database, None).await {
                Ok(_) => tracing::info!(database = %s.database, "created Cosmos DB database"),
                Err(e) if matches!(classify(&e, s), Failure::Conflict) => {}
                Err(e) => return Err(self.failure("creating the database", &e)),
            }
            let db = client.database_client(s.database.clone());
            for name in [&s.container, &s.manifest_container] {
                let props = ContainerProperties::new(name.clone(), "/pk".into());
                let options = (s.throughput > 0).then(|| {
                    CreateContainerOptions::default()
                        .with_throughput(ThroughputProperties::manual(u64::from(s.throughput)))
                });
                match db.create_container(props, options).await {
                    Ok(_) => tracing::info!(container = %name, "created Cosmos DB container"),
                    Err(e) if matches!(classify(&e, s), Failure::Conflict) => {}
                    Err(e) => return Err(self.failure("creating a container", &e)),
                }
            }
        }
        let db = client.database_client(s.database.clone());
        Ok(Connected {
            data: self.open_container(&db, &s.container).await?,
            manifests: self.open_container(&db, &s.manifest_container).await?,
        })
    }

    async fn open_container(
        &self,
        db: &azure_data_cosmos::clients::DatabaseClient,
        name: &str,
    ) -> Result<ContainerClient, SinkError> {
        db.container_client(name.to_string(), None)
            .await
            .map_err(|e| match classify(&e, &self.settings) {
                Failure::NotFound => SinkError::Rejected(format!(
                    "Cosmos DB container {name:?} does not exist in database {:?}, and sink.cosmos.create_if_missing is false",
                    self.settings.database
                )),
                _ => self.failure("opening a container", &e),
            })
    }

    /// Writes one document (the record embedded verbatim: the bytes its hash was taken of).
    async fn upsert_one(
        &self,
        c: &ContainerClient,
        ds: &Dataset,
        d: &Document,
        written: &AtomicUsize,
    ) -> Result<(), SinkError> {
        let pk = partition_key(ds, bucket(&d.id, self.buckets()));
        let text = format!(
            r#"{{"id":{},"pk":{},"dataset":{},"bu_id":{},"connector":{},"version":{},"hash":"{}","data":{}}}"#,
            Value::from(d.id.as_str()),
            Value::from(pk.as_str()),
            Value::from(format!("{}|{}", ds.bu_id, ds.connector)),
            Value::from(ds.bu_id.as_str()),
            Value::from(ds.connector.as_str()),
            ds.version,
            d.hash,
            d.body
        );
        let raw = RawValue::from_string(text)
            .map_err(|e| SinkError::Rejected(format!("document {}: {e}", d.id)))?;
        self.retrying("upserting a document", || {
            c.upsert_item(pk.clone(), &d.id, &raw, None)
        })
        .await?;
        written.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn connected(&self) -> Result<&Connected, SinkError> {
        self.connected.get_or_try_init(|| self.connect()).await
    }

    fn failure(&self, what: &str, e: &CosmosError) -> SinkError {
        match classify(e, &self.settings) {
            Failure::Fatal(m) => SinkError::Rejected(m),
            Failure::NotFound => SinkError::Rejected(format!(
                "Cosmos DB {what}: not found (has container {:?} or database {:?} been deleted?)",
                self.settings.container, self.settings.database
            )),
            _ => SinkError::Unavailable(format!(
                "Cosmos DB {what}: {}",
                e.to_string().lines().next().unwrap_or_default()
            )),
        }
    }

    /// Runs `op` until it succeeds, waiting out throttling and retrying transient errors
    /// within their budgets. `Ok(None)` for outcomes the caller handles itself (not found,
    /// conflict, precondition failed) when `tolerate` says so.
    async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, SinkError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = azure_data_cosmos::Result<T>>,
    {
        let started = tokio::time::Instant::now();
        let mut pauses = CALL_BACKOFF.delays();
        loop {
            let e = match op().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let budget = match classify(&e, &self.settings) {
                Failure::Throttled => Duration::from_millis(self.settings.throttle_budget_ms),
                Failure::Transient => Duration::from_millis(self.settings.retry_budget_ms),
                _ => return Err(self.failure(what, &e)),
            };
            let pause = pauses.next().expect("endless");
            if started.elapsed() + pause > budget {
                return Err(self.failure(what, &e));
            }
            tokio::time::sleep(pause).await;
        }
    }

    async fn query_all<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        container: &ContainerClient,
        query: Query,
    ) -> Result<Vec<T>, SinkError> {
        self.retrying("query", || {
            let query = query.clone();
            // Pages as large as the service allows (real accounts cap them at 4 MB).
            let options = QueryOptions::default().with_feed_options(
                FeedOptions::default().with_max_item_count(MaxItemCountHint::ServerDecides),
            );
            async move {
                let items = container
                    .query_items::<T>(query, FeedScope::full_container(), Some(options))
                    .await?;
                items.try_collect::<Vec<T>>().await
            }
        })
        .await
    }

    async fn delete_one(&self, c: &ContainerClient, r: &IdRow) -> Result<(), SinkError> {
        match c.delete_item(r.pk.clone(), &r.id, None).await {
            Ok(_) => Ok(()),
            // Already gone (a previous, interrupted pass).
            Err(e) if matches!(classify(&e, &self.settings), Failure::NotFound) => Ok(()),
            Err(_) => self
                .retrying("deleting a document", || {
                    c.delete_item(r.pk.clone(), &r.id, None)
                })
                .await
                .map(|_| ()),
        }
    }

    fn buckets(&self) -> u32 {
        self.settings.partitions_per_version.max(1)
    }

    /// Forward-only write of a manifest-partition document: created if missing, replaced
    /// (on its etag) only when `newer(current)` says ours is newer.
    async fn move_forward(
        &self,
        id: &str,
        doc: &Value,
        newer: impl Fn(&Value) -> bool,
    ) -> Result<bool, SinkError> {
        let c = &self.connected().await?.manifests;
        let mut pauses = CALL_BACKOFF.delays();
        for _ in 0..20 {
            let q = Query::from("SELECT * FROM c WHERE c.pk = @pk AND c.id = @id")
                .with_parameter("@pk", MANIFEST_PARTITION)
                .and_then(|q| q.with_parameter("@id", id))
                .map_err(|e| SinkError::Rejected(e.to_string()))?;
            let current: Vec<Value> = self.query_all(c, q).await?;
            let outcome = match current.first() {
                None => c.create_item(MANIFEST_PARTITION, id, doc, None).await,
                Some(cur) if !newer(cur) => return Ok(false),
                Some(cur) => {
                    let etag = cur["_etag"].as_str().unwrap_or_default().to_string();
                    let opts = ItemWriteOptions::default()
                        .with_precondition(Precondition::IfMatch(etag.into()));
                    c.replace_item(MANIFEST_PARTITION, id, doc, Some(opts))
                        .await
                }
            };
            match outcome {
                Ok(_) => return Ok(true),
                Err(e) => match classify(&e, &self.settings) {
                    // Someone moved it meanwhile: read again and decide again.
                    Failure::Conflict | Failure::PreconditionFailed => continue,
                    Failure::Throttled | Failure::Transient => {
                        tokio::time::sleep(pauses.next().expect("endless")).await;
                        continue;
                    }
                    _ => return Err(self.failure("writing a manifest", &e)),
                },
            }
        }
        Err(SinkError::Unavailable(format!(
            "Cosmos DB: {id} kept changing under a compare-and-set; retry"
        )))
    }
}

#[async_trait::async_trait]
impl DocumentSink for CosmosSink {
    fn name(&self) -> &'static str {
        "cosmos"
    }

    async fn upsert(
        &self,
        ds: &Dataset,
        docs: &[Document],
        written: &AtomicUsize,
    ) -> Result<(), SinkError> {
        let c = &self.connected().await?.data;
        // Collected first: a lazy iterator of borrowing futures inside an async-trait method
        // trips the compiler's higher-ranked lifetime check.
        let writes: Vec<_> = docs
            .iter()
            .map(|d| self.upsert_one(c, ds, d, written))
            .collect();
        let results: Vec<Result<(), SinkError>> = futures_util::stream::iter(writes)
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn summary(&self, ds: &Dataset) -> Result<Summary, SinkError> {
        let c = &self.connected().await?.data;
        // One query over the version (it fans out to the physical partitions), projecting
        // only the hashes.
        let q = version_query("SELECT c.hash FROM c", ds)?;
        let mut total = Summary::default();
        for r in self.query_all::<HashRow>(c, q).await? {
            let h: i64 = r
                .hash
                .parse()
                .map_err(|e| SinkError::Rejected(format!("a document's hash {:?}: {e}", r.hash)))?;
            total.count += 1;
            total.checksum += i128::from(h);
        }
        Ok(total)
    }

    /// One `ORDER BY c.id` query per bucket (a single-partition query orders on the
    /// service), merged by id.
    fn scan_version(&self, ds: &Dataset) -> DocStream<'_> {
        let ds = ds.clone();
        futures_util::stream::once(async move {
            let c = &self.connected().await?.data;
            let mut parts: Vec<DocStream<'_>> = Vec::new();
            for b in 0..self.buckets() {
                let pk = partition_key(&ds, b);
                let q = Query::from(
                    "SELECT c.id, c.hash, c.data FROM c WHERE c.pk = @pk ORDER BY c.id",
                )
                .with_parameter("@pk", pk.as_str())
                .map_err(|e| SinkError::Rejected(e.to_string()))?;
                let scope = FeedScope::partition(pk.clone());
                let items = self
                    .retrying("scanning a version", || {
                        c.query_items::<ScanRow>(q.clone(), scope.clone(), None)
                    })
                    .await?;
                let failure = |e: CosmosError| self.failure("scanning a version", &e);
                parts.push(
                    items
                        .map(move |r| {
                            let r = r.map_err(failure)?;
                            let hash = r.hash.parse().map_err(|e| {
                                SinkError::Rejected(format!("a document's hash {:?}: {e}", r.hash))
                            })?;
                            Ok(StoredDoc {
                                id: r.id,
                                hash,
                                body: r.data.to_string(),
                            })
                        })
                        .boxed(),
                );
            }
            Ok::<_, SinkError>(merge_by_id(parts))
        })
        .try_flatten()
        .boxed()
    }

    async fn delete_version(&self, ds: &Dataset) -> Result<u64, SinkError> {
        let c = &self.connected().await?.data;
        let ids: Vec<IdRow> = self
            .query_all(c, version_query("SELECT c.id, c.pk FROM c", ds)?)
            .await?;
        // Bounded: deletes cost request units like writes; 429s are waited out.
        let deletes: Vec<_> = ids.iter().map(|r| self.delete_one(c, r)).collect();
        let results: Vec<Result<(), SinkError>> = futures_util::stream::iter(deletes)
            .buffer_unordered(self.settings.delete_concurrency.max(1))
            .collect()
            .await;
        let mut deleted = 0u64;
        for r in results {
            r?;
            deleted += 1;
        }
        Ok(deleted)
    }

    fn mirrors_promotions(&self) -> bool {
        true
    }

    async fn publish(&self, m: &PublishedManifest) -> Result<(), SinkError> {
        let id = manifest_id(&m.bu_id, &m.connector);
        let ds = Dataset {
            bu_id: m.bu_id.clone(),
            connector: m.connector.clone(),
            version: m.version,
        };
        let partition_keys: Vec<String> =
            (0..self.buckets()).map(|b| partition_key(&ds, b)).collect();
        let doc = serde_json::json!({
            "id": id,
            "pk": MANIFEST_PARTITION,
            "type": "dataset-manifest",
            "bu_id": m.bu_id,
            "connector": m.connector,
            "dataset": format!("{}|{}", m.bu_id, m.connector),
            "version": m.version,
            "generation": m.generation,
            "records": m.records,
            "checksum": m.checksum,
            "promoted_at": m.promoted_at,
            "container": self.settings.container,
            "partition_keys": partition_keys,
        });
        let generation = m.generation;
        self.move_forward(&id, &doc, |cur| {
            cur["generation"].as_i64().is_none_or(|g| g < generation)
        })
        .await?;
        let counter = serde_json::json!({
            "id": COUNTER_ID,
            "pk": MANIFEST_PARTITION,
            "type": "cache-counter",
            "counter": m.cache_counter,
            "updated_at": chrono::Utc::now(),
        });
        let value = m.cache_counter;
        self.move_forward(COUNTER_ID, &counter, |cur| {
            cur["counter"].as_i64().is_none_or(|c| c < value)
        })
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_spread_over_the_version_buckets_deterministically() {
        let ds = Dataset {
            bu_id: "BU-1".into(),
            connector: "gl".into(),
            version: 42,
        };
        assert_eq!(bucket("0000000a00000000", 32), 10);
        assert_eq!(bucket("ffffffff", 32), 31);
        assert_eq!(partition_key(&ds, 7), "BU-1|gl|42|7");
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000u32 {
            let id = crate::etl::artifact::doc_id(
                "BU-1",
                "gl",
                &[&crate::etl::coerce::Value::Integer(i64::from(i))],
            );
            seen.insert(bucket(&id, 32));
        }
        assert_eq!(seen.len(), 32, "every bucket gets documents");
    }
}
