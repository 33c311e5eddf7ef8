//! `[api]`: the listener, its bounds, and who may do what — bearer tokens with roles.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    pub host: String,
    pub port: u16,
    pub max_body_bytes: usize,
    /// Time for a client to send a request's headers; also how long a kept-alive connection
    /// may wait idle for its next request.
    pub header_read_timeout_ms: u64,
    /// Longest pause between two parts of a request body (an upload sending nothing for this
    /// long is cut off).
    pub body_read_timeout_ms: u64,
    /// Whole-request limit for everything but uploads.
    pub request_timeout_ms: u64,
    /// Whole-request limit for uploads.
    pub upload_timeout_ms: u64,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// After the worker has drained, how long open requests get to finish before the
    /// process closes their connections.
    pub shutdown_grace_ms: u64,
    /// Serve with no token on an address beyond loopback (on purpose: anyone who reaches it
    /// can read, upload and drain).
    pub anonymous: bool,
    /// With tokens set, let reads through without one (before issue 20, reads were open).
    pub anonymous_read: bool,
    #[serde(default)]
    pub tokens: BTreeMap<String, ApiToken>,
}

/// What a token may do. `operate` and `deploy` include `read`: acting on jobs or workers
/// needs seeing them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenRole {
    /// Every `GET` under `/v1`: jobs, records, rejected rows, artifacts, datasets, diffs.
    Read,
    /// Upload, preview, retry, cancel, roll back, tick or pause a source.
    Operate,
    /// Drain and resume processes and the fleet.
    Deploy,
}

impl TokenRole {
    pub const ALL: [TokenRole; 3] = [TokenRole::Read, TokenRole::Operate, TokenRole::Deploy];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Read => "read",
            TokenRole::Operate => "operate",
            TokenRole::Deploy => "deploy",
        }
    }
}

/// `api.tokens.NAME`: a bare token (every role, as before roles existed), or
/// `{ token = "…", roles = ["read"] }`. From the environment: `ETLQ__API__TOKENS__NAME=…`, or
/// `ETLQ__API__TOKENS__NAME__TOKEN=…` with `ETLQ__API__TOKENS__NAME__ROLES=read,operate`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ApiToken {
    Bare(String),
    WithRoles(TokenWithRoles),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenWithRoles {
    pub token: String,
    #[serde(deserialize_with = "roles")]
    pub roles: Vec<TokenRole>,
}

/// A list (`["read", "operate"]`) or, as an environment variable gives it, `read,operate`.
fn roles<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TokenRole>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<TokenRole>),
        Text(String),
    }
    match Form::deserialize(d)? {
        Form::List(l) => Ok(l),
        Form::Text(t) => t
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(|r| TokenRole::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(r)))
            .collect(),
    }
}

impl From<&str> for ApiToken {
    fn from(t: &str) -> Self {
        ApiToken::Bare(t.to_string())
    }
}

impl From<String> for ApiToken {
    fn from(t: String) -> Self {
        ApiToken::Bare(t)
    }
}

impl ApiToken {
    pub fn with_roles(token: &str, roles: &[TokenRole]) -> Self {
        ApiToken::WithRoles(TokenWithRoles {
            token: token.to_string(),
            roles: roles.to_vec(),
        })
    }

    pub fn secret(&self) -> &str {
        match self {
            ApiToken::Bare(t) => t,
            ApiToken::WithRoles(w) => &w.token,
        }
    }

    /// Whether this token may act as `role`.
    pub fn grants(&self, role: TokenRole) -> bool {
        match self {
            ApiToken::Bare(_) => true,
            ApiToken::WithRoles(w) => {
                w.roles.contains(&role) || (role == TokenRole::Read && !w.roles.is_empty())
            }
        }
    }

    pub(super) fn mask(&mut self) {
        let masked = "********".to_string();
        match self {
            ApiToken::Bare(t) => *t = masked,
            ApiToken::WithRoles(w) => w.token = masked,
        }
    }
}

/// Names a listener address that only this machine can reach.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl ApiSettings {
    pub(super) fn validate(&self) -> Result<(), String> {
        for (name, t) in &self.tokens {
            if t.secret().len() < 16 {
                return Err(format!(
                    "api.tokens.{name}: every token must be at least 16 characters"
                ));
            }
            if let ApiToken::WithRoles(w) = t
                && w.roles.is_empty()
            {
                return Err(format!(
                    "api.tokens.{name}.roles: give at least one of read, operate, deploy"
                ));
            }
        }
        Ok(())
    }

    /// Why this process must not listen as configured: beyond loopback with no token, anyone
    /// who reaches the port could read a company's ledger, upload and drain.
    pub fn exposure_problem(&self) -> Option<String> {
        if !self.tokens.is_empty() || self.anonymous || is_loopback(&self.host) {
            return None;
        }
        Some(format!(
            "api.host = {:?} listens beyond this machine, and no api.tokens is set: anyone who \
             reaches the port could read every record, upload and drain. Set a token (at least \
             16 characters) from the environment, e.g. ETLQ__API__TOKENS__OPS=$(openssl rand -hex 24), \
             or set api.anonymous = true (ETLQ__API__ANONYMOUS=true) to serve without one on purpose",
            self.host
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_are_local() {
        for h in ["127.0.0.1", "localhost", "::1", "[::1]", "127.1.2.3"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["0.0.0.0", "::", "10.0.0.5", "etlq.internal"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn roles_come_from_the_environment_as_a_list_or_as_text() {
        use crate::configuration::{Settings, test_files::env};
        let s = Settings::load_with_env(
            None,
            &env(&[
                ("ETLQ__API__TOKENS__VIEWER__TOKEN", "0123456789abcdef"),
                ("ETLQ__API__TOKENS__VIEWER__ROLES", "read"),
                ("ETLQ__API__TOKENS__OPS__TOKEN", "fedcba9876543210"),
                ("ETLQ__API__TOKENS__OPS__ROLES", "operate, deploy"),
                ("ETLQ__API__TOKENS__ALL", "0011223344556677"),
            ]),
        )
        .unwrap();
        let t = &s.api.tokens;
        assert_eq!(
            t["viewer"],
            ApiToken::with_roles("0123456789abcdef", &[TokenRole::Read])
        );
        assert_eq!(
            t["ops"],
            ApiToken::with_roles("fedcba9876543210", &[TokenRole::Operate, TokenRole::Deploy])
        );
        assert!(TokenRole::ALL.iter().all(|r| t["all"].grants(*r)));
        let bad = Settings::load_with_env(
            None,
            &env(&[
                ("ETLQ__API__TOKENS__X__TOKEN", "0123456789abcdef"),
                ("ETLQ__API__TOKENS__X__ROLES", "admin"),
            ]),
        );
        assert!(bad.is_err());
        let shown = s.to_masked_toml();
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
    }

    #[test]
    fn a_bare_token_has_every_role_and_operate_includes_read() {
        let bare = ApiToken::from("0123456789abcdef");
        assert!(TokenRole::ALL.iter().all(|r| bare.grants(*r)));
        let op = ApiToken::with_roles("0123456789abcdef", &[TokenRole::Operate]);
        assert!(op.grants(TokenRole::Read) && op.grants(TokenRole::Operate));
        assert!(!op.grants(TokenRole::Deploy));
        let read = ApiToken::with_roles("0123456789abcdef", &[TokenRole::Read]);
        assert!(!read.grants(TokenRole::Operate) && !read.grants(TokenRole::Deploy));
    }
}
