//! JSON errors: `{"error": {"code", "message"}}` with a fitting status (SPEC §5).
//!
//! Client mistakes name the field; server-side failures never show database text, file
//! paths or other internals: the response carries an error id, and the details go to the log
//! under that id.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::etl::submit::SubmitError;
use crate::queue::QueueError;
use crate::storage::StorageError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A failure on our side: logged in full under a fresh error id, answered with the id only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        let id = error_id();
        tracing::error!(error_id = %id, error = %detail, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error (error id {id}); the details are in the server log"),
        )
    }

    /// A dependency is down: 503 with a code the client can act on, details logged.
    pub fn unavailable(code: &'static str, what: &str, detail: impl std::fmt::Display) -> Self {
        let id = error_id();
        tracing::warn!(error_id = %id, error = %detail, code, "dependency unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            format!("{what} is unavailable; retry shortly (error id {id})"),
        )
    }
}

fn error_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::NotFound(_) => ApiError::not_found(e.to_string()),
            QueueError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            QueueError::Invalid(m) => ApiError::unprocessable(m),
            QueueError::Db(_) if e.is_unavailable() => {
                ApiError::unavailable("database_unavailable", "PostgreSQL", e)
            }
            QueueError::Db(_) => ApiError::internal(e),
        }
    }
}

impl From<crate::fleet::FleetError> for ApiError {
    fn from(e: crate::fleet::FleetError) -> Self {
        if e.is_unavailable() {
            ApiError::unavailable("database_unavailable", "PostgreSQL", e)
        } else {
            ApiError::internal(e)
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound(_) => ApiError::not_found(e.to_string()),
            other => ApiError::unavailable("blob_store_unavailable", "the blob store", other),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let unprocessable =
            |code, m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, m);
        match e {
            SubmitError::InvalidBuId(m) => unprocessable("invalid_bu_id", m),
            SubmitError::UnknownConnector(m) => unprocessable("unknown_connector", m),
            SubmitError::InvalidSourceBlob(m) => ApiError::bad_request(m),
            SubmitError::SourceNotFound(_) => unprocessable("source_blob_not_found", e.to_string()),
            SubmitError::NotAWorkbook(m) => unprocessable("not_a_workbook", m),
            SubmitError::BlobStore(s) => s.into(),
            SubmitError::Queue(q) => q.into(),
            SubmitError::Database(_) | SubmitError::Uncertain(_) => {
                ApiError::unavailable("database_unavailable", "PostgreSQL", e)
            }
        }
    }
}
