//! Bearer-token auth for mutating endpoints, active when `api.tokens` is non-empty. The
//! caller becomes the request's [`Actor`] (the token's name, or `anonymous`).

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::queue::Actor;

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The credentials of an `Authorization` header: the scheme is case-insensitive (RFC 9110).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// The token's name when `header` carries a configured token.
pub fn token_name<'a>(state: &'a AppState, header: Option<&str>) -> Option<&'a str> {
    let presented = header.and_then(bearer)?;
    state
        .settings
        .api
        .tokens
        .iter()
        .find(|(_, t)| constant_time_eq(t.as_bytes(), presented.as_bytes()))
        .map(|(n, _)| n.as_str())
}

fn api_actor(state: &AppState, id: &str) -> Actor {
    Actor::new(id, format!("etlq-api/{}", state.identity.version))
}

pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let tokens = &state.settings.api.tokens;
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    // The Event Grid webhook authenticates itself (the source's `?key=` secret, or a token):
    // Event Grid cannot send a bearer token.
    let webhook = is_webhook(req.uri().path());
    if tokens.is_empty() || read_only || webhook {
        req.extensions_mut().insert(api_actor(&state, "anonymous"));
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if header.and_then(bearer).is_none() {
        let mut resp = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint requires `Authorization: Bearer <token>`",
        )
        .into_response();
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
        return resp;
    }
    match token_name(&state, header).map(str::to_owned) {
        Some(name) => {
            req.extensions_mut().insert(api_actor(&state, &name));
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

/// `/v1/sources/{name}/events`.
fn is_webhook(path: &str) -> bool {
    path.strip_prefix("/v1/sources/")
        .and_then(|rest| rest.strip_suffix("/events"))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::{bearer, is_webhook};

    #[test]
    fn only_the_webhook_route_authenticates_itself() {
        assert!(is_webhook("/v1/sources/gl/events"));
        assert!(!is_webhook("/v1/sources/gl/tick"));
        assert!(!is_webhook("/v1/sources/a/b/events"));
        assert!(!is_webhook("/v1/sources//events"));
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
