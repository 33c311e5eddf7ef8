//! The operator console (`/`): a static page and its script and style, embedded in the
//! binary and served under a content hash (`/console/{hash}/…`, cached for good), so a deploy
//! never mixes one version's page with another's script. The page reads and acts through the
//! REST API with the operator's bearer token; it keeps no state on the server and sets no
//! cookie (ADR 0011).

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::ApiError;
use super::{AppState, Surface};

const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/app.js");
const STYLE: &str = include_str!("../../console/app.css");

/// FNV-1a over the assets: changes whenever one of them does.
const fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
        i += 1;
    }
    h
}
const VERSION: u64 = fnv1a(
    fnv1a(
        fnv1a(0xcbf2_9ce4_8422_2325, INDEX.as_bytes()),
        SCRIPT.as_bytes(),
    ),
    STYLE.as_bytes(),
);

/// Only our own script and style run; nothing is framed, posted cross-site or loaded from
/// elsewhere. Everything user-supplied is put in the page as text, and this is the backstop.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

pub fn routes(surface: Surface) -> Router<AppState> {
    if surface != Surface::Full {
        return Router::new();
    }
    Router::new()
        .route("/", get(index))
        .route("/console/{version}/{file}", get(asset))
        // Browsers ask for it on their own; a 404 is an error in the console's log.
        .route("/favicon.ico", get(favicon))
}

const FAVICON: &str = include_str!("../../console/favicon.svg");

async fn favicon() -> Response {
    with_headers(
        ([(header::CONTENT_TYPE, "image/svg+xml")], FAVICON).into_response(),
        "public, max-age=86400",
    )
}

fn version() -> String {
    format!("{VERSION:016x}")
}

fn with_headers(mut resp: Response, cache: &'static str) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

async fn index() -> Response {
    let page = INDEX.replace("{{VERSION}}", &version());
    with_headers(
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response(),
        "no-cache",
    )
}

async fn asset(Path((v, file)): Path<(String, String)>) -> Response {
    let (body, content_type) = match file.as_str() {
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return ApiError::not_found("no such console asset").into_response(),
    };
    if v != version() {
        // A page from another version asked: it must reload, not run a mismatched script.
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "stale_console",
            "the console was upgraded; reload the page",
        )
        .into_response();
    }
    with_headers(
        ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        "public, max-age=31536000, immutable",
    )
}
