//! Who may call what: every route the routers register, with the role it needs. The auth
//! layer looks the matched route up here, and a route missing from this table is refused
//! (tidy holds it equal to the routers, and the role-matrix test calls every entry).

use crate::configuration::TokenRole;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health, readiness, metrics, the OpenAPI document and the console's static files.
    Open,
    /// Needs a token with this role once `api.tokens` is set.
    Role(TokenRole),
    /// The Event Grid webhook checks the source's own secret (Event Grid sends no bearer).
    SourceSecret,
}

const READ: Access = Access::Role(TokenRole::Read);
const OPERATE: Access = Access::Role(TokenRole::Operate);
const DEPLOY: Access = Access::Role(TokenRole::Deploy);

/// (method, route as registered, access). `HEAD` is looked up as `GET`.
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/healthz", Access::Open),
    ("GET", "/readyz", Access::Open),
    ("GET", "/metrics", Access::Open),
    ("GET", "/openapi.json", Access::Open),
    ("GET", "/", Access::Open),
    ("GET", "/console/{version}/{file}", Access::Open),
    ("GET", "/favicon.ico", Access::Open),
    ("GET", "/v1/lifecycle", READ),
    ("POST", "/v1/lifecycle/drain", DEPLOY),
    ("POST", "/v1/lifecycle/resume", DEPLOY),
    ("GET", "/v1/fleet", READ),
    ("POST", "/v1/fleet/drain", DEPLOY),
    ("POST", "/v1/fleet/resume", DEPLOY),
    ("POST", "/v1/fleet/workers/{id}/drain", DEPLOY),
    ("POST", "/v1/fleet/workers/{id}/resume", DEPLOY),
    ("POST", "/v1/jobs", OPERATE),
    ("GET", "/v1/jobs", READ),
    ("GET", "/v1/jobs/{id}", READ),
    ("POST", "/v1/jobs/{id}/cancel", OPERATE),
    ("GET", "/v1/jobs/{id}/rejected", READ),
    ("POST", "/v1/jobs/{id}/retry", OPERATE),
    ("GET", "/v1/jobs/{id}/artifacts/{name}", READ),
    ("GET", "/v1/jobs/count", READ),
    ("POST", "/v1/jobs/cancel", OPERATE),
    ("POST", "/v1/jobs/retry", OPERATE),
    ("GET", "/v1/stats", READ),
    ("GET", "/v1/connectors", READ),
    ("GET", "/v1/dead-letters", READ),
    ("POST", "/v1/dead-letters/retry", OPERATE),
    ("POST", "/v1/dead-letters/{id}/retry", OPERATE),
    ("GET", "/v1/datasets", READ),
    ("GET", "/v1/datasets/{bu_id}/{connector}", READ),
    ("GET", "/v1/datasets/{bu_id}/{connector}/diff", READ),
    ("POST", "/v1/datasets/{bu_id}/{connector}/rollback", OPERATE),
    ("GET", "/v1/sources", READ),
    ("GET", "/v1/sources/{name}", READ),
    ("GET", "/v1/sources/{name}/ledger", READ),
    ("GET", "/v1/sources/{name}/runs", READ),
    ("POST", "/v1/sources/{name}/tick", OPERATE),
    ("POST", "/v1/sources/{name}/pause", OPERATE),
    ("POST", "/v1/sources/{name}/resume", OPERATE),
    ("POST", "/v1/sources/{name}/events", Access::SourceSecret),
    ("OPTIONS", "/v1/sources/{name}/events", Access::SourceSecret),
    ("POST", "/v1/uploads", OPERATE),
    ("POST", "/v1/connectors/preview", OPERATE),
    ("POST", "/v1/connectors/{name}/preview", OPERATE),
];

/// The access `method` on the route `matched` needs; `None` for a route nobody listed.
pub fn required(method: &str, matched: &str) -> Option<Access> {
    let method = if method == "HEAD" { "GET" } else { method };
    ROUTES
        .iter()
        .find(|(m, p, _)| *m == method && *p == matched)
        .map(|(_, _, a)| *a)
}
