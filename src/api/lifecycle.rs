//! This process's mode (`/v1/lifecycle`) and the fleet's (`/v1/fleet`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::fleet::Command;
use crate::lifecycle::Status;

fn body(state: &AppState, status: Status) -> Value {
    json!({
        "mode": status.mode,
        "in_flight": status.in_flight,
        "writing": status.writing,
        "worker_id": state.identity.id,
        "version": state.identity.version,
    })
}

pub async fn show(State(state): State<AppState>) -> impl IntoResponse {
    axum::Json(body(&state, state.lifecycle.status()))
}

pub async fn drain(State(state): State<AppState>) -> impl IntoResponse {
    let status = state.lifecycle.drain();
    axum::Json(body(&state, status))
}

pub async fn resume(State(state): State<AppState>) -> impl IntoResponse {
    let status = state.lifecycle.resume();
    axum::Json(body(&state, status))
}

pub async fn fleet(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let ttl = state.settings.worker.worker_ttl();
    Ok(axum::Json(state.fleet.status(ttl).await?))
}

async fn command(state: &AppState, command: Command) -> Result<Value, ApiError> {
    let ttl = state.settings.worker.worker_ttl();
    let addressed = state.fleet.command(command, ttl).await?;
    let status = state.fleet.status(ttl).await?;
    Ok(json!({"addressed": addressed, "mode": status.mode, "workers": status.workers}))
}

pub async fn fleet_drain(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(command(&state, Command::Drain).await?),
    ))
}

pub async fn fleet_resume(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(command(&state, Command::Resume).await?),
    ))
}

/// A worker id in the path: printable, at most 255 bytes.
fn worker_id(raw: &str) -> Result<&str, ApiError> {
    if raw.is_empty() || raw.len() > 255 || raw.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid worker id: 1 to 255 printable characters",
        ));
    }
    Ok(raw)
}

async fn command_one(state: &AppState, id: &str, command: Command) -> Result<Value, ApiError> {
    let ttl = state.settings.worker.worker_ttl();
    let id = worker_id(id)?;
    if !state.fleet.command_one(id, command, ttl).await? {
        return Err(ApiError::not_found(format!(
            "no live worker {:?} (see GET /v1/fleet)",
            id.escape_debug().to_string()
        )));
    }
    Ok(json!({"worker_id": id, "command": command.as_str()}))
}

/// `POST /v1/fleet/workers/{id}/drain`: one process of the fleet, by its worker id.
pub async fn worker_drain(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(command_one(&state, &id, Command::Drain).await?),
    ))
}

/// `POST /v1/fleet/workers/{id}/resume`.
pub async fn worker_resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(command_one(&state, &id, Command::Resume).await?),
    ))
}
