//! Sources as configuration writes them (`[sources.NAME]`): plain data, checked by
//! `sources::check_all` into a `Source`.

use serde::{Deserialize, Serialize};

/// `[sources.NAME]` as written in config; checked into a `sources::Source`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// `watch` (list `prefix` on a schedule) or `eventgrid` (`POST /v1/sources/NAME/events`).
    pub kind: SourceKind,
    /// Where in the blob store the files land, e.g. `incoming/`.
    pub prefix: String,
    /// Template naming the bu_id: `incoming/{bu_id}/{file}`; `*` is any one segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A fixed bu_id instead of `{bu_id}` in `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bu_id: Option<String>,
    pub connector: String,
    /// Globs on the file name (case-insensitive); default: the workbook extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<String>>,
    /// Watch: cron, 5 fields or 6 (seconds first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Watch: a period instead of `schedule` ("30s", "5m").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// IANA zone of `schedule` and `reconcile` (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Event Grid: also list the prefix on this cron schedule (events past Event Grid's retry
    /// window are dropped by Azure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<String>,
    /// Skip blobs modified more recently than this (still being written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_age_ms: Option<u64>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Event Grid: the `?key=` secret. Only from the environment:
    /// `ETLQ__SOURCES__NAME__SECRET`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret: String,
    /// Event Grid: the storage container events must name (default: the one in `blob.url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Watch,
    Eventgrid,
}
