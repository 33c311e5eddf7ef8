//! Bearer-token auth for mutating endpoints, active when `api.tokens` is non-empty.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;

/// The name of the token that authorised a request (for audit), or "anonymous".
#[derive(Debug, Clone)]
pub struct Caller(pub String);

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let tokens = &state.settings.api.tokens;
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if tokens.is_empty() || read_only {
        req.extensions_mut().insert(Caller("anonymous".into()));
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(presented) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        let mut resp = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint requires `Authorization: Bearer <token>`",
        )
        .into_response();
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
        return resp;
    };
    let name = tokens
        .iter()
        .find(|(_, t)| constant_time_eq(t.as_bytes(), presented.trim().as_bytes()))
        .map(|(n, _)| n.clone());
    match name {
        Some(name) => {
            req.extensions_mut().insert(Caller(name));
            next.run(req).await
        }
        None => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the bearer token is not valid",
        )
        .into_response(),
    }
}
