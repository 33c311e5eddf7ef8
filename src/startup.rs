//! Builds the application for each role: pools and stores, the ETL context, the worker, the
//! maintenance services and the HTTP server — all started here, on one task tracker, and
//! stopped along one path:
//!
//! 1. the drain signal (SIGTERM, or the caller's token) drains the worker: running stages
//!    finish or are released (`worker.drain_timeout_ms`);
//! 2. then the maintenance services stop and the HTTP server shuts down, closing what is left
//!    open after `api.shutdown_grace_ms`;
//! 3. `Application::wait` returns when every task has finished.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::server::{self, ServerConfig};
use crate::api::{self, AppState, Surface};
use crate::audit::AuditLog;
use crate::configuration::{ConfigError, Settings, SinkKind};
use crate::datasets::DatasetStore;
use crate::db::Pools;
use crate::etl::connector::Connector;
use crate::etl::{EtlContext, Isolation};
use crate::faults::Faults;
use crate::fleet::{FleetStore, WorkerInfo};
use crate::lifecycle::Lifecycle;
use crate::maintenance::{
    JobCleaner, JobCleanerConfig, OrphanCleaner, OrphanCleanerConfig, Rescuer, RescuerConfig,
    SourceRunCleaner, SourceRunCleanerConfig, StatsRollup, StatsRollupConfig, SupersededCleaner,
    SupersededCleanerConfig,
};
use crate::metrics::Metrics;
use crate::pipeline::{Registry, noop_kind};
use crate::queue::JobStore;
use crate::sink::{DocumentSink, PgSink};
use crate::sources::Source;
use crate::sources::ingest::Ingest;
use crate::sources::{SourceSet, SourceStore, Watcher, WatcherConfig};
use crate::storage::BlobStore;
use crate::worker::{Signals, Worker, WorkerParts};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Config(#[from] crate::configuration::ConfigError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("document sink: {0}")]
    Sink(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// API and workers in one process.
    Serve,
    /// Workers, plus the control-plane endpoints needed to drain them.
    Worker,
    /// API only.
    Api,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Serve => "serve",
            Role::Worker => "worker",
            Role::Api => "api",
        }
    }
}

/// The document sink named in settings.
pub async fn open_sink(
    settings: &Settings,
    pools: &Pools,
) -> Result<Arc<dyn DocumentSink>, StartupError> {
    match settings.sink.kind {
        SinkKind::Postgres => Ok(Arc::new(PgSink::new(pools))),
        SinkKind::Cosmos => Ok(Arc::new(
            crate::sink::CosmosSink::open(&settings.sink.cosmos)
                .await
                .map_err(|e| StartupError::Sink(e.to_string()))?,
        )),
    }
}

/// The ETL context: blob store (creating its directory or container), sink, connectors, the
/// extract child's limits.
pub async fn etl_context(settings: &Settings, pools: &Pools) -> Result<EtlContext, StartupError> {
    let blobs = BlobStore::open(&settings.blob).await?;
    tracing::info!(blobs = %blobs.location, "blob store ready");
    let exe = if settings.etl.parser_exe.is_empty() {
        std::env::current_exe()
            .map_err(|e| StartupError::Other(format!("locating this binary: {e}")))?
    } else {
        std::path::PathBuf::from(&settings.etl.parser_exe)
    };
    let work_dir = settings.etl.work_dir();
    std::fs::create_dir_all(&work_dir).map_err(|e| {
        StartupError::Other(format!(
            "cannot create etl.work_dir {}: {e}",
            work_dir.display()
        ))
    })?;
    Ok(EtlContext {
        blobs,
        sink: open_sink(settings, pools).await?,
        connectors: settings.connectors()?,
        settings: settings.etl.clone(),
        jobs: JobStore::new(pools, settings.retry.default_max_attempts),
        datasets: DatasetStore::new(pools),
        audit: AuditLog,
        db: pools.clone(),
        isolation: Isolation {
            exe,
            memory_limit_mb: settings.etl.extract_memory_limit_mb,
            timeout: Duration::from_millis(settings.etl.extract_timeout_ms),
        },
        work_dir,
        faults: Faults::default(),
        limits: crate::etl::limits::StageLimits::new(&settings.etl),
    })
}

/// The job kinds a build of this binary runs: `noop`, `etl`, and with the `test-aids`
/// feature the `test` kind. The CLI checks `enqueue --kind` against the same list.
/// The parts of the settings that take other modules to check — connectors (`etl`) and
/// sources (`sources`) — so that `configuration` stays a leaf. `etlq` checks them right after
/// loading (every command, `config check` included); `Application::build` uses them.
pub trait CheckedSettings {
    /// Every configured connector, checked.
    fn connectors(&self) -> Result<BTreeMap<String, Connector>, ConfigError>;
    /// Every configured source, checked against the connectors and the blob store.
    fn sources(&self) -> Result<BTreeMap<String, Source>, ConfigError>;
    /// Both, for a command that only needs to know the settings hold together.
    fn check(&self) -> Result<(), ConfigError> {
        self.connectors()?;
        self.sources()?;
        Ok(())
    }
}

impl CheckedSettings for Settings {
    fn connectors(&self) -> Result<BTreeMap<String, Connector>, ConfigError> {
        self.connectors
            .iter()
            .map(|(name, spec)| {
                Connector::new(name, spec.clone())
                    .map(|c| (name.clone(), c))
                    .map_err(|e| ConfigError::Invalid(e.to_string()))
            })
            .collect()
    }

    fn sources(&self) -> Result<BTreeMap<String, Source>, ConfigError> {
        let connectors: Vec<&str> = self.connectors.keys().map(String::as_str).collect();
        crate::sources::check_all(
            &self.sources,
            &connectors,
            &crate::sources::StoreScope::from_blob_url(&self.blob.url),
            !self.api.tokens.is_empty(),
        )
        .map_err(ConfigError::Invalid)
    }
}

pub fn kind_names() -> Vec<&'static str> {
    let mut names = vec![crate::pipeline::NOOP_KIND, crate::etl::ETL_KIND];
    #[cfg(feature = "test-aids")]
    names.push(crate::testing::TEST_KIND);
    names.sort_unstable();
    names
}

pub struct Application {
    pub addr: SocketAddr,
    pub state: AppState,
    /// What the worker does, for tests to wait on.
    pub signals: Signals,
    tasks: TaskTracker,
}

impl Application {
    /// Connects (waiting for PostgreSQL), migrates, binds the listener and starts everything.
    /// `drain` starts a drain; the application finishes once drained and shut down.
    pub async fn build(
        settings: Settings,
        role: Role,
        drain: CancellationToken,
    ) -> Result<Self, StartupError> {
        // Before anything else: a process that must not listen says so at once.
        if let Some(problem) = settings.api.exposure_problem() {
            return Err(StartupError::Other(problem));
        }
        let pools = crate::db::connect(
            &settings.database,
            Duration::from_millis(settings.database.startup_wait_ms),
        )
        .await?;
        pools.migrate().await?;
        Self::build_with_pools(settings, role, pools, drain).await
    }

    pub async fn build_with_pools(
        settings: Settings,
        role: Role,
        pools: Pools,
        drain: CancellationToken,
    ) -> Result<Self, StartupError> {
        #[allow(unused_mut)]
        let mut etl = etl_context(&settings, &pools).await?;
        let mut registry = Registry::new();
        registry.register(noop_kind());
        #[cfg(feature = "test-aids")]
        {
            let runs = crate::testing::TestRuns::new(&pools)
                .await
                .map_err(|e| StartupError::Other(format!("test aids: {e}")))?;
            crate::testing::register(&mut registry, runs.clone());
            etl.faults.pause = Some(std::sync::Arc::new(crate::testing::Pause::new(
                runs,
                settings.testing.clone(),
            )));
            etl.faults.rollback_pause =
                Duration::from_millis(settings.testing.pause_in_rollback_ms);
        }
        let etl = Arc::new(etl);
        registry.register(etl.kind());

        let settings = Arc::new(settings);
        let registry = Arc::new(registry);
        let jobs = JobStore::new(&pools, settings.retry.default_max_attempts);
        #[cfg(feature = "test-aids")]
        let jobs = jobs.pause_in_finish(Duration::from_millis(settings.testing.pause_in_finish_ms));
        let fleet = FleetStore::new(&pools);
        let datasets = DatasetStore::new(&pools);
        let lifecycle = Lifecycle::new(settings.worker.drain_timeout());
        let metrics = Arc::new(Metrics::default());
        let identity = Arc::new(WorkerInfo::for_this_process(&settings, role.as_str()));
        let cleanup = TaskTracker::new();
        let source_set = SourceSet {
            sources: Arc::new(settings.sources()?),
            ingest: Ingest::new(
                SourceStore::new(&pools),
                etl.clone(),
                metrics.clone(),
                settings.worker.version(),
            ),
        };
        let state = AppState {
            settings: settings.clone(),
            jobs: jobs.clone(),
            fleet: fleet.clone(),
            datasets: datasets.clone(),
            registry: registry.clone(),
            lifecycle: lifecycle.clone(),
            metrics: metrics.clone(),
            identity: identity.clone(),
            etl: etl.clone(),
            cleanup: cleanup.clone(),
            sources: source_set.clone(),
        };
        let bind = (settings.api.host.as_str(), settings.api.port);
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|source| StartupError::Bind {
                addr: format!("{}:{}", bind.0, bind.1),
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartupError::Other(e.to_string()))?;
        let surface = if role == Role::Worker {
            Surface::ControlOnly
        } else {
            Surface::Full
        };
        let app = api::router(state.clone(), surface);

        let tasks = TaskTracker::new();
        let signals = Signals::default();
        let server_stop = CancellationToken::new();
        if role == Role::Api {
            let stop = server_stop.clone();
            tasks.spawn(async move {
                drain.cancelled().await;
                stop.cancel();
            });
        } else {
            let maintenance = CancellationToken::new();
            tasks.spawn(
                Rescuer::new(
                    jobs.clone(),
                    identity.actor(),
                    metrics.clone(),
                    RescuerConfig::from_settings(&settings),
                )
                .run(maintenance.clone()),
            );
            tasks.spawn(
                JobCleaner::new(
                    jobs.clone(),
                    fleet.clone(),
                    JobCleanerConfig::from_settings(&settings),
                )
                .run(maintenance.clone()),
            );
            tasks.spawn(
                SupersededCleaner::new(
                    datasets.clone(),
                    etl.sink.clone(),
                    etl.blobs.clone(),
                    metrics.clone(),
                    SupersededCleanerConfig::from_settings(&settings.etl),
                )
                .run(maintenance.clone()),
            );
            tasks.spawn(
                OrphanCleaner::new(
                    jobs.clone(),
                    datasets.clone(),
                    pools.clone(),
                    etl.sink.clone(),
                    etl.blobs.clone(),
                    metrics.clone(),
                    OrphanCleanerConfig::from_settings(&settings.etl),
                )
                .run(maintenance.clone()),
            );
            tasks.spawn(
                StatsRollup::new(
                    jobs.clone(),
                    StatsRollupConfig::from_settings(&settings.maintenance),
                )
                .run(maintenance.clone()),
            );
            tasks.spawn(
                SourceRunCleaner::new(
                    source_set.store().clone(),
                    SourceRunCleanerConfig::from_settings(&settings.maintenance),
                )
                .run(maintenance.clone()),
            );
            #[allow(unused_mut)]
            let mut watcher_config = WatcherConfig::from_settings(&settings.maintenance);
            #[cfg(feature = "test-aids")]
            {
                watcher_config.page_delay =
                    Duration::from_millis(settings.testing.source_page_delay_ms);
                if settings.testing.source_page_size > 0 {
                    watcher_config.page_size = settings.testing.source_page_size;
                }
            }
            tasks.spawn(
                Watcher::new(
                    source_set.sources.values().cloned().collect(),
                    source_set.ingest.clone(),
                    etl.blobs.clone(),
                    lifecycle.clone(),
                    metrics.clone(),
                    identity.id.clone(),
                    watcher_config,
                )
                .run(maintenance.clone()),
            );
            let worker = Worker::new(
                &settings,
                WorkerParts {
                    jobs: jobs.clone(),
                    fleet: fleet.clone(),
                    registry: registry.clone(),
                    lifecycle: lifecycle.clone(),
                    metrics: metrics.clone(),
                    info: (*identity).clone(),
                    signals: signals.clone(),
                },
            );
            let stop = server_stop.clone();
            // The HTTP server outlives the drain (so it can be watched over REST) and stops
            // once the worker has stopped.
            tasks.spawn(async move {
                worker.run(drain).await;
                maintenance.cancel();
                stop.cancel();
            });
        }
        tasks.spawn(server::serve(
            listener,
            app,
            ServerConfig::from_settings(&settings.api),
            server_stop,
            cleanup,
        ));
        tasks.close();
        tracing::info!(%addr, role = role.as_str(), worker_id = %identity.id, "listening");
        Ok(Application {
            addr,
            state,
            signals,
            tasks,
        })
    }

    /// Waits until everything started here has finished.
    pub async fn wait(self) {
        self.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configuration::test_files::{env, file};

    /// Loading as `etlq` does: the settings, then the connectors and sources they name.
    fn load(
        path: Option<&std::path::Path>,
        env: &[(String, String)],
    ) -> Result<Settings, ConfigError> {
        let s = Settings::load_with_env(path, env)?;
        s.check()?;
        Ok(s)
    }

    #[test]
    fn the_sample_connectors_load_from_the_embedded_defaults() {
        let c = Settings::defaults().connectors().unwrap();
        assert!(c.contains_key("sap_fbl3n"), "{:?}", c.keys());
        assert!(c.contains_key("trial_balance"), "{:?}", c.keys());
        assert_eq!(c["sap_fbl3n"].spec.locale.decimal_separator, ',');
    }

    const SOURCES: &str = r#"
[sources.nightly_gl]
kind = "watch"
prefix = "incoming/"
path = "incoming/{bu_id}/{file}"
connector = "sap_fbl3n"
schedule = "*/5 * * * *"
timezone = "Europe/Berlin"
min_age_ms = 10000

[sources.grid]
kind = "eventgrid"
prefix = "drop/"
bu_id = "BU-1000"
connector = "trial_balance"
reconcile = "0 * * * *"
container = "exports"
"#;

    #[test]
    fn sources_are_checked_and_secrets_come_from_the_environment_only() {
        let f = file(SOURCES);
        // An eventgrid source with neither a secret nor API tokens would be an open endpoint.
        let err = load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(
            err.contains("sources.grid") && err.contains("ETLQ__SOURCES__GRID__SECRET"),
            "{err}"
        );
        let s = load(
            Some(f.path()),
            &env(&[("ETLQ__SOURCES__GRID__SECRET", "0123456789abcdef0")]),
        )
        .unwrap();
        let sources = s.sources().unwrap();
        assert_eq!(sources["nightly_gl"].matcher.prefix(), "incoming/");
        assert_eq!(sources["grid"].secret.as_deref(), Some("0123456789abcdef0"));
        assert!(!s.to_masked_toml().contains("0123456789abcdef0"));

        let in_file = file(&format!("{SOURCES}secret = \"0123456789abcdef0\"\n"));
        let err = load(Some(in_file.path()), &[]).unwrap_err().to_string();
        assert!(
            err.contains("sources.grid.secret") && err.contains("environment only"),
            "{err}"
        );

        let typo = file(&SOURCES.replace("min_age_ms", "min_age"));
        let err = load(Some(typo.path()), &[]).unwrap_err().to_string();
        assert!(err.contains("min_age"), "{err}");

        let env_ok = [("ETLQ__SOURCES__GRID__SECRET", "0123456789abcdef0")];
        for (from, to, says) in [
            ("*/5 * * * *", "*/5 * * *", "4 fields"),
            ("Europe/Berlin", "Europe/Atlantis", "IANA"),
            (
                "connector = \"sap_fbl3n\"",
                "connector = \"nope\"",
                "not configured",
            ),
            (
                "prefix = \"incoming/\"",
                "prefix = \"runs/\"",
                "etlq keeps its own",
            ),
            (
                "path = \"incoming/{bu_id}/{file}\"",
                "path = \"incoming/{file}\"",
                "bu_id",
            ),
        ] {
            let bad = file(&SOURCES.replacen(from, to, 1));
            let err = load(Some(bad.path()), &env(&env_ok))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("sources.nightly_gl") && err.contains(says),
                "{to}: {err}"
            );
        }
    }
}
