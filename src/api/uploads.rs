//! `POST /v1/uploads` (multipart) and the ETL form of `POST /v1/jobs`: a source workbook in the
//! blob store, checked, enqueued as an `etl` job, and recorded in the audit log.

use axum::Extension;
use axum::extract::State;
use axum::extract::multipart::{Field, Multipart, MultipartError};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use crate::etl::workbook::sniff;
use crate::etl::{ETL_KIND, EtlPayload, validate_blob_key, validate_bu_id};
use crate::queue::NewJob;
use crate::storage::StorageError;

/// Largest text field (bu_id, connector, idempotency_key) read from a multipart form.
const MAX_FIELD_BYTES: usize = 1024;
/// Multipart framing on top of the file itself.
const FORM_OVERHEAD: u64 = 64 * 1024;
const WORKBOOK_EXTENSIONS: [&str; 5] = ["xlsx", "xlsm", "xlsb", "xls", "ods"];

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the upload is larger than the limit of {max} bytes"),
    )
}

fn storage_error(e: StorageError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "blob_store_unavailable",
        format!("storing the upload failed; retry shortly: {e}"),
    )
}

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            e.body_text(),
        );
    }
    ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
}

/// The fields of an ETL job, checked the same way for uploads and `POST /v1/jobs`.
fn check_target(state: &AppState, bu_id: &str, connector: &str) -> Result<(), ApiError> {
    validate_bu_id(bu_id)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_bu_id", m))?;
    state
        .etl
        .connector(connector)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_connector", m))?;
    Ok(())
}

async fn text_field(mut field: Field<'_>) -> Result<String, ApiError> {
    let name = field.name().unwrap_or_default().to_string();
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        buf.extend_from_slice(&chunk);
        if buf.len() > MAX_FIELD_BYTES {
            return Err(ApiError::bad_request(format!(
                "field {name} is longer than {MAX_FIELD_BYTES} bytes"
            )));
        }
    }
    String::from_utf8(buf)
        .map(|s| s.trim().to_string())
        .map_err(|_| ApiError::bad_request(format!("field {name} is not UTF-8 text")))
}

/// The blob key of a new upload: generated, so nothing the client sends becomes a path. The
/// extension is kept only when it is a known workbook type, for people browsing the store.
fn upload_key(file_name: Option<&str>) -> String {
    let ext = file_name
        .and_then(|n| n.rsplit_once('.'))
        .map(|(_, e)| e.to_ascii_lowercase())
        .filter(|e| WORKBOOK_EXTENSIONS.contains(&e.as_str()))
        .unwrap_or_else(|| "bin".into());
    format!(
        "uploads/{}/{}.{ext}",
        chrono::Utc::now().format("%Y/%m/%d"),
        uuid::Uuid::new_v4().simple()
    )
}

struct Stored {
    key: String,
    size: u64,
    file_name: Option<String>,
}

/// Streams the file field into the blob store, refusing it past `max` bytes or when its first
/// bytes are not a workbook. Nothing is left in the store on failure.
async fn store_file(state: &AppState, mut field: Field<'_>, max: u64) -> Result<Stored, ApiError> {
    let file_name = field
        .file_name()
        .map(|n| n.chars().filter(|c| !c.is_control()).take(255).collect());
    let key = upload_key(file_name.as_deref());
    let mut w = state.etl.blobs.writer(&key).await.map_err(storage_error)?;
    let mut head = Vec::with_capacity(8);
    let result: Result<(), ApiError> = async {
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            if w.written + chunk.len() as u64 > max {
                return Err(too_large(max));
            }
            if head.len() < 8 {
                let take = (8 - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
            }
            w.write(&chunk).await.map_err(storage_error)?;
        }
        if head.len() < 8 && !head.is_empty() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not_a_workbook",
                "the file is not a workbook (xlsx, xlsm, xlsb, xls or ods)",
            ));
        }
        sniff(&head).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not_a_workbook",
                e.to_string(),
            )
        })
    }
    .await;
    match result {
        Ok(()) => {
            let size = w.written;
            w.finish().await.map_err(storage_error)?;
            Ok(Stored {
                key,
                size,
                file_name,
            })
        }
        Err(e) => {
            w.abort().await;
            Err(e)
        }
    }
}

pub async fn upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Result<impl IntoResponse, ApiError> {
    let max = state.etl.settings.max_upload_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max + FORM_OVERHEAD) {
        return Err(too_large(max));
    }
    let (mut bu_id, mut connector, mut idempotency_key): (
        Option<String>,
        Option<String>,
        Option<String>,
    ) = (None, None, None);
    let mut stored: Option<Stored> = None;
    let read: Result<(), ApiError> = async {
        while let Some(field) = form.next_field().await.map_err(multipart_error)? {
            match field.name().unwrap_or_default() {
                "file" => {
                    if stored.is_some() {
                        return Err(ApiError::bad_request("more than one file field"));
                    }
                    // Fields sent before the file are checked before it is stored.
                    if let (Some(b), Some(c)) = (&bu_id, &connector) {
                        check_target(&state, b, c)?;
                    }
                    stored = Some(store_file(&state, field, max).await?);
                }
                "bu_id" => bu_id = Some(text_field(field).await?),
                "connector" => connector = Some(text_field(field).await?),
                "idempotency_key" => idempotency_key = Some(text_field(field).await?),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown field {other:?}; expected file, bu_id, connector, idempotency_key"
                    )));
                }
            }
        }
        Ok(())
    }
    .await;
    let outcome = async {
        read?;
        let bu_id = bu_id.ok_or_else(|| ApiError::bad_request("missing field bu_id"))?;
        let connector =
            connector.ok_or_else(|| ApiError::bad_request("missing field connector"))?;
        check_target(&state, &bu_id, &connector)?;
        let file = stored
            .as_ref()
            .ok_or_else(|| ApiError::bad_request("missing field file"))?;
        let payload = EtlPayload {
            bu_id,
            connector,
            source_blob: file.key.clone(),
            file_name: file.file_name.clone(),
            uploaded_by: Some(caller.0.clone()),
        };
        enqueue(
            &state,
            &caller,
            payload,
            idempotency_key.filter(|k| !k.is_empty()),
            "upload",
            Some(file.size),
        )
        .await
    }
    .await;
    match outcome {
        Ok((job_id, created)) => {
            if !created && let Some(file) = &stored {
                // The key named an existing job, which has its own copy of the file.
                let _ = state.etl.blobs.delete(&file.key).await;
            }
            Ok(accepted(job_id, created))
        }
        Err(e) => {
            if let Some(file) = &stored {
                let _ = state.etl.blobs.delete(&file.key).await;
            }
            Err(e)
        }
    }
}

fn accepted(job_id: i64, created: bool) -> impl IntoResponse {
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "job_id": job_id,
            "status_url": format!("/v1/jobs/{job_id}"),
            "created": created,
        })),
    )
}

/// Enqueues the job and records the action in `audit_log`; returns (job id, created).
async fn enqueue(
    state: &AppState,
    caller: &Caller,
    payload: EtlPayload,
    idempotency_key: Option<String>,
    action: &str,
    size: Option<u64>,
) -> Result<(i64, bool), ApiError> {
    let mut job = NewJob::new(ETL_KIND, serde_json::to_value(&payload).expect("serialise"));
    job.idempotency_key = idempotency_key;
    let enq = state.store.enqueue(&job).await?;
    if enq.created {
        sqlx::query(
            "INSERT INTO audit_log (actor, source, action, job_id, bu_id, connector, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&caller.0)
        .bind(format!("etlq-api/{}", state.identity.version))
        .bind(action)
        .bind(enq.job_id)
        .bind(&payload.bu_id)
        .bind(&payload.connector)
        .bind(json!({
            "source_blob": payload.source_blob,
            "file_name": payload.file_name,
            "bytes": size,
        }))
        .execute(&state.pool)
        .await?;
    }
    Ok((enq.job_id, enq.created))
}

/// `POST /v1/jobs` for a blob already in the store.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobJob {
    pub bu_id: String,
    pub connector: String,
    pub source_blob: String,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

pub async fn create_from_blob(
    state: &AppState,
    caller: &Caller,
    req: BlobJob,
) -> Result<axum::response::Response, ApiError> {
    check_target(state, &req.bu_id, &req.connector)?;
    validate_blob_key(&req.source_blob).map_err(ApiError::bad_request)?;
    let head = match state.etl.blobs.head_bytes(&req.source_blob, 8).await {
        Ok(h) => h,
        Err(StorageError::NotFound(_)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "source_blob_not_found",
                format!("source_blob {:?} is not in the blob store", req.source_blob),
            ));
        }
        Err(e) => return Err(storage_error(e)),
    };
    sniff(&head).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_a_workbook",
            e.to_string(),
        )
    })?;
    let payload = EtlPayload {
        bu_id: req.bu_id,
        connector: req.connector,
        source_blob: req.source_blob,
        file_name: None,
        uploaded_by: Some(caller.0.clone()),
    };
    let (job_id, created) = enqueue(
        state,
        caller,
        payload,
        req.idempotency_key,
        "enqueue_blob",
        None,
    )
    .await?;
    Ok(accepted(job_id, created).into_response())
}
