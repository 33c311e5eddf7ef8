//! Health, readiness, metrics and the OpenAPI document.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::lifecycle::Mode;
use crate::metrics::{ModeLabels, StateLabels};
use crate::queue::JobState;

/// `/readyz` answers within a probe's usual timeout even when PostgreSQL hangs.
const READY_PING_TIMEOUT: Duration = Duration::from_secs(2);
/// `/metrics` scrapes get the queue gauges only when the counts come back this fast.
const METRICS_QUERY_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Ready only while Normal and PostgreSQL answers: load balancers stop routing to a draining
/// process (uploads still go to the others, and wait in the queue). Not ready is an expected
/// state, so it is not logged as an error (probes would flood the log).
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let status = state.lifecycle.status();
    if status.mode != Mode::Normal {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            format!("process is {}", status.mode.as_str()),
        )
        .into_response();
    }
    let ping = tokio::time::timeout(READY_PING_TIMEOUT, state.jobs.ping()).await;
    if !matches!(ping, Ok(Ok(_))) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "PostgreSQL is unreachable",
        )
        .into_response();
    }
    axum::Json(json!({"status": "ready", "mode": status.mode})).into_response()
}

/// Prometheus metrics. The process's own metrics are always answered; the queue-depth gauges
/// come from PostgreSQL and are left as last read when it does not answer within a second
/// (a scrape during an outage is when the process metrics matter most).
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let m = &state.metrics;
    let status = state.lifecycle.status();
    m.in_flight.set(status.in_flight as i64);
    m.writing.set(status.writing as i64);
    for mode in [Mode::Normal, Mode::PreparingForStop, Mode::SafeToStop] {
        m.mode
            .get_or_create(&ModeLabels {
                mode: mode.as_str().into(),
            })
            .set(i64::from(mode == status.mode));
    }
    let read = async {
        let counts = state.jobs.counts().await?;
        let dead = state.jobs.open_dead_letter_count().await?;
        Ok::<_, crate::queue::QueueError>((counts, dead))
    };
    match tokio::time::timeout(METRICS_QUERY_TIMEOUT, read).await {
        Ok(Ok((counts, dead))) => {
            for st in JobState::ALL {
                let n = counts
                    .iter()
                    .find(|c| c.0 == st.as_str())
                    .map_or(0, |c| c.1);
                m.queue_depth
                    .get_or_create(&StateLabels {
                        state: st.as_str().into(),
                    })
                    .set(n);
            }
            m.dead_letters_open.set(dead);
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "metrics: queue depth not read"),
        Err(_) => tracing::debug!("metrics: queue depth not read in time"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../../docs/openapi.json"),
    )
}
