//! This process's mode (`/v1/lifecycle`) and the fleet's (`/v1/fleet`).

use axum::extract::State;
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
