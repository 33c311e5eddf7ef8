//! `POST /v1/uploads`: a multipart form (`file`, `bu_id`, `connector`, optional
//! `idempotency_key`). The file streams into the blob store under a generated key, then
//! `etl::submit` enqueues the job with its audit row in one transaction.
//!
//! Bounds: the whole form is limited to `etl.max_upload_bytes` plus framing (every part
//! counts), a pause longer than `api.body_read_timeout_ms` between body parts is a 408, and a
//! request cut off at any point — refused, timed out, or dropped by a shutdown — leaves no
//! blob behind: a guard deletes whatever it stored unless a job now points at it.

use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::extract::multipart::{Field, MultipartError};
use axum::http::StatusCode;

use super::AppState;
use super::error::ApiError;
use super::extractors::Multipart;
use super::jobs::accepted;
use crate::etl::BlobKey;
use crate::etl::submit::{self, Submission, SubmitError};
use crate::etl::workbook::{SNIFF_BYTES, sniff};
use crate::queue::Actor;
use crate::storage::BlobStore;

/// Largest text field (bu_id, connector, idempotency_key) read from a multipart form.
const MAX_FIELD_BYTES: usize = 1024;
const WORKBOOK_EXTENSIONS: [&str; 10] = [
    "xlsx", "xlsm", "xlsb", "xls", "ods", "csv", "tsv", "txt", "htm", "html",
];

pub(super) fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the upload is larger than the limit of {max} bytes (etl.max_upload_bytes)"),
    )
}

/// Layer of the file routes (uploads, previews): a body whose declared length is already past
/// `etl.max_upload_bytes` is refused before a byte of it is read (the client learns at once,
/// not after sending it all).
pub(super) async fn refuse_declared_oversize(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let max = state.etl.settings.max_upload_bytes;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > max.saturating_add(super::FORM_OVERHEAD) => {
            axum::response::IntoResponse::into_response(too_large(max))
        }
        _ => next.run(req).await,
    }
}

pub(super) fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the form is larger than the upload limit (etl.max_upload_bytes)",
        );
    }
    ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
}

pub(super) fn stalled(pause: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "the client sent nothing for {} ms (api.body_read_timeout_ms)",
            pause.as_millis()
        ),
    )
}

/// Deletes a stored upload unless disarmed: on refusal, on error, and when the request future
/// is dropped midway (client gone, timeout, shutdown) — the delete is then handed to the
/// server's clean-up tracker, which shutdown awaits.
struct StoredGuard {
    blobs: BlobStore,
    key: Option<String>,
    cleanup: tokio_util::task::TaskTracker,
}

impl StoredGuard {
    fn disarm(&mut self) {
        self.key = None;
    }
}

impl Drop for StoredGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let blobs = self.blobs.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                self.cleanup.spawn_on(
                    async move {
                        if let Err(e) = blobs.delete(&key).await {
                            tracing::warn!(key, error = %e, "removing a refused upload failed");
                        }
                    },
                    &rt,
                );
            }
        }
    }
}

pub(super) async fn next_chunk(
    field: &mut Field<'_>,
    pause: Duration,
) -> Result<Option<bytes::Bytes>, ApiError> {
    tokio::time::timeout(pause, field.chunk())
        .await
        .map_err(|_| stalled(pause))?
        .map_err(multipart_error)
}

pub(super) async fn text_field(field: Field<'_>, pause: Duration) -> Result<String, ApiError> {
    read_field(field, pause, MAX_FIELD_BYTES, false).await
}

/// A text field of up to `max` bytes; `lines`: line breaks allowed (a TOML document).
pub(super) async fn read_field(
    mut field: Field<'_>,
    pause: Duration,
    max: usize,
    lines: bool,
) -> Result<String, ApiError> {
    let name = field.name().unwrap_or_default().to_string();
    let mut buf = Vec::new();
    while let Some(chunk) = next_chunk(&mut field, pause).await? {
        buf.extend_from_slice(&chunk);
        if buf.len() > max {
            return Err(ApiError::bad_request(format!(
                "field {name} is longer than {max} bytes"
            )));
        }
    }
    let text = String::from_utf8(buf)
        .map_err(|_| ApiError::bad_request(format!("field {name} is not UTF-8 text")))?;
    let allowed = |c: char| c == '\t' || (lines && (c == '\n' || c == '\r'));
    if text.chars().any(|c| c.is_control() && !allowed(c)) {
        return Err(ApiError::bad_request(format!(
            "field {name} contains control characters"
        )));
    }
    Ok(text.trim().to_string())
}

/// The blob key of a new upload: generated, so nothing the client sends becomes a path. The
/// extension is kept only when it is a known workbook type, for people browsing the store.
fn upload_key(file_name: Option<&str>) -> BlobKey {
    let ext = file_name
        .and_then(|n| n.rsplit_once('.'))
        .map(|(_, e)| e.to_ascii_lowercase())
        .filter(|e| WORKBOOK_EXTENSIONS.contains(&e.as_str()))
        .unwrap_or_else(|| "bin".into());
    BlobKey::parse(&format!(
        "uploads/{}/{}.{ext}",
        chrono::Utc::now().format("%Y/%m/%d"),
        uuid::Uuid::new_v4().simple()
    ))
    .expect("generated keys are valid")
}

struct Stored {
    key: BlobKey,
    size: u64,
    file_name: Option<String>,
}

/// Streams the file field into the blob store, refusing it past `max` bytes or when its first
/// bytes are not a workbook. An unfinished write leaves nothing (object_store discards it).
async fn store_file(
    state: &AppState,
    mut field: Field<'_>,
    max: u64,
    pause: Duration,
    guard: &mut StoredGuard,
) -> Result<Stored, ApiError> {
    let file_name = field
        .file_name()
        .map(|n| n.chars().filter(|c| !c.is_control()).take(255).collect());
    let key = upload_key(file_name.as_deref());
    let mut w = state.etl.blobs.writer(key.as_str()).await?;
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    let result: Result<(), ApiError> = async {
        while let Some(chunk) = next_chunk(&mut field, pause).await? {
            if w.written + chunk.len() as u64 > max {
                return Err(too_large(max));
            }
            if head.len() < SNIFF_BYTES {
                let take = (SNIFF_BYTES - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
            }
            w.write(&chunk).await?;
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
            // From here the blob exists: the guard owns it until a job points at it.
            guard.key = Some(key.to_string());
            w.finish().await?;
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
    Extension(actor): Extension<Actor>,
    Multipart(form): Multipart,
) -> Result<axum::response::Response, ApiError> {
    let mut guard = StoredGuard {
        blobs: state.etl.blobs.clone(),
        key: None,
        cleanup: state.cleanup.clone(),
    };
    let answer = receive(&state, &actor, form, &mut guard).await;
    // A refused upload's file is gone before the answer is (the guard's drop only covers a
    // request cut off midway).
    if answer.is_err()
        && let Some(key) = guard.key.take()
        && let Err(e) = state.etl.blobs.delete(&key).await
    {
        tracing::warn!(key, error = %e, "removing a refused upload failed");
    }
    answer
}

async fn receive(
    state: &AppState,
    actor: &Actor,
    mut form: axum::extract::Multipart,
    guard: &mut StoredGuard,
) -> Result<axum::response::Response, ApiError> {
    let state = state.clone();
    let max = state.etl.settings.max_upload_bytes;
    let pause = Duration::from_millis(state.settings.api.body_read_timeout_ms);
    let (mut bu_id, mut connector, mut idempotency_key): (
        Option<String>,
        Option<String>,
        Option<String>,
    ) = (None, None, None);
    let mut stored: Option<Stored> = None;
    loop {
        let field = tokio::time::timeout(pause, form.next_field())
            .await
            .map_err(|_| stalled(pause))?
            .map_err(multipart_error)?;
        let Some(field) = field else { break };
        match field.name().unwrap_or_default() {
            "file" => {
                if stored.is_some() {
                    return Err(ApiError::bad_request("more than one file field"));
                }
                // Fields sent before the file are checked before it is stored.
                if let (Some(b), Some(c)) = (&bu_id, &connector) {
                    submit::check_target(&state.etl, b, c)?;
                }
                stored = Some(store_file(&state, field, max, pause, guard).await?);
            }
            "bu_id" => bu_id = Some(text_field(field, pause).await?),
            "connector" => connector = Some(text_field(field, pause).await?),
            "idempotency_key" => idempotency_key = Some(text_field(field, pause).await?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown field {:?}; expected file, bu_id, connector, idempotency_key",
                    other.escape_debug().to_string()
                )));
            }
        }
    }
    let bu_id = bu_id.ok_or_else(|| ApiError::bad_request("missing field bu_id"))?;
    let connector = connector.ok_or_else(|| ApiError::bad_request("missing field connector"))?;
    let (bu_id, connector) = submit::check_target(&state.etl, &bu_id, &connector)?;
    let file = stored.ok_or_else(|| ApiError::bad_request("missing field file"))?;
    let submitted = submit::submit(
        &state.etl,
        actor,
        Submission {
            bu_id,
            connector,
            source_blob: file.key.clone(),
            file_name: file.file_name,
            idempotency_key: idempotency_key.filter(|k| !k.is_empty()),
            action: "upload",
            bytes: Some(file.size),
        },
    )
    .await;
    match submitted {
        // A new job points at the blob: it stays.
        Ok(enq) if enq.created => {
            guard.disarm();
            Ok(accepted(enq))
        }
        // The key named an existing job, which has its own copy: this one goes now.
        Ok(enq) => {
            guard.disarm();
            if let Err(e) = state.etl.blobs.delete(file.key.as_str()).await {
                tracing::warn!(key = %file.key, error = %e, "removing a duplicate upload failed");
            }
            Ok(accepted(enq))
        }
        Err(e @ SubmitError::Uncertain(_)) => {
            // The job may exist: keep its blob (an orphan is better than a job whose file
            // was deleted under it).
            guard.disarm();
            tracing::error!(key = %file.key, error = %e, "upload commit outcome unknown; blob kept");
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}
