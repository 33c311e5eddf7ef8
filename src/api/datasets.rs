//! `GET /v1/datasets`: the promoted version per (bu_id, connector), recent promotions, and
//! the cache counter readers poll.

use axum::extract::State;
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;
use super::error::ApiError;

/// Promotions shown per dataset.
const RECENT: i64 = 10;

pub async fn list(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let unavailable = |e: crate::datasets::DatasetError| {
        if e.is_unavailable() {
            ApiError::unavailable("database_unavailable", "PostgreSQL", e)
        } else {
            ApiError::internal(e)
        }
    };
    let datasets = state.datasets.list(RECENT).await.map_err(unavailable)?;
    let counter = state.datasets.counter().await.map_err(unavailable)?;
    Ok(axum::Json(
        json!({"datasets": datasets, "cache_counter": counter}),
    ))
}
