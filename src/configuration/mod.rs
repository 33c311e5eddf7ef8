//! Settings: the embedded `config/default.toml` (the one place defaults live), overlaid by an
//! optional file and by `ETLQ__SECTION__KEY` environment variables (`load.rs`). Every section
//! refuses unknown keys, so a typo is an error naming where it came from, never a silently
//! ignored setting.

pub mod api;
pub mod connector;
mod load;
pub mod source;
#[cfg(feature = "test-aids")]
pub mod testing;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use api::{ApiSettings, ApiToken, TokenRole};
pub use load::ConfigError;

/// Settings files and environments for unit tests (here and in `startup`).
#[cfg(test)]
pub(crate) mod test_files {
    pub(crate) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub(crate) fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }
}

use connector::ConnectorSpec;

pub(crate) const DEFAULTS: &str = include_str!("../../config/default.toml");
#[cfg(feature = "test-aids")]
pub(crate) const TESTING_DEFAULTS: &str = include_str!("../../config/testing.toml");

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub api: ApiSettings,
    pub worker: WorkerSettings,
    pub retry: RetrySettings,
    pub maintenance: MaintenanceSettings,
    pub history: HistorySettings,
    pub log: LogSettings,
    pub blob: BlobSettings,
    pub etl: EtlSettings,
    pub sink: SinkSettings,
    /// ERP layouts by name (SPEC §8).
    #[serde(default)]
    pub connectors: BTreeMap<String, ConnectorSpec>,
    /// Blob prefixes watched on a schedule and Event Grid webhooks, by name (issue 16).
    #[serde(default)]
    pub sources: BTreeMap<String, source::SourceSpec>,
    /// Test aids (builds with the `test-aids` feature only).
    #[cfg(feature = "test-aids")]
    pub testing: testing::TestingSettings,
    /// Where each setting not left at the embedded defaults came from (dotted path → the
    /// file or variable), for `etlq config check`.
    #[serde(skip)]
    pub origins: BTreeMap<String, String>,
}

/// Where sources and artifacts live: a local directory or Azure Blob Storage.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BlobSettings {
    /// A directory path (`data/blobs`, `file:///srv/etlq`) or `az://container[/prefix]`.
    pub url: String,
    #[serde(default)]
    pub azure: AzureSettings,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AzureSettings {
    #[serde(default)]
    pub account: String,
    /// Shared key. Set it from the environment: ETLQ__BLOB__AZURE__ACCESS_KEY.
    #[serde(default)]
    pub access_key: String,
    /// Blob endpoint, e.g. `http://127.0.0.1:10000/devstoreaccount1` (empty: Azure's default).
    #[serde(default)]
    pub endpoint: String,
    /// Azurite with its well-known development account.
    #[serde(default)]
    pub use_emulator: bool,
}

/// Which document sink synced records land in.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSettings {
    /// `postgres` (the `sink_documents` table) or `cosmos` (Azure Cosmos DB, NoSQL API).
    pub kind: SinkKind,
    #[serde(default)]
    pub cosmos: CosmosSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Postgres,
    Cosmos,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CosmosSettings {
    /// Account endpoint, e.g. `https://myaccount.documents.azure.com:443/`.
    #[serde(default)]
    pub endpoint: String,
    /// Primary key. Only from the environment: ETLQ__SINK__COSMOS__KEY.
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub database: String,
    /// Container of the dataset documents.
    #[serde(default)]
    pub container: String,
    /// Container of the manifest and cache-counter documents readers poll.
    #[serde(default)]
    pub manifest_container: String,
    /// Create the database and containers at startup when missing. Production accounts,
    /// whose infrastructure owns them, set this to false: a missing container is then fatal.
    #[serde(default)]
    pub create_if_missing: bool,
    /// A local emulator with a self-signed certificate (loopback endpoints only).
    #[serde(default)]
    pub emulator: bool,
    /// Upserts in flight at once during sync.
    #[serde(default)]
    pub concurrency: usize,
    /// Deletes in flight at once when a superseded version is removed.
    #[serde(default)]
    pub delete_concurrency: usize,
    /// Logical partitions one dataset version is spread over (ADR 0008).
    #[serde(default)]
    pub partitions_per_version: u32,
    /// How long a transient error is retried inside one operation before the stage fails
    /// (and the job retries with backoff). 429s are waited out separately.
    #[serde(default)]
    pub retry_budget_ms: u64,
    /// Throughput for containers created by etlq (RU/s; 0: the account's default).
    #[serde(default)]
    pub throughput: u32,
    /// How long throttling (429) is waited out inside one operation before the stage fails.
    #[serde(default)]
    pub throttle_budget_ms: u64,
    /// The Azure region the client prefers (routing by proximity to it), e.g. "West Europe".
    #[serde(default)]
    pub preferred_region: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtlSettings {
    pub max_upload_bytes: u64,
    pub max_inflated_bytes: u64,
    pub sync_batch: usize,
    /// Superseded dataset versions (sink documents and run artifacts) are deleted after this.
    pub superseded_retention_hours: u64,
    pub superseded_cleanup_interval_ms: u64,
    /// Dead and cancelled jobs' outputs, abandoned work directories and unreferenced uploads
    /// are reclaimed this long after they stopped being of use.
    pub orphan_grace_ms: u64,
    /// The extract child's address-space limit.
    pub extract_memory_limit_mb: u64,
    /// The extract child's wall-clock limit.
    pub extract_timeout_ms: u64,
    /// Where extract stages the source and the child's output.
    pub work_dir: String,
    /// The binary started as the extract child (empty: this one, re-executed).
    pub parser_exe: String,
    /// Extracts running at once in this process (0: the number of CPU cores).
    pub max_concurrent_extracts: usize,
    /// Syncs running at once in this process (0: the number of CPU cores).
    pub max_concurrent_syncs: usize,
}

impl EtlSettings {
    pub fn work_dir(&self) -> PathBuf {
        PathBuf::from(&self.work_dir)
    }

    /// `max_concurrent_extracts`, with 0 resolved to the machine's cores.
    pub fn extract_slots(&self) -> usize {
        or_cores(self.max_concurrent_extracts)
    }

    /// `max_concurrent_syncs`, with 0 resolved to the machine's cores.
    pub fn sync_slots(&self) -> usize {
        or_cores(self.max_concurrent_syncs)
    }
}

fn or_cores(n: usize) -> usize {
    if n > 0 {
        n
    } else {
        std::thread::available_parallelism().map_or(2, |c| c.get())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    pub create_if_missing: bool,
    /// Longest wait for a connection from the main pool before the operation fails.
    pub acquire_timeout_ms: u64,
    /// The same for the control pool (leases, heartbeats): shorter, so a lost lease is seen.
    pub control_acquire_timeout_ms: u64,
    /// How long `serve`, `worker`, `api` and `migrate` wait for PostgreSQL at startup.
    pub startup_wait_ms: u64,
}

/// Longest `worker.completion_wait_ms`: the wait holds each job's slot, and past this it would
/// be a throttle rather than a gathering of completions.
pub const MAX_COMPLETION_WAIT_MS: u64 = 1000;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub fetch_batch: usize,
    pub fetchers: usize,
    pub poll_interval_ms: u64,
    /// Push pickup (ADR 0020): idle, advertise free slots that single enqueues fill directly.
    pub push: bool,
    pub lease_ms: u64,
    pub drain_timeout_ms: u64,
    pub heartbeat_ms: u64,
    pub worker_ttl_ms: u64,
    pub outage_tolerance_ms: u64,
    /// A small batch of transitions (completions, checkpoints) waits this long for more before
    /// it is written (ADR 0023); 0 writes each batch at once.
    pub completion_wait_ms: u64,
    pub max_consecutive_rescues: i32,
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    pub default_max_attempts: i32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub jitter: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceSettings {
    pub rescue_interval_ms: u64,
    pub rescue_grace_ms: u64,
    pub cleanup_interval_ms: u64,
    pub worker_retention_hours: u64,
    pub stats_rollup_interval_ms: u64,
    /// How often each worker process looks for due source slots.
    pub source_poll_interval_ms: u64,
    /// A source listing's hold on its source, renewed after every page.
    pub source_lease_ms: u64,
    /// Source runs (listings and Event Grid deliveries) are deleted after this many hours;
    /// the ingest ledger is kept.
    pub source_run_retention_hours: u64,
}

/// Finished jobs and their events (ADR 0017).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySettings {
    /// Whole days of finished jobs kept after the day they finished; older days are dropped
    /// as partitions.
    pub retention_days: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable; colours only on a terminal.
    Pretty,
    Json,
}

impl Settings {
    /// Defaults, then `file` (or `$ETLQ_CONFIG`), then `DATABASE_URL`, then `ETLQ__…` variables.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let file = file
            .map(std::path::Path::to_path_buf)
            .or_else(|| std::env::var_os("ETLQ_CONFIG").map(PathBuf::from));
        load::load(file.as_deref(), &env)
    }

    /// Like [`Settings::load`] with an explicit environment (`ETLQ__…` pairs and
    /// `DATABASE_URL`): tests build in-process settings from the same variables they give
    /// child processes.
    pub fn load_with_env(
        file: Option<&std::path::Path>,
        env: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        load::load(file, env)
    }

    /// The embedded defaults alone (tests start from these and override fields).
    pub fn defaults() -> Self {
        load::load(None, &[]).expect("embedded defaults are valid")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.worker.concurrency == 0 {
            return bad("worker.concurrency must be at least 1");
        }
        if self.worker.fetchers == 0 {
            return bad("worker.fetchers must be at least 1");
        }
        if self.worker.fetch_batch == 0 {
            return bad("worker.fetch_batch must be at least 1");
        }
        if self.worker.lease_ms < 300 {
            return bad("worker.lease_ms must be at least 300");
        }
        if self.worker.completion_wait_ms > MAX_COMPLETION_WAIT_MS {
            return bad(&format!(
                "worker.completion_wait_ms must be at most {MAX_COMPLETION_WAIT_MS} (each job keeps its slot while its completion waits)"
            ));
        }
        if self.worker.max_consecutive_rescues < 1 {
            return bad("worker.max_consecutive_rescues must be at least 1");
        }
        if !(1..=3650).contains(&self.history.retention_days) {
            return bad("history.retention_days must be between 1 and 3650");
        }
        if self.retry.default_max_attempts < 1 {
            return bad("retry.default_max_attempts must be at least 1");
        }
        if !(0.0..1.0).contains(&self.retry.jitter) {
            return bad("retry.jitter must be in [0, 1)");
        }
        self.api.validate().map_err(ConfigError::Invalid)?;
        if self.api.max_connections == 0 {
            return bad("api.max_connections must be at least 1");
        }
        if self.etl.sync_batch == 0 {
            return bad("etl.sync_batch must be at least 1");
        }
        if self.etl.max_upload_bytes == 0 {
            return bad("etl.max_upload_bytes must be at least 1");
        }
        if self.etl.extract_memory_limit_mb < 64 {
            return bad("etl.extract_memory_limit_mb must be at least 64");
        }
        if self.etl.extract_timeout_ms == 0 {
            return bad("etl.extract_timeout_ms must be at least 1");
        }
        if self.sink.kind == SinkKind::Cosmos {
            let c = &self.sink.cosmos;
            for (name, v) in [
                ("sink.cosmos.endpoint", &c.endpoint),
                ("sink.cosmos.database", &c.database),
                ("sink.cosmos.container", &c.container),
                ("sink.cosmos.manifest_container", &c.manifest_container),
            ] {
                if v.is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "{name} must be set when sink.kind = \"cosmos\""
                    )));
                }
            }
            if c.key.is_empty() {
                return bad(
                    "sink.cosmos.key must be set (from the environment: ETLQ__SINK__COSMOS__KEY) when sink.kind = \"cosmos\"",
                );
            }
            if c.concurrency == 0 || c.delete_concurrency == 0 {
                return bad("sink.cosmos.concurrency and delete_concurrency must be at least 1");
            }
            if !(1..=1000).contains(&c.partitions_per_version) {
                return bad("sink.cosmos.partitions_per_version must be between 1 and 1000");
            }
        }
        if self.maintenance.source_poll_interval_ms == 0 {
            return bad("maintenance.source_poll_interval_ms must be at least 1");
        }
        if self.maintenance.source_lease_ms < 1000 {
            return bad("maintenance.source_lease_ms must be at least 1000");
        }
        Ok(())
    }

    /// The effective settings as TOML, secrets masked (`etlq config check`).
    pub fn to_masked_toml(&self) -> String {
        let mut s = self.clone();
        let mask = |v: &mut String| {
            if !v.is_empty() {
                *v = "********".into();
            }
        };
        for t in s.api.tokens.values_mut() {
            t.mask();
        }
        mask(&mut s.blob.azure.access_key);
        for src in s.sources.values_mut() {
            mask(&mut src.secret);
        }
        mask(&mut s.sink.cosmos.key);
        if let Ok(mut u) = url::Url::parse(&s.database.url)
            && u.password().is_some()
        {
            let _ = u.set_password(Some("********"));
            s.database.url = u.to_string();
        }
        let text = toml::to_string_pretty(&s).unwrap_or_else(|e| format!("# cannot render: {e}"));
        annotate_origins(&text, &self.origins)
    }
}

/// Appends `# from …` to each line of `text` (TOML as `to_string_pretty` writes it) whose
/// setting — or whose table, for inline tables and arrays — was set outside the defaults.
fn annotate_origins(text: &str, origins: &BTreeMap<String, String>) -> String {
    let mut out = String::from(
        "# Effective settings. A line without a `# from` comment has the embedded default.\n",
    );
    let mut section = String::new();
    for line in text.lines() {
        out.push_str(line);
        let t = line.trim();
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            section = name.trim_matches(['[', ']']).replace('"', "");
        } else if let Some((key, _)) = t.split_once(" = ") {
            let key = key.trim().trim_matches('"');
            let path = if section.is_empty() {
                key.to_string()
            } else {
                format!("{section}.{key}")
            };
            let prefix = format!("{path}.");
            let from = origins.get(&path).or_else(|| {
                origins
                    .iter()
                    .find(|(k, _)| k.starts_with(&prefix))
                    .map(|(_, v)| v)
            });
            if let Some(from) = from {
                out.push_str("  # from ");
                out.push_str(from);
            }
        }
        out.push('\n');
    }
    out
}

impl WorkerSettings {
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
    pub fn worker_ttl(&self) -> Duration {
        Duration::from_millis(self.worker_ttl_ms)
    }
    pub fn version(&self) -> String {
        if self.version.is_empty() {
            env!("CARGO_PKG_VERSION").to_string()
        } else {
            self.version.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_valid() {
        Settings::defaults().validate().unwrap();
    }

    #[test]
    fn short_tokens_are_rejected() {
        let mut s = Settings::defaults();
        s.api.tokens.insert("ci".into(), "short".into());
        assert!(s.validate().is_err());
    }

    #[test]
    fn secrets_are_masked_in_the_effective_settings() {
        let mut s = Settings::defaults();
        s.api
            .tokens
            .insert("deployer".into(), "a-very-secret-token-123".into());
        s.database.url = "postgres://etlq:hunter2@db.internal:5432/etlq".into();
        let shown = s.to_masked_toml();
        assert!(!shown.contains("a-very-secret-token-123"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("deployer = \"********\""), "{shown}");
    }
}
