//! `GET /v1/stats` (the console's overview: counts, the last hour, recent failures) and
//! `GET /v1/connectors` (what an upload may name).

use axum::extract::State;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;

pub async fn stats(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(state.jobs.stats().await?))
}

/// The configured connectors with their kind (sheet, csv, html, command), sheet, header and
/// columns, in name order.
pub async fn connectors(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let list: Vec<Value> = state
        .etl
        .connectors
        .values()
        .map(|c| {
            let mut v = serde_json::to_value(&c.spec).unwrap_or(Value::Null);
            v["name"] = json!(c.name);
            v["kind"] = json!(c.kind());
            // An extractor's environment may hold credentials: its names only.
            if let Some(env) = v.pointer_mut("/extractor/env")
                && let Some(map) = env.as_object()
            {
                *env = json!(map.keys().collect::<Vec<_>>());
            }
            v
        })
        .collect();
    Ok(axum::Json(json!({"connectors": list})))
}
