//! `/v1/dead-letters`: list dead-lettered jobs; retry one (by job id) or every one matching a
//! filter, from the checkpoint or from the start.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::extractors::{JobId, Json, Query};
use super::jobs::{parse_cursor, parse_limit};
use crate::queue::{Actor, DeadLetterFilter, RetryFrom};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    kind: Option<String>,
    bu_id: Option<String>,
    connector: Option<String>,
    since: Option<DateTime<Utc>>,
    #[serde(default)]
    include_retried: bool,
    limit: Option<i64>,
    cursor: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let filter = DeadLetterFilter {
        kind: q.kind,
        bu_id: q.bu_id,
        connector: q.connector,
        since: q.since,
    };
    let page = state
        .jobs
        .dead_letters(
            &filter,
            q.include_retried,
            parse_cursor(q.cursor.as_deref())?,
            parse_limit(q.limit)?,
        )
        .await?;
    let total = state
        .jobs
        .dead_letter_count(&filter, q.include_retried)
        .await?;
    Ok(axum::Json(
        json!({"dead_letters": page.items, "next_cursor": page.next_cursor, "total": total}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryQuery {
    #[serde(default)]
    from: RetryFrom,
}

/// `{id}` is the job id.
pub async fn retry_one(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    JobId(id): JobId,
    Query(q): Query<RetryQuery>,
) -> Result<impl IntoResponse, ApiError> {
    state.jobs.retry_dead(id, q.from, &actor).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"job_id": id, "state": "queued", "from": q.from})),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkRetry {
    kind: Option<String>,
    bu_id: Option<String>,
    connector: Option<String>,
    since: Option<DateTime<Utc>>,
    #[serde(default)]
    from: RetryFrom,
    /// Required to retry every dead letter when no filter is given.
    #[serde(default)]
    all: bool,
}

pub async fn retry_bulk(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Json(body): Json<BulkRetry>,
) -> Result<impl IntoResponse, ApiError> {
    let filter = DeadLetterFilter {
        kind: body.kind,
        bu_id: body.bu_id,
        connector: body.connector,
        since: body.since,
    };
    if filter.is_empty() && !body.all {
        return Err(ApiError::unprocessable(
            "give a filter (kind, bu_id, connector, since) or \"all\": true",
        ));
    }
    let ids = state
        .jobs
        .retry_dead_bulk(&filter, body.from, &actor)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"retried": ids.len(), "job_ids": ids, "from": body.from})),
    ))
}
