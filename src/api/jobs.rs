use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::extract::{JobId, Json, Query};
use super::uploads;
use crate::etl::{ETL_KIND, EtlPayload};
use crate::queue::{Job, JobEvent, JobState, ListFilter, NewJob};

pub const MAX_PAGE: i64 = 500;
pub const DEFAULT_PAGE: i64 = 50;

/// `POST /v1/jobs`: either an ETL job for a blob already in the store
/// (`{bu_id, connector, source_blob}`, SPEC §5) or any registered kind (`{kind, payload}`).
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<Value>,
) -> Result<axum::response::Response, ApiError> {
    if body.get("source_blob").is_some() && body.get("kind").is_none() {
        let req =
            serde_json::from_value(body).map_err(|e| ApiError::unprocessable(e.to_string()))?;
        return uploads::create_from_blob(&state, &caller, req).await;
    }
    let new: NewJob =
        serde_json::from_value(body).map_err(|e| ApiError::unprocessable(e.to_string()))?;
    if state.registry.get(&new.kind).is_none() {
        let known: Vec<&str> = state.registry.names().collect();
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_kind",
            format!(
                "unknown job kind {:?}; known kinds: {}",
                new.kind,
                known.join(", ")
            ),
        ));
    }
    if new.kind == ETL_KIND {
        // Same checks as the ETL form, so a bad payload never reaches a worker.
        let p: EtlPayload = serde_json::from_value(new.payload.clone())
            .map_err(|e| ApiError::unprocessable(format!("etl payload: {e}")))?;
        let req = uploads::BlobJob {
            bu_id: p.bu_id,
            connector: p.connector,
            source_blob: p.source_blob,
            idempotency_key: new.idempotency_key,
        };
        return uploads::create_from_blob(&state, &caller, req).await;
    }
    let enq = state.store.enqueue(&new).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "job_id": enq.job_id,
            "status_url": format!("/v1/jobs/{}", enq.job_id),
            "created": enq.created,
        })),
    )
        .into_response())
}

/// A job with its stage list and history.
#[derive(Serialize)]
pub struct JobView {
    #[serde(flatten)]
    job: Job,
    stages: Vec<String>,
    /// ETL jobs: the extract report, once extract has finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<Value>,
    history: Vec<JobEvent>,
}

pub async fn show(
    State(state): State<AppState>,
    JobId(id): JobId,
) -> Result<axum::Json<JobView>, ApiError> {
    let mut job = state.store.get(id).await?;
    let history = state.store.events(id).await?;
    let kind = state.registry.get(&job.kind);
    let stages = kind
        .map(|k| k.stage_names().into_iter().map(str::to_owned).collect())
        .unwrap_or_default();
    // NULL means "from the first unfinished stage" (e.g. after a retry from start).
    if job.stage.is_none() && !job.state.is_final() {
        job.stage = kind.and_then(|k| {
            k.next_stage(&job.checkpoint)
                .map(|i| k.stages[i].name().to_string())
        });
    }
    let report = job
        .checkpoint
        .get("extract")
        .and_then(|e| e.get("report"))
        .cloned();
    Ok(axum::Json(JobView {
        job,
        stages,
        report,
        history,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    kind: Option<String>,
    bu_id: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

pub fn parse_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(l) if (1..=MAX_PAGE).contains(&l) => Ok(l),
        Some(l) => Err(ApiError::bad_request(format!(
            "limit {l} out of range: expected 1 to {MAX_PAGE}"
        ))),
    }
}

pub fn parse_cursor(cursor: Option<&str>) -> Result<Option<i64>, ApiError> {
    cursor
        .map(|c| {
            c.parse::<i64>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| ApiError::bad_request(format!("invalid cursor {c:?}")))
        })
        .transpose()
}

pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let job_state = q
        .state
        .as_deref()
        .map(str::parse::<JobState>)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let filter = ListFilter {
        state: job_state,
        kind: q.kind,
        bu_id: q.bu_id,
    };
    let page = state
        .store
        .list(
            &filter,
            parse_cursor(q.cursor.as_deref())?,
            parse_limit(q.limit)?,
        )
        .await?;
    Ok(axum::Json(
        json!({"jobs": page.items, "next_cursor": page.next_cursor}),
    ))
}

pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JobId(id): JobId,
) -> Result<impl IntoResponse, ApiError> {
    let previous = state.store.cancel(id, &caller.0).await?;
    Ok(axum::Json(
        json!({"job_id": id, "state": "cancelled", "previous_state": previous}),
    ))
}
