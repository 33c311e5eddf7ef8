//! What the console does to jobs beyond one cancel, as REST: count what a filter matches,
//! cancel or retry all of it, and download a run's artifacts. (Retrying one job is
//! `dead_letters::retry_one`, served at both of its paths.)

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::extractors::{Json, Query, parse_job_id};
use super::jobs::{FilterParams, etl_job};
use crate::etl::artifact;
use crate::queue::{Actor, ListFilter, RetryFrom};

/// `GET /v1/jobs/count?…`: how many jobs the list filter matches, and how many of them bulk
/// cancel and bulk retry would touch (the console's confirmation says these numbers).
pub async fn count(
    State(state): State<AppState>,
    Query(q): Query<FilterParams>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(state.jobs.count_matching(&q.parse()?).await?))
}

/// A bulk action's body: the list filter, `from` for retries, and `all` to act on every job
/// when no filter is given (so an empty body never cancels the whole queue).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkBody {
    state: Option<String>,
    kind: Option<String>,
    bu_id: Option<String>,
    connector: Option<String>,
    created_after: Option<chrono::DateTime<chrono::Utc>>,
    created_before: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    from: RetryFrom,
    #[serde(default)]
    all: bool,
}

impl BulkBody {
    fn filter(self) -> Result<(ListFilter, RetryFrom), ApiError> {
        let (all, from) = (self.all, self.from);
        let filter = FilterParams {
            state: self.state,
            kind: self.kind,
            bu_id: self.bu_id,
            connector: self.connector,
            created_after: self.created_after,
            created_before: self.created_before,
        }
        .parse()?;
        if filter.is_empty() && !all {
            return Err(ApiError::unprocessable(
                "give a filter (state, kind, bu_id, connector, created_after, created_before) or \"all\": true",
            ));
        }
        Ok((filter, from))
    }
}

/// `POST /v1/jobs/cancel`: cancels every queued, retrying or running job the filter matches.
pub async fn cancel_matching(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Json(body): Json<BulkBody>,
) -> Result<impl IntoResponse, ApiError> {
    let (filter, _) = body.filter()?;
    let ids = state.jobs.cancel_matching(&filter, &actor).await?;
    Ok(axum::Json(json!({"cancelled": ids.len(), "job_ids": ids})))
}

/// `POST /v1/jobs/retry`: re-enqueues every dead job the filter matches.
pub async fn retry_matching(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Json(body): Json<BulkBody>,
) -> Result<impl IntoResponse, ApiError> {
    let (filter, from) = body.filter()?;
    let ids = state.jobs.retry_matching(&filter, from, &actor).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"retried": ids.len(), "job_ids": ids, "from": from})),
    ))
}

/// The artifacts a run leaves, by the name they are downloaded under.
const ARTIFACTS: [(&str, &str); 3] = [
    (artifact::RECORDS, "application/x-ndjson"),
    (artifact::REJECTED, "application/x-ndjson"),
    (artifact::REPORT, "application/json"),
];

/// `GET /v1/jobs/{id}/artifacts/{name}`: streams one of an ETL run's artifacts as a download.
pub async fn artifact(
    State(state): State<AppState>,
    Path((raw_id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = parse_job_id(&raw_id)?;
    let Some((name, content_type)) = ARTIFACTS.iter().find(|(n, _)| *n == name) else {
        let known: Vec<&str> = ARTIFACTS.iter().map(|(n, _)| *n).collect();
        return Err(ApiError::not_found(format!(
            "no artifact {:?}; a run has {}",
            name.escape_debug().to_string(),
            known.join(", ")
        )));
    };
    etl_job(&state, id, "artifacts").await?;
    let key = format!("{}/{name}", artifact::run_prefix(id));
    let stream = match state.etl.blobs.get_stream(&key).await {
        Ok(s) => s,
        Err(crate::storage::StorageError::NotFound(_)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_extracted_yet",
                format!("job {id} has no {name} yet (extract has not finished)"),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"job-{id}-{name}\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
