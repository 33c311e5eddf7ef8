//! `POST /v1/connectors/{name}/preview` and `POST /v1/connectors/preview`: what an upload of
//! a file would give with a connector — configured, or sent as TOML in the form (so a user
//! can iterate on a layout without restarts) — before any job exists. The file is staged in
//! the work directory, read by the extract child under the same limits and isolation as
//! extract, and removed; nothing is stored and no job is created.

use std::time::Duration;

use axum::extract::{Multipart, Path, State};
use axum::response::IntoResponse;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::error::ApiError;
use super::uploads::{multipart_error, next_chunk, read_field, stalled, text_field, too_large};
use crate::etl::child::ChildJob;
use crate::etl::connector::{Connector, ConnectorSpec};
use crate::etl::isolate::IsolateError;
use crate::etl::stages::extract::source_name;
use crate::etl::work_dir::WorkDir;

/// Previews running at once per process: each is a child process.
static RUNNING: Semaphore = Semaphore::const_new(2);

/// A staged preview file and its directory, removed when dropped.
pub async fn named(
    State(state): State<AppState>,
    Path(name): Path<String>,
    form: Multipart,
) -> Result<axum::response::Response, ApiError> {
    let configured = state
        .etl
        .connector(&name)
        .map_err(ApiError::not_found)?
        .clone();
    preview(state, Some(configured), form).await
}

pub async fn draft(
    State(state): State<AppState>,
    form: Multipart,
) -> Result<axum::response::Response, ApiError> {
    preview(state, None, form).await
}

/// A connector sent as TOML: checked like a configured one, but it may not name a command
/// (that would let an API client run programs on the worker).
fn draft_connector(name: &str, toml_text: &str) -> Result<Connector, ApiError> {
    let spec: ConnectorSpec = toml::from_str(toml_text)
        .map_err(|e| ApiError::unprocessable(format!("the connector TOML: {}", e.message())))?;
    if spec.extractor.is_some() {
        return Err(ApiError::unprocessable(
            "a connector sent for preview may not set `extractor` (a command runs only from the configuration); preview a configured command connector by name",
        ));
    }
    Connector::new(name, spec).map_err(|e| ApiError::unprocessable(e.to_string()))
}

async fn preview(
    state: AppState,
    configured: Option<Connector>,
    mut form: Multipart,
) -> Result<axum::response::Response, ApiError> {
    let max = state.etl.settings.max_upload_bytes;
    let pause = Duration::from_millis(state.settings.api.body_read_timeout_ms);
    let name = configured
        .as_ref()
        .map(|c| c.name.clone())
        .unwrap_or_else(|| "draft".into());
    let mut connector = configured;
    let mut bu_id = "preview".to_string();
    let mut staged: Option<(WorkDir, std::path::PathBuf)> = None;
    loop {
        let field = tokio::time::timeout(pause, form.next_field())
            .await
            .map_err(|_| stalled(pause))?
            .map_err(multipart_error)?;
        let Some(mut field) = field else { break };
        match field.name().unwrap_or_default() {
            "file" => {
                if staged.is_some() {
                    return Err(ApiError::bad_request("more than one file field"));
                }
                let original = field.file_name().unwrap_or("upload").to_string();
                let guard = WorkDir::create(
                    &state.etl.work_dir,
                    "preview-",
                    &uuid::Uuid::new_v4().simple().to_string(),
                )
                .map_err(|e| {
                    ApiError::unavailable("work_dir", "the work directory (etl.work_dir)", e)
                })?;
                let path = guard.path().join(source_name(&original));
                let mut file = tokio::fs::File::create(&path).await.map_err(|e| {
                    ApiError::unavailable("work_dir", "the work directory (etl.work_dir)", e)
                })?;
                let mut written = 0u64;
                while let Some(chunk) = next_chunk(&mut field, pause).await? {
                    written += chunk.len() as u64;
                    if written > max {
                        return Err(too_large(max));
                    }
                    file.write_all(&chunk).await.map_err(|e| {
                        ApiError::unavailable("work_dir", "the work directory (etl.work_dir)", e)
                    })?;
                }
                file.flush().await.map_err(|e| {
                    ApiError::unavailable("work_dir", "the work directory (etl.work_dir)", e)
                })?;
                staged = Some((guard, path));
            }
            "connector" => {
                let text = read_field(field, pause, 64 * 1024, true).await?;
                connector = Some(draft_connector(&name, &text)?);
            }
            "bu_id" => bu_id = text_field(field, pause).await?,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown field {:?}; expected file, connector (TOML), bu_id",
                    other.escape_debug().to_string()
                )));
            }
        }
    }
    let connector = connector
        .ok_or_else(|| ApiError::bad_request("missing field connector (the connector's TOML)"))?;
    let (dir, source) = staged.ok_or_else(|| ApiError::bad_request("missing field file"))?;
    let _slot = RUNNING
        .acquire()
        .await
        .map_err(|_| ApiError::unavailable("preview", "previews", "closed"))?;
    let job = ChildJob {
        connector_name: connector.name.clone(),
        connector: connector.spec.clone(),
        bu_id,
        source,
        out_dir: dir.path().to_path_buf(),
        max_inflated_bytes: state.etl.settings.max_inflated_bytes,
        preview: true,
    };
    // Dropping this future (the client went away) kills the child (isolate's guard).
    let preview = state
        .etl
        .isolation
        .preview(&job, &CancellationToken::new())
        .await
        .map_err(|e| match e {
            IsolateError::Fatal(m) => ApiError::unprocessable(m),
            IsolateError::Retryable(m) => ApiError::unavailable("preview", "the preview", m),
            IsolateError::Cancelled => ApiError::unavailable("preview", "the preview", "cancelled"),
        })?;
    drop(dir);
    Ok(axum::Json(preview).into_response())
}
