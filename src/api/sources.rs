//! `/v1/sources`: the configured sources with their schedules and last runs, each source's
//! ingest ledger and run history, ticks asked for by hand, pause and resume — and the Azure
//! Event Grid webhook (`POST /v1/sources/{name}/events`, with both schemas' handshakes).

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth;
use super::error::ApiError;
use super::extractors::Query;
use super::jobs::{parse_cursor, parse_limit};
use crate::queue::Actor;
use crate::sources::eventgrid::{self, BLOB_CREATED, Event, FINISHING_APIS};
use crate::sources::ingest::{Candidate, Origin};
use crate::sources::{LedgerFilter, RunCounts, Skip, Source, SourceKind, SourceRow, StoreError};

/// Largest Event Grid delivery accepted (its batches are at most 1 MB; CloudEvents batches
/// of 5,000 small events stay well inside this).
pub const EVENTS_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// Runs shown with one source.
const RECENT_RUNS: i64 = 20;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if crate::db::is_unavailable(&e) {
            ApiError::unavailable("database_unavailable", "PostgreSQL", e)
        } else {
            ApiError::internal(e)
        }
    }
}

/// A page read with `limit + 1` rows, newest first: the rows shown and, when there were
/// more, the cursor (the last row's id) of the next page.
fn page<T>(mut rows: Vec<T>, limit: i64, id: impl Fn(&T) -> i64) -> (Vec<T>, Option<String>) {
    if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        let next = rows.last().map(|r| id(r).to_string());
        (rows, next)
    } else {
        (rows, None)
    }
}

fn source<'a>(state: &'a AppState, name: &str) -> Result<&'a Source, ApiError> {
    state.sources.get(name).ok_or_else(|| {
        ApiError::not_found(format!(
            "no source named {:?} (configured: {})",
            name.escape_debug().to_string(),
            state.sources.names().join(", ")
        ))
    })
}

/// A source as configured, with its schedule row (absent until a worker or an action wrote
/// it).
fn view(s: &Source, row: Option<&SourceRow>) -> Value {
    let (schedule, timezone) = match &s.listing {
        Some(crate::sources::Schedule::Cron { text, tz, .. }) => (
            Some(
                text.rsplit_once(" (")
                    .map_or(text.as_str(), |t| t.0)
                    .to_string(),
            ),
            Some(tz.name().to_string()),
        ),
        Some(crate::sources::Schedule::Every { text, .. }) => (Some(text.clone()), None),
        None => (None, None),
    };
    let running = row.and_then(|r| r.lease_owner.as_ref()).is_some();
    json!({
        "name": s.name,
        "kind": s.kind.as_str(),
        "prefix": s.matcher.prefix(),
        "connector": s.connector,
        "enabled": s.enabled,
        "schedule": schedule,
        "timezone": timezone,
        "min_age_ms": s.min_age.as_millis() as u64,
        "paused": row.is_some_and(|r| r.paused),
        "paused_by": row.and_then(|r| r.paused_by.clone()),
        "next_tick": row.and_then(|r| r.next_slot),
        "last_slot": row.and_then(|r| r.last_slot),
        "tick_requested_at": row.and_then(|r| r.requested_at),
        "listing_now": running,
        "listing_owner": row.and_then(|r| r.lease_owner.clone()),
        "ledger_rows": row.map_or(0, |r| r.ledger_rows),
        "last_run": row.and_then(|r| r.last_run.as_ref()),
    })
}

pub async fn list(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let names = state.sources.names();
    let rows = state.sources.store().sources(&names).await?;
    let out: Vec<Value> = state
        .sources
        .sources
        .values()
        .map(|s| view(s, rows.iter().find(|r| r.source == s.name)))
        .collect();
    Ok(axum::Json(json!({ "sources": out })))
}

pub async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let s = source(&state, &name)?;
    let rows = state
        .sources
        .store()
        .sources(std::slice::from_ref(&name))
        .await?;
    let runs = state.sources.store().runs(&name, None, RECENT_RUNS).await?;
    let mut v = view(s, rows.first());
    v["runs"] = json!(runs);
    Ok(axum::Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerQuery {
    found_by: Option<String>,
    bu_id: Option<String>,
    key_prefix: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

pub async fn ledger(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<LedgerQuery>,
) -> Result<impl IntoResponse, ApiError> {
    source(&state, &name)?;
    if let Some(f) = &q.found_by
        && !matches!(f.as_str(), "watch" | "eventgrid" | "reconcile")
    {
        return Err(ApiError::bad_request(format!(
            "found_by {:?}: expected watch, eventgrid or reconcile",
            f.escape_debug().to_string()
        )));
    }
    crate::queue::check_filter_text(&[("bu_id", &q.bu_id), ("key_prefix", &q.key_prefix)])?;
    let limit = parse_limit(q.limit)?;
    let filter = LedgerFilter {
        found_by: q.found_by,
        bu_id: q.bu_id,
        key_prefix: q.key_prefix,
        before: parse_cursor(q.cursor.as_deref())?,
        limit: limit + 1,
    };
    let rows = state.sources.store().ledger(&name, &filter).await?;
    let (rows, next) = page(rows, limit, |r| r.id);
    Ok(axum::Json(json!({"ledger": rows, "next_cursor": next})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

pub async fn runs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<RunsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    source(&state, &name)?;
    let limit = parse_limit(q.limit)?;
    let rows = state
        .sources
        .store()
        .runs(&name, parse_cursor(q.cursor.as_deref())?, limit + 1)
        .await?;
    let (rows, next) = page(rows, limit, |r| r.id);
    Ok(axum::Json(json!({"runs": rows, "next_cursor": next})))
}

/// Asks for a listing now. It runs in whichever worker process takes it first, through the
/// slot, so two clicks list once.
pub async fn tick(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let s = source(&state, &name)?;
    if !s.enabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "source_disabled",
            format!("source {name} is disabled in config (enabled = false)"),
        ));
    }
    let store = state.sources.store();
    state.sources.ensure_row(s).await?;
    if store.is_paused(&name).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "source_paused",
            format!("source {name} is paused; resume it first"),
        ));
    }
    let after = store.latest_run_id(&name).await?;
    let at = store.request_tick(&name, &actor.id).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"source": name, "requested_at": at, "after_run_id": after})),
    ))
}

pub async fn pause(
    state: State<AppState>,
    actor: Extension<Actor>,
    name: Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    set_paused(state, actor, name, true).await
}

pub async fn resume(
    state: State<AppState>,
    actor: Extension<Actor>,
    name: Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    set_paused(state, actor, name, false).await
}

async fn set_paused(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    paused: bool,
) -> Result<impl IntoResponse, ApiError> {
    let s = source(&state, &name)?;
    state.sources.ensure_row(s).await?;
    state
        .sources
        .store()
        .set_paused(&name, paused, &actor.id)
        .await?;
    let rows = state
        .sources
        .store()
        .sources(std::slice::from_ref(&name))
        .await?;
    Ok(axum::Json(view(s, rows.first())))
}

/// The Event Grid source named in the path, when the request carries its `?key=` secret or
/// an API token. 404 for another kind, 401 otherwise — before anything is read or recorded.
fn webhook_source<'a>(
    state: &'a AppState,
    name: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<&'a Source, ApiError> {
    let s = source(state, name)?;
    if s.kind != SourceKind::Eventgrid {
        return Err(ApiError::not_found(format!(
            "source {name} is a {} source; events go to eventgrid sources",
            s.kind.as_str()
        )));
    }
    let key = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "key")
            .map(|(_, v)| v.into_owned())
    });
    let by_key = match (&s.secret, &key) {
        (Some(secret), Some(k)) => auth::constant_time_eq(secret.as_bytes(), k.as_bytes()),
        _ => false,
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let operator = auth::token_of(state, bearer)
        .is_some_and(|(_, t)| t.grants(crate::configuration::TokenRole::Operate));
    if by_key || operator {
        Ok(s)
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint needs the source's secret as ?key=… (or an API bearer token with the operate role)",
        ))
    }
}

/// The CloudEvents abuse-protection handshake: `OPTIONS` with `WebHook-Request-Origin`.
pub async fn handshake(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    webhook_source(&state, &name, query.as_deref(), &headers)?;
    let origin = headers
        .get("webhook-request-origin")
        .cloned()
        .ok_or_else(|| ApiError::bad_request("expected a WebHook-Request-Origin header"))?;
    state
        .metrics
        .source_event(&name, "cloudevents.handshake", "validated", 1);
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    h.insert("webhook-allowed-origin", origin);
    h.insert("webhook-allowed-rate", HeaderValue::from_static("*"));
    h.insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
    Ok(resp)
}

/// A delivery: validation answered at once; BlobCreated events checked, then their ledger
/// rows and jobs written in one transaction. Nothing else happens here (no blob is read),
/// so a batch of 5,000 answers in well under Event Grid's 30 s.
pub async fn events(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let s = webhook_source(&state, &name, query.as_deref(), &headers)?.clone();
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                r.status(),
                "payload_too_large",
                format!("a delivery is at most {EVENTS_BODY_LIMIT} bytes"),
            )
        } else {
            ApiError::new(r.status(), "bad_request", r.body_text())
        }
    })?;
    let events = eventgrid::parse(&body).map_err(|e| match e {
        eventgrid::ParseError::Json(m) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not JSON: {m}"),
        ),
        eventgrid::ParseError::Shape(m) => ApiError::bad_request(m),
    })?;
    if let Some(code) = events.iter().find_map(|e| match e {
        Event::Validation { code } => Some(code.clone()),
        _ => None,
    }) {
        state
            .metrics
            .source_event(&name, eventgrid::VALIDATION_EVENT, "validated", 1);
        tracing::info!(source = %name, "answered an Event Grid subscription validation");
        return Ok(axum::Json(json!({ "validationResponse": code })).into_response());
    }
    // Paused or disabled: refuse with 503 so Event Grid redelivers later (within its retry
    // window); nothing is lost meanwhile.
    let paused = !s.enabled || state.sources.store().is_paused(&name).await?;
    if paused {
        let mut resp = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "source_paused",
            format!("source {name} is paused or disabled; deliver again later"),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return Ok(resp);
    }
    let mut counts = RunCounts {
        listed: events.len() as u64,
        ..Default::default()
    };
    let mut ignored_types: std::collections::BTreeMap<String, u64> = Default::default();
    let mut cands = Vec::new();
    for e in events {
        match e {
            Event::Validation { .. } => {}
            Event::Other { event_type } => {
                counts.skip(Skip::OtherEvent.as_str(), &event_type);
                *ignored_types.entry(event_type).or_default() += 1;
            }
            Event::BlobCreated(b) => match blob_candidate(&s, b) {
                Ok(c) => cands.push(c),
                Err((skip, what)) => {
                    counts.skip(skip.as_str(), &what);
                    *ignored_types.entry(BLOB_CREATED.to_string()).or_default() += 1;
                }
            },
        }
    }
    let offered = cands.len() as u64;
    state
        .sources
        .ingest
        .record(&s, Origin::Delivery, cands, &mut counts)
        .await
        .map_err(|e| {
            if e.is_unavailable() {
                ApiError::unavailable("database_unavailable", "PostgreSQL", e)
            } else {
                ApiError::internal(e)
            }
        })?;
    let m = &state.metrics;
    m.source_event(&name, BLOB_CREATED, "new", counts.new);
    m.source_event(&name, BLOB_CREATED, "duplicate", offered - counts.new);
    for (ty, n) in &ignored_types {
        m.source_event(&name, ty, "ignored", *n);
    }
    Ok(axum::Json(json!({
        "received": counts.listed,
        "new": counts.new,
        "duplicate": counts.duplicate,
        "ignored": counts.skipped,
        "reasons": counts.reasons,
    }))
    .into_response())
}

/// A BlobCreated event as a candidate, or why it is ignored (with what to show for it).
fn blob_candidate(s: &Source, b: eventgrid::BlobCreated) -> Result<Candidate, (Skip, String)> {
    let what = b.blob.clone().unwrap_or_else(|| b.id.clone());
    if !b
        .api
        .as_deref()
        .is_some_and(|a| FINISHING_APIS.contains(&a))
    {
        return Err((
            Skip::OtherEvent,
            format!("{what} (api {:?})", b.api.unwrap_or_default()),
        ));
    }
    if b.content_length == Some(0) {
        return Err((Skip::Empty, what));
    }
    if b.container.is_none() || b.container != s.container {
        return Err((
            Skip::OtherContainer,
            format!("{}/{what}", b.container.unwrap_or_default()),
        ));
    }
    let blob = b.blob.ok_or((Skip::InvalidKey, what.clone()))?;
    // Keys in the store are relative to its own prefix inside the container.
    let key = blob
        .strip_prefix(s.store_prefix.as_str())
        .ok_or((Skip::OutsidePrefix, what.clone()))?;
    let (key, bu_id) = s.matcher.take(key).map_err(|skip| (skip, what.clone()))?;
    let etag = b
        .etag
        .filter(|e| !e.is_empty())
        .ok_or((Skip::NoEtag, what))?;
    Ok(Candidate {
        key,
        bu_id,
        etag,
        size: b.content_length.unwrap_or(-1),
        last_modified: b.event_time,
        event_id: Some(b.id),
    })
}
