//! Builds the application for each role: the pool, migrations, the worker and the HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, Surface};
use crate::configuration::Settings;
use crate::etl::Etl;
use crate::fleet::WorkerInfo;
use crate::lifecycle::Lifecycle;
use crate::maintenance::{SupersededCleaner, SupersededCleanerConfig};
use crate::metrics::Metrics;
use crate::pipeline::{Registry, register_builtin};
use crate::queue::JobStore;
use crate::sink::PgSink;
use crate::storage::BlobStore;
use crate::worker::Worker;

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
    fn as_str(self) -> &'static str {
        match self {
            Role::Serve => "serve",
            Role::Worker => "worker",
            Role::Api => "api",
        }
    }
}

/// The job kinds this build knows.
pub fn default_registry() -> Registry {
    let mut r = Registry::new();
    register_builtin(&mut r);
    r
}

/// The ETL context: blob store (creating its directory or container), sink and connectors.
pub async fn build_etl(settings: &Settings, pool: PgPool) -> Result<Etl, anyhow::Error> {
    let blobs = BlobStore::open(&settings.blob).await?;
    tracing::info!(blobs = %blobs.location, "blob store ready");
    Ok(Etl {
        blobs,
        sink: Arc::new(PgSink::new(pool.clone())),
        connectors: settings.connectors()?,
        settings: settings.etl.clone(),
        pool,
    })
}

pub struct Application {
    pub addr: SocketAddr,
    pub state: AppState,
    server: JoinHandle<()>,
    worker: Option<JoinHandle<()>>,
}

impl Application {
    /// Connects (waiting for PostgreSQL), migrates, binds the listener and starts everything.
    /// `shutdown` starts a drain; the returned application finishes once drained.
    pub async fn build(
        settings: Settings,
        role: Role,
        registry: Registry,
        shutdown: CancellationToken,
    ) -> Result<Self, anyhow::Error> {
        let pool = crate::db::connect(&settings.database, Duration::from_secs(30)).await?;
        crate::db::migrate(&pool).await?;
        Self::build_with_pool(settings, role, registry, pool, shutdown).await
    }

    pub async fn build_with_pool(
        settings: Settings,
        role: Role,
        registry: Registry,
        pool: PgPool,
        shutdown: CancellationToken,
    ) -> Result<Self, anyhow::Error> {
        let etl = Arc::new(build_etl(&settings, pool.clone()).await?);
        let mut registry = registry;
        if registry.get(crate::etl::ETL_KIND).is_none() {
            registry.register(etl.kind());
        }
        let settings = Arc::new(settings);
        let registry = Arc::new(registry);
        let lifecycle = Lifecycle::new(settings.worker.drain_timeout());
        let metrics = Arc::new(Metrics::default());
        let identity = Arc::new(WorkerInfo::for_this_process(&settings, role.as_str()));
        let state = AppState {
            settings: settings.clone(),
            pool: pool.clone(),
            store: JobStore::new(pool.clone(), settings.retry.default_max_attempts),
            registry: registry.clone(),
            lifecycle: lifecycle.clone(),
            metrics: metrics.clone(),
            identity: identity.clone(),
            etl: etl.clone(),
        };
        let listener = TcpListener::bind((settings.api.host.as_str(), settings.api.port)).await?;
        let addr = listener.local_addr()?;
        let surface = if role == Role::Worker {
            Surface::ControlOnly
        } else {
            Surface::Full
        };
        let app = api::router(state.clone(), surface);

        let worker = (role != Role::Api).then(|| {
            let w = Worker::new(
                &settings,
                pool.clone(),
                registry.clone(),
                lifecycle.clone(),
                metrics.clone(),
                (*identity).clone(),
            );
            let cleaner = SupersededCleaner::new(
                etl.clone(),
                SupersededCleanerConfig::from_settings(&settings.etl),
            );
            tokio::spawn(cleaner.run(shutdown.clone()));
            tokio::spawn(w.run(shutdown.clone()))
        });
        // The HTTP server outlives the drain (so it can be watched over REST) and stops
        // once the worker has stopped.
        let server_stop = CancellationToken::new();
        let server = {
            let stop = server_stop.clone();
            tokio::spawn(async move {
                let r = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            })
        };
        let worker = match worker {
            Some(handle) => {
                let stop = server_stop.clone();
                Some(tokio::spawn(async move {
                    let _ = handle.await;
                    stop.cancel();
                }))
            }
            None => {
                let stop = server_stop.clone();
                tokio::spawn(async move {
                    shutdown.cancelled().await;
                    stop.cancel();
                });
                None
            }
        };
        tracing::info!(%addr, role = role.as_str(), worker_id = %identity.id, "listening");
        Ok(Application {
            addr,
            state,
            server,
            worker,
        })
    }

    /// Waits until the worker (if any) has drained and the HTTP server has stopped.
    pub async fn wait(self) {
        if let Some(w) = self.worker {
            let _ = w.await;
        }
        let _ = self.server.await;
    }
}
