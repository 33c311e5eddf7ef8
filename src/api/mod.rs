//! REST control plane (SPEC §5), served by `server.rs`.
//!
//! Routes: `jobs.rs`, `uploads.rs`, `dead_letters.rs`, `datasets.rs`, `lifecycle.rs`
//! (lifecycle and fleet), `sources.rs` (sources, their ledger, the Event Grid webhook),
//! `health.rs` (health, readiness, metrics, OpenAPI). `extractors.rs`
//! turns rejections into JSON errors (`error.rs`); `auth.rs` checks bearer tokens.

pub mod access;
mod auth;
mod console;
mod datasets;
mod dead_letters;
mod error;
mod extractors;
mod health;
mod job_actions;
mod jobs;
mod lifecycle;
mod preview;
pub mod server;
mod sources;
mod stats;
mod uploads;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};
use tokio_util::task::TaskTracker;

pub use error::ApiError;

use crate::configuration::Settings;
use crate::datasets::DatasetStore;
use crate::etl::EtlContext;
use crate::fleet::{FleetStore, WorkerInfo};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::pipeline::Registry;
use crate::queue::JobStore;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub jobs: JobStore,
    pub fleet: FleetStore,
    pub datasets: DatasetStore,
    pub registry: Arc<Registry>,
    pub lifecycle: Lifecycle,
    pub metrics: Arc<Metrics>,
    pub identity: Arc<WorkerInfo>,
    pub etl: Arc<EtlContext>,
    /// Clean-ups left behind by requests that were cut off (a partly stored upload).
    pub cleanup: TaskTracker,
    /// Configured sources and the ingest path (Event Grid webhook, ticks, ledger).
    pub sources: crate::sources::SourceSet,
}

/// Which routes a process serves: `serve` and `api` the whole API, `worker` the control plane
/// (lifecycle, fleet, health, metrics) so it can be drained over REST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Full,
    ControlOnly,
}

/// Extra bytes of multipart framing allowed on top of `etl.max_upload_bytes`.
pub const FORM_OVERHEAD: u64 = 64 * 1024;

pub fn router(state: AppState, surface: Surface) -> Router {
    let api = &state.settings.api;
    let mut v1 = Router::new()
        .route("/lifecycle", get(lifecycle::show))
        .route("/lifecycle/drain", post(lifecycle::drain))
        .route("/lifecycle/resume", post(lifecycle::resume))
        .route("/fleet", get(lifecycle::fleet))
        .route("/fleet/drain", post(lifecycle::fleet_drain))
        .route("/fleet/resume", post(lifecycle::fleet_resume))
        .route("/fleet/workers/{id}/drain", post(lifecycle::worker_drain))
        .route("/fleet/workers/{id}/resume", post(lifecycle::worker_resume));
    if surface == Surface::Full {
        v1 = v1
            .route("/jobs", post(jobs::create).get(jobs::list))
            .route("/jobs/{id}", get(jobs::show))
            .route("/jobs/{id}/cancel", post(jobs::cancel))
            .route("/jobs/{id}/rejected", get(jobs::rejected))
            .route("/jobs/{id}/retry", post(dead_letters::retry_one))
            .route("/jobs/{id}/artifacts/{name}", get(job_actions::artifact))
            .route("/jobs/count", get(job_actions::count))
            .route("/jobs/cancel", post(job_actions::cancel_matching))
            .route("/jobs/retry", post(job_actions::retry_matching))
            .route("/stats", get(stats::stats))
            .route("/connectors", get(stats::connectors))
            .route("/dead-letters", get(dead_letters::list))
            .route("/dead-letters/retry", post(dead_letters::retry_bulk))
            .route("/dead-letters/{id}/retry", post(dead_letters::retry_one))
            .route("/datasets", get(datasets::list))
            .route("/datasets/{bu_id}/{connector}", get(datasets::show))
            .route("/datasets/{bu_id}/{connector}/diff", get(datasets::diff))
            .route(
                "/datasets/{bu_id}/{connector}/rollback",
                post(datasets::rollback),
            )
            .route("/sources", get(sources::list))
            .route("/sources/{name}", get(sources::show))
            .route("/sources/{name}/ledger", get(sources::ledger))
            .route("/sources/{name}/runs", get(sources::runs))
            .route("/sources/{name}/tick", post(sources::tick))
            .route("/sources/{name}/pause", post(sources::pause))
            .route("/sources/{name}/resume", post(sources::resume))
            .route(
                "/sources/{name}/events",
                post(sources::events)
                    .options(sources::handshake)
                    .layer(DefaultBodyLimit::max(sources::EVENTS_BODY_LIMIT)),
            );
    }
    // Every route but uploads answers within request_timeout_ms.
    let timeout = Duration::from_millis(api.request_timeout_ms);
    let mut routes = Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(health::openapi))
        .merge(console::routes(surface))
        .layer(DefaultBodyLimit::max(api.max_body_bytes))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ));
    if surface == Surface::Full {
        // Uploads are bounded by the pause between body parts and api.upload_timeout_ms; the
        // body limit counts every part of the form, not just the file.
        let limit = state.etl.settings.max_upload_bytes + FORM_OVERHEAD;
        let upload_timeout = Duration::from_millis(api.upload_timeout_ms);
        let uploads = Router::new()
            .route("/v1/uploads", post(uploads::upload))
            .route("/v1/connectors/preview", post(preview::draft))
            .route("/v1/connectors/{name}/preview", post(preview::named))
            .layer(middleware::from_fn_with_state(
                state.clone(),
                uploads::refuse_declared_oversize,
            ))
            .layer(DefaultBodyLimit::max(limit as usize))
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                upload_timeout,
            ));
        routes = routes.merge(uploads);
    }
    routes
        // After routing: the auth layer needs the matched route to know the role it needs.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this endpoint",
            )
        })
        // Failures are logged where they happen, once, at their real level (ApiError: an id
        // and the detail for 500s, a warning for an unavailable dependency); the default
        // on_failure would add an ERROR line for every 5xx, a draining /readyz included.
        .layer(tower_http::trace::TraceLayer::new_for_http().on_failure(()))
        .with_state(state)
}
