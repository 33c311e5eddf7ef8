//! `/v1/datasets`: the promoted version per (bu_id, connector) with recent promotions and the
//! cache counter readers poll; one dataset's history (promotions, rollbacks, the versions still
//! kept); what changed between two versions; and rolling back to a kept version.

use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::extractors::{Json, Query};
use crate::datasets::{DatasetError, History, Manifest};
use crate::etl::diff::{self, DEFAULT_DIFF_PAGE, MAX_DIFF_PAGE};
use crate::etl::rollback::{self, RollbackError, RollbackRequest};
use crate::queue::Actor;
use crate::sink::{Dataset, SinkError};

/// Promotions shown per dataset in the list.
const RECENT: i64 = 10;
/// Promotions and rollbacks shown in one dataset's history.
const HISTORY: i64 = 50;
/// The longest rollback reason kept.
const MAX_REASON: usize = 500;

fn store_error(e: DatasetError) -> ApiError {
    if e.is_unavailable() {
        ApiError::unavailable("database_unavailable", "PostgreSQL", e)
    } else {
        ApiError::internal(e)
    }
}

fn retention(state: &AppState) -> Duration {
    Duration::from_secs(state.etl.settings.superseded_retention_hours * 3600)
}

pub async fn list(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let datasets = state.datasets.list(RECENT).await.map_err(store_error)?;
    let counter = state.datasets.counter().await.map_err(store_error)?;
    Ok(axum::Json(
        json!({"datasets": datasets, "cache_counter": counter}),
    ))
}

async fn manifest_and_history(
    state: &AppState,
    bu_id: &str,
    connector: &str,
) -> Result<(Manifest, History), ApiError> {
    let manifest = state
        .datasets
        .manifest(bu_id, connector)
        .await
        .map_err(store_error)?
        .ok_or_else(|| {
            ApiError::not_found(format!("no dataset {bu_id}/{connector} has been promoted"))
        })?;
    let history = state
        .datasets
        .history(bu_id, connector, retention(state), HISTORY)
        .await
        .map_err(store_error)?;
    Ok((manifest, history))
}

pub async fn show(
    State(state): State<AppState>,
    Path((bu_id, connector)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let (manifest, history) = manifest_and_history(&state, &bu_id, &connector).await?;
    Ok(axum::Json(json!({
        "manifest": manifest,
        "promotions": history.promotions,
        "rollbacks": history.rollbacks,
        "kept_versions": history.kept,
        "retention_hours": state.etl.settings.superseded_retention_hours,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    from: Option<i64>,
    to: Option<i64>,
    cursor: Option<String>,
    limit: Option<usize>,
}

pub async fn diff(
    State(state): State<AppState>,
    Path((bu_id, connector)): Path<(String, String)>,
    Query(q): Query<DiffQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_DIFF_PAGE);
    if !(1..=MAX_DIFF_PAGE).contains(&limit) {
        return Err(ApiError::unprocessable(format!(
            "limit must be between 1 and {MAX_DIFF_PAGE}"
        )));
    }
    if let Some(c) = &q.cursor
        && !(c.len() <= 64 && c.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ApiError::unprocessable(
            "cursor must be a document id from a previous page's next_cursor",
        ));
    }
    let (manifest, history) = manifest_and_history(&state, &bu_id, &connector).await?;
    let to = q.to.unwrap_or(manifest.version);
    let from = match q.from {
        Some(v) => v,
        // The version `to` replaced, the most recent such if it replaced several.
        None => history
            .kept
            .iter()
            .filter(|k| k.superseded_by == to)
            .max_by_key(|k| k.superseded_at)
            .map(|k| k.version)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "no_previous_version",
                    format!("no version that {to} replaced is still kept; pass from=VERSION"),
                )
            })?,
    };
    for v in [from, to] {
        let kept = v == manifest.version || history.kept.iter().any(|k| k.version == v);
        if !kept {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "version_not_kept",
                format!(
                    "version {v} of {bu_id}/{connector} is neither promoted nor kept (superseded versions are deleted after etl.superseded_retention_hours = {})",
                    state.etl.settings.superseded_retention_hours
                ),
            ));
        }
    }
    let ds = |version| Dataset {
        bu_id: bu_id.clone(),
        connector: connector.clone(),
        version,
    };
    let d = diff::diff(
        state.etl.sink.as_ref(),
        &ds(from),
        &ds(to),
        q.cursor.as_deref(),
        limit,
    )
    .await
    .map_err(|e| match e {
        SinkError::Unavailable(m) => ApiError::unavailable("sink_unavailable", "the sink", m),
        SinkError::Rejected(m) => ApiError::internal(m),
    })?;
    Ok(axum::Json(d))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    version: i64,
    reason: String,
}

pub async fn rollback(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((bu_id, connector)): Path<(String, String)>,
    Json(body): Json<RollbackBody>,
) -> Result<impl IntoResponse, ApiError> {
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON {
        return Err(ApiError::unprocessable(format!(
            "reason: say why, in 1 to {MAX_REASON} characters"
        )));
    }
    let r = RollbackRequest {
        bu_id: &bu_id,
        connector: &connector,
        version: body.version,
        reason,
        actor: &actor,
    };
    let done = rollback::rollback(&state.etl, &r)
        .await
        .map_err(|e| match e {
            RollbackError::NoDataset { .. } | RollbackError::UnknownVersion(_) => {
                ApiError::not_found(e.to_string())
            }
            RollbackError::Expired { .. } => {
                ApiError::new(StatusCode::CONFLICT, "version_expired", e.to_string())
            }
            RollbackError::Unavailable(m) => {
                ApiError::unavailable("unavailable", "a dependency", m)
            }
            RollbackError::Internal(m) => ApiError::internal(m),
        })?;
    Ok(axum::Json(done))
}
