//! `/v1/jobs`: enqueue (any registered kind, or an ETL job for a blob already in the store),
//! list, show, cancel, and an ETL job's rejected rows.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extractors::{JobId, Json, Query};
use crate::etl::artifact;
use crate::etl::submit::{self, Submission};
use crate::etl::{ETL_KIND, EtlPayload};
use crate::queue::{Actor, Enqueued, Job, JobEvent, JobState, ListFilter, NewJob};

pub const MAX_PAGE: i64 = 500;
pub const DEFAULT_PAGE: i64 = 50;

/// `POST /v1/jobs` for a blob already in the store (SPEC §5).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobJob {
    pub bu_id: String,
    pub connector: String,
    pub source_blob: String,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Deserialises a request body, naming the field at fault.
fn parse<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::unprocessable(e.inner().to_string())
        } else {
            ApiError::unprocessable(format!("{path}: {}", e.inner()))
        }
    })
}

pub(super) fn accepted(e: Enqueued) -> axum::response::Response {
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "job_id": e.job_id,
            "status_url": format!("/v1/jobs/{}", e.job_id),
            "created": e.created,
        })),
    )
        .into_response()
}

async fn submit_blob(
    state: &AppState,
    actor: &Actor,
    req: BlobJob,
) -> Result<axum::response::Response, ApiError> {
    let (bu_id, connector) = submit::check_target(&state.etl, &req.bu_id, &req.connector)?;
    let source_blob = submit::check_source(&state.etl, &req.source_blob).await?;
    let enq = submit::submit(
        &state.etl,
        actor,
        Submission {
            bu_id,
            connector,
            source_blob,
            file_name: None,
            idempotency_key: req.idempotency_key,
            action: "enqueue_blob",
            bytes: None,
        },
    )
    .await?;
    Ok(accepted(enq))
}

/// `POST /v1/jobs`: either an ETL job for a blob already in the store
/// (`{bu_id, connector, source_blob}`) or any registered kind (`{kind, payload}`).
pub async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Json(body): Json<Value>,
) -> Result<axum::response::Response, ApiError> {
    if body.get("source_blob").is_some() && body.get("kind").is_none() {
        return submit_blob(&state, &actor, parse(body)?).await;
    }
    let new: NewJob = parse(body)?;
    new.check()?;
    if state.registry.get(&new.kind).is_none() {
        let known: Vec<&str> = state.registry.names().collect();
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_kind",
            format!(
                "unknown job kind {:?}; known kinds: {}",
                new.kind.escape_debug().to_string(),
                known.join(", ")
            ),
        ));
    }
    if new.kind == ETL_KIND {
        // Same checks as the ETL form, so a bad payload never reaches a worker.
        let p: EtlPayload = serde_json::from_value(new.payload.clone())
            .map_err(|e| ApiError::unprocessable(format!("etl payload: {e}")))?;
        let req = BlobJob {
            bu_id: p.bu_id.to_string(),
            connector: p.connector,
            source_blob: p.source_blob.to_string(),
            idempotency_key: new.idempotency_key,
        };
        return submit_blob(&state, &actor, req).await;
    }
    Ok(accepted(state.jobs.enqueue(&new).await?))
}

/// A job with its stage list and history.
#[derive(Serialize)]
pub struct JobView {
    #[serde(flatten)]
    job: Job,
    stages: Vec<String>,
    /// The kind's own summary (ETL jobs: the extract report, once extract has finished).
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<Value>,
    history: Vec<JobEvent>,
}

pub async fn show(
    State(state): State<AppState>,
    JobId(id): JobId,
) -> Result<axum::Json<JobView>, ApiError> {
    let mut job = state.jobs.get(id).await?;
    let history = state.jobs.events(id).await?;
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
    let report = kind.and_then(|k| k.summary(&job.checkpoint));
    Ok(axum::Json(JobView {
        job,
        stages,
        report,
        history,
    }))
}

/// The job-list filter as query parameters (`GET /v1/jobs`, `GET /v1/jobs/count`) or as a
/// bulk action's body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterParams {
    pub state: Option<String>,
    pub kind: Option<String>,
    pub bu_id: Option<String>,
    pub connector: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

impl FilterParams {
    pub fn parse(self) -> Result<ListFilter, ApiError> {
        let state = self
            .state
            .as_deref()
            .map(str::parse::<JobState>)
            .transpose()
            .map_err(ApiError::bad_request)?;
        Ok(ListFilter {
            state,
            kind: self.kind,
            bu_id: self.bu_id,
            connector: self.connector,
            created_after: self.created_after,
            created_before: self.created_before,
        })
    }
}

/// `GET /v1/jobs`: the filter, spelled out (serde's `flatten` turns query numbers into
/// strings and defeats `deny_unknown_fields`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    kind: Option<String>,
    bu_id: Option<String>,
    connector: Option<String>,
    created_after: Option<DateTime<Utc>>,
    created_before: Option<DateTime<Utc>>,
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
            c.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(|| {
                ApiError::bad_request(format!("invalid cursor {:?}", c.escape_debug().to_string()))
            })
        })
        .transpose()
}

pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let filter = FilterParams {
        state: q.state,
        kind: q.kind,
        bu_id: q.bu_id,
        connector: q.connector,
        created_after: q.created_after,
        created_before: q.created_before,
    }
    .parse()?;
    let page = state
        .jobs
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
    Extension(actor): Extension<Actor>,
    JobId(id): JobId,
) -> Result<impl IntoResponse, ApiError> {
    let previous = state.jobs.cancel(id, &actor).await?;
    Ok(axum::Json(
        json!({"job_id": id, "state": "cancelled", "previous_state": previous}),
    ))
}

/// The job, when it is an ETL job; else 409 `not_an_etl_job` saying it has no `what`.
pub(super) async fn etl_job(state: &AppState, id: i64, what: &str) -> Result<Job, ApiError> {
    let job = state.jobs.get(id).await?;
    if job.kind != ETL_KIND {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_an_etl_job",
            format!("job {id} is a {} job; only etl jobs have {what}", job.kind),
        ));
    }
    Ok(job)
}

pub const MAX_REJECTED_PAGE: usize = 1000;
pub const DEFAULT_REJECTED_PAGE: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectedQuery {
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// `GET /v1/jobs/{id}/rejected?offset=&limit=`: the rows an ETL job's extract rejected
/// (sheet, row, column, value, reason), in sheet order, a page at a time.
pub async fn rejected(
    State(state): State<AppState>,
    JobId(id): JobId,
    Query(q): Query<RejectedQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_REJECTED_PAGE);
    if limit == 0 || limit > MAX_REJECTED_PAGE {
        return Err(ApiError::unprocessable(format!(
            "limit: between 1 and {MAX_REJECTED_PAGE}"
        )));
    }
    etl_job(&state, id, "rejected rows").await?;
    let (rows, total) = match state.etl.blobs.get(&artifact::rejected_key(id)).await {
        Ok(bytes) => artifact::rejected_page(&bytes, q.offset, limit),
        Err(crate::storage::StorageError::NotFound(_)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_extracted_yet",
                format!("job {id} has no rejected-rows artifact yet (extract has not finished)"),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(axum::Json(json!({
        "job_id": id,
        "offset": q.offset,
        "limit": limit,
        "total": total,
        "rejected": rows,
    })))
}
