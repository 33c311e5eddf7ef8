//! Layered settings: embedded `config/default.toml`, an optional file, then the environment.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::etl::connector::{Connector, ConnectorSpec};

const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub api: ApiSettings,
    pub worker: WorkerSettings,
    pub retry: RetrySettings,
    pub maintenance: MaintenanceSettings,
    pub log: LogSettings,
    pub blob: BlobSettings,
    pub etl: EtlSettings,
    /// ERP layouts by name (SPEC §8).
    #[serde(default)]
    pub connectors: BTreeMap<String, ConnectorSpec>,
}

/// Where sources and artifacts live: a local directory or Azure Blob Storage.
#[derive(Debug, Clone, Deserialize)]
pub struct BlobSettings {
    /// A directory path (`data/blobs`, `file:///srv/etlq`) or `az://container[/prefix]`.
    pub url: String,
    #[serde(default)]
    pub azure: AzureSettings,
}

#[derive(Debug, Clone, Default, Deserialize)]
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

#[derive(Debug, Clone, Deserialize)]
pub struct EtlSettings {
    pub max_upload_bytes: u64,
    pub max_inflated_bytes: u64,
    pub sync_batch: usize,
    /// Superseded dataset versions (sink documents and run artifacts) are deleted after this.
    pub superseded_retention_hours: u64,
    pub superseded_cleanup_interval_ms: u64,
    /// Fault-injection aid for tests: each ETL stage pauses this long after its first write,
    /// so a test can kill the process inside the stage. 0 in production.
    #[serde(default)]
    pub pause_in_stage_ms: u64,
    /// Only this stage pauses (empty: every stage).
    #[serde(default)]
    pub pause_stage: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    pub create_if_missing: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    pub host: String,
    pub port: u16,
    pub max_body_bytes: usize,
    #[serde(default)]
    pub tokens: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub fetch_batch: usize,
    pub fetchers: usize,
    pub poll_interval_ms: u64,
    pub lease_ms: u64,
    pub drain_timeout_ms: u64,
    pub heartbeat_ms: u64,
    pub worker_ttl_ms: u64,
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RetrySettings {
    pub default_max_attempts: i32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub jitter: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MaintenanceSettings {
    pub rescue_interval_ms: u64,
    pub cleanup_interval_ms: u64,
    pub succeeded_retention_hours: u64,
    pub dead_retention_hours: u64,
    pub worker_retention_hours: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: String,
    pub filter: String,
}

impl Settings {
    /// Defaults, then `file` (or `$ETLQ_CONFIG`), then `DATABASE_URL`, then `ETLQ__…` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        let env_file = std::env::var_os("ETLQ_CONFIG").map(std::path::PathBuf::from);
        if let Some(path) = file.map(Path::to_path_buf).or(env_file) {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        if let Ok(url) = std::env::var("DATABASE_URL")
            && !url.is_empty()
        {
            builder = builder.set_override("database.url", url)?;
        }
        builder = builder.add_source(
            config::Environment::with_prefix("ETLQ")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The embedded defaults alone (tests start from these and override fields).
    pub fn defaults() -> Self {
        let cfg = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .build()
            .expect("embedded defaults parse");
        cfg.try_deserialize()
            .expect("embedded defaults deserialize")
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
        if self.retry.default_max_attempts < 1 {
            return bad("retry.default_max_attempts must be at least 1");
        }
        if !(0.0..1.0).contains(&self.retry.jitter) {
            return bad("retry.jitter must be in [0, 1)");
        }
        if self.api.tokens.values().any(|t| t.len() < 16) {
            return bad("api.tokens: every token must be at least 16 characters");
        }
        if !matches!(self.log.format.as_str(), "pretty" | "json") {
            return bad("log.format must be \"pretty\" or \"json\"");
        }
        if self.etl.sync_batch == 0 {
            return bad("etl.sync_batch must be at least 1");
        }
        if self.etl.max_upload_bytes == 0 {
            return bad("etl.max_upload_bytes must be at least 1");
        }
        self.connectors()?;
        Ok(())
    }

    /// Every configured connector, checked.
    pub fn connectors(&self) -> Result<BTreeMap<String, Connector>, ConfigError> {
        self.connectors
            .iter()
            .map(|(name, spec)| {
                Connector::new(name, spec.clone())
                    .map(|c| (name.clone(), c))
                    .map_err(|e| ConfigError::Invalid(e.to_string()))
            })
            .collect()
    }
}

impl WorkerSettings {
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
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
    fn the_sample_connectors_load_from_the_embedded_defaults() {
        let c = Settings::defaults().connectors().unwrap();
        assert!(c.contains_key("sap_fbl3n"), "{:?}", c.keys());
        assert!(c.contains_key("trial_balance"), "{:?}", c.keys());
        assert_eq!(c["sap_fbl3n"].spec.locale.decimal_separator, ',');
    }

    #[test]
    fn short_tokens_are_rejected() {
        let mut s = Settings::defaults();
        s.api.tokens.insert("ci".into(), "short".into());
        assert!(s.validate().is_err());
    }
}
