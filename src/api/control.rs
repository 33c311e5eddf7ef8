//! Lifecycle, fleet, health, metrics and the OpenAPI document.

use std::fmt::Write;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::fleet::{self, Command};
use crate::lifecycle::{Mode, Status};

fn lifecycle_body(state: &AppState, status: Status) -> Value {
    json!({
        "mode": status.mode,
        "in_flight": status.in_flight,
        "worker_id": state.identity.id,
        "version": state.identity.version,
    })
}

pub async fn lifecycle(State(state): State<AppState>) -> impl IntoResponse {
    axum::Json(lifecycle_body(&state, state.lifecycle.status()))
}

pub async fn lifecycle_drain(State(state): State<AppState>) -> impl IntoResponse {
    let status = state.lifecycle.drain();
    axum::Json(lifecycle_body(&state, status))
}

pub async fn lifecycle_resume(State(state): State<AppState>) -> impl IntoResponse {
    let status = state.lifecycle.resume();
    axum::Json(lifecycle_body(&state, status))
}

fn ttl(state: &AppState) -> Duration {
    Duration::from_millis(state.settings.worker.worker_ttl_ms)
}

pub async fn fleet(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(fleet::status(&state.pool, ttl(&state)).await?))
}

async fn fleet_command(state: &AppState, command: Command) -> Result<Value, ApiError> {
    let addressed = fleet::command(&state.pool, command, ttl(state)).await?;
    let status = fleet::status(&state.pool, ttl(state)).await?;
    Ok(json!({"addressed": addressed, "mode": status.mode, "workers": status.workers}))
}

pub async fn fleet_drain(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(fleet_command(&state, Command::Drain).await?),
    ))
}

pub async fn fleet_resume(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(fleet_command(&state, Command::Resume).await?),
    ))
}

pub async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Ready only while Normal and PostgreSQL answers: load balancers stop routing to a draining
/// process (uploads still go to the others, and wait in the queue).
pub async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let status = state.lifecycle.status();
    if status.mode != Mode::Normal {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            format!("process is {}", status.mode.as_str()),
        ));
    }
    let ping = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&state.pool),
    )
    .await;
    if !matches!(ping, Ok(Ok(_))) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "PostgreSQL is unreachable",
        ));
    }
    Ok(axum::Json(json!({"status": "ready", "mode": status.mode})))
}

pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mut out = String::new();
    state.metrics.render(&mut out);
    let status = state.lifecycle.status();
    let _ = writeln!(
        out,
        "# HELP etlq_in_flight Jobs held by this process.\n# TYPE etlq_in_flight gauge\netlq_in_flight {}",
        status.in_flight
    );
    let _ = writeln!(
        out,
        "# HELP etlq_mode This process's mode (1 for the current one).\n# TYPE etlq_mode gauge"
    );
    for m in [Mode::Normal, Mode::PreparingForStop, Mode::SafeToStop] {
        let _ = writeln!(
            out,
            "etlq_mode{{mode=\"{}\"}} {}",
            m.as_str(),
            u8::from(m == status.mode)
        );
    }
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, count(*) FROM jobs WHERE state IN ('queued', 'running', 'retrying') GROUP BY state",
    )
    .fetch_all(&state.pool)
    .await?;
    let _ = writeln!(
        out,
        "# HELP etlq_jobs Unfinished jobs by state.\n# TYPE etlq_jobs gauge"
    );
    for st in ["queued", "running", "retrying"] {
        let n = counts.iter().find(|c| c.0 == st).map_or(0, |c| c.1);
        let _ = writeln!(out, "etlq_jobs{{state=\"{st}\"}} {n}");
    }
    let dead: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE retried_at IS NULL")
            .fetch_one(&state.pool)
            .await?;
    let _ = writeln!(
        out,
        "# HELP etlq_dead_letters Dead letters not yet retried.\n# TYPE etlq_dead_letters gauge\netlq_dead_letters {dead}"
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../../docs/openapi.json"),
    )
}
