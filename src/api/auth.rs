//! Bearer-token auth with roles (`api.tokens`, `access.rs`), active when any token is set.
//! The caller becomes the request's [`Actor`] (the token's name and the role it used, or
//! `anonymous`).

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::access::{self, Access};
use super::error::ApiError;
use crate::configuration::{ApiToken, TokenRole};
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

/// The configured token `header` carries, with its name.
pub fn token_of<'a>(state: &'a AppState, header: Option<&str>) -> Option<(&'a str, &'a ApiToken)> {
    let presented = header.and_then(bearer)?;
    state
        .settings
        .api
        .tokens
        .iter()
        .find(|(_, t)| constant_time_eq(t.secret().as_bytes(), presented.as_bytes()))
        .map(|(n, t)| (n.as_str(), t))
}

/// The caller as events and the audit log record it: the token's name, and in the source the
/// role it acted with.
fn api_actor(state: &AppState, id: &str, role: Option<TokenRole>) -> Actor {
    let source = format!("etlq-api/{}", state.identity.version);
    match role {
        Some(r) => Actor::new(id, format!("{source} role={}", r.as_str())),
        None => Actor::new(id, source),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
    resp
}

/// Runs after routing (a route layer), so it knows the matched route and looks up the role it
/// needs in [`access::ROUTES`]. Tokens off (a loopback listener, or `api.anonymous` on purpose):
/// everything is open. Tokens on: every `/v1` route needs a token holding its role — reads too,
/// unless `api.anonymous_read`.
pub async fn authorize(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let api = &state.settings.api;
    let Some(access) = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|m| access::required(req.method().as_str(), m.as_str()))
    else {
        // Deny by default: a route someone forgot to list is not silently open.
        let route = req.uri().path().to_string();
        tracing::error!(%route, "a route with no entry in api::access::ROUTES was called");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this endpoint has no access rule",
        )
        .into_response();
    };
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let role = match access {
        Access::Open | Access::SourceSecret => None,
        Access::Role(_) if api.tokens.is_empty() => None,
        Access::Role(TokenRole::Read) if api.anonymous_read && header.is_none() => None,
        Access::Role(role) => Some(role),
    };
    let Some(role) = role else {
        req.extensions_mut()
            .insert(api_actor(&state, "anonymous", None));
        return next.run(req).await;
    };
    if header.as_deref().and_then(bearer).is_none() {
        return unauthorized(&format!(
            "this endpoint needs `Authorization: Bearer <token>` with the {} role",
            role.as_str()
        ));
    }
    match token_of(&state, header.as_deref()) {
        Some((name, token)) if token.grants(role) => {
            let actor = api_actor(&state, name, Some(role));
            req.extensions_mut().insert(actor);
            next.run(req).await
        }
        Some((name, _)) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "the token `{name}` does not have the {} role this endpoint needs",
                role.as_str()
            ),
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the bearer token is not valid",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn the_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
