//! REST control plane (SPEC §5).

mod auth;
mod control;
mod dead_letters;
mod error;
mod extract;
mod jobs;
mod uploads;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};
use sqlx::PgPool;

pub use error::ApiError;

use crate::configuration::Settings;
use crate::fleet::WorkerInfo;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::pipeline::Registry;
use crate::queue::JobStore;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub pool: PgPool,
    pub store: JobStore,
    pub registry: Arc<Registry>,
    pub lifecycle: Lifecycle,
    pub metrics: Arc<Metrics>,
    pub identity: Arc<WorkerInfo>,
    pub etl: Arc<crate::etl::Etl>,
}

/// Which routes a process serves: `serve` and `api` the whole API, `worker` the control plane
/// (lifecycle, fleet, health, metrics) so it can be drained over REST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Full,
    ControlOnly,
}

pub fn router(state: AppState, surface: Surface) -> Router {
    let mut v1 = Router::new()
        .route("/lifecycle", get(control::lifecycle))
        .route("/lifecycle/drain", post(control::lifecycle_drain))
        .route("/lifecycle/resume", post(control::lifecycle_resume))
        .route("/fleet", get(control::fleet))
        .route("/fleet/drain", post(control::fleet_drain))
        .route("/fleet/resume", post(control::fleet_resume));
    if surface == Surface::Full {
        v1 = v1
            .route(
                "/uploads",
                // The upload handler enforces etl.max_upload_bytes itself while streaming.
                post(uploads::upload).layer(DefaultBodyLimit::disable()),
            )
            .route("/jobs", post(jobs::create).get(jobs::list))
            .route("/jobs/{id}", get(jobs::show))
            .route("/jobs/{id}/cancel", post(jobs::cancel))
            .route("/dead-letters", get(dead_letters::list))
            .route("/dead-letters/retry", post(dead_letters::retry_bulk))
            .route("/dead-letters/{id}/retry", post(dead_letters::retry_one));
    }
    let limit = state.settings.api.max_body_bytes;
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(control::healthz))
        .route("/readyz", get(control::readyz))
        .route("/metrics", get(control::metrics))
        .route("/openapi.json", get(control::openapi))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this endpoint",
            )
        })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}
