//! Sources: blobs that arrive by themselves become jobs, each exactly once (SPEC §2, ADR 0012).
//!
//! - `schedule.rs`: cron (5 or 6 fields, IANA zones, DST) and fixed periods, as pure functions
//!   of the database's clock;
//! - `matcher.rs`: prefix, `include` globs, the `path` template that names the bu_id;
//! - `eventgrid.rs`: Event Grid and CloudEvents deliveries, parsed;
//! - `store.rs`: `SourceStore`, owner of `source_schedules`, `source_runs`, `ingest_ledger`;
//! - `ingest.rs`: the one way a found blob becomes a job (ledger row + job + audit row in one
//!   transaction), shared by listings and Event Grid;
//! - `watcher.rs`: the service that takes due slots (compare-and-set, never in Normal mode
//!   only) and lists prefixes, page by page.

pub mod eventgrid;
pub mod ingest;
pub mod matcher;
pub mod schedule;
mod store;
mod watcher;

use std::collections::BTreeMap;
use std::time::Duration;

pub use matcher::{Matcher, Skip};
pub use schedule::Schedule;
pub use store::{
    Claim, LedgerEntry, LedgerFilter, NewLedgerRow, RunCounts, RunRow, SourceRow, SourceStore,
    StoreError, Trigger,
};
pub use watcher::{Watcher, WatcherConfig};

/// The extensions etlq reads: a source's `include` when it names none (a per-source
/// fallback, documented beside `[sources.inbox]` in config/default.toml).
pub const WORKBOOK_GLOBS: [&str; 7] = [
    "*.xlsx", "*.xlsm", "*.xls", "*.xlsb", "*.ods", "*.csv", "*.tsv",
];
/// A blob modified more recently than this may still be being written: a source's
/// `min_age_ms` when it sets none (documented in config/default.toml).
pub const MIN_AGE_WHEN_UNSET_MS: u64 = 10_000;
/// etlq's own areas of the blob store: a source may not list them.
pub const RESERVED_PREFIXES: [&str; 3] = ["uploads/", "runs/", "latest/"];

pub use crate::configuration::source::{SourceKind, SourceSpec};

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Watch => "watch",
            SourceKind::Eventgrid => "eventgrid",
        }
    }
}

/// A checked source.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
    pub matcher: Matcher,
    pub connector: String,
    /// When it lists its prefix: a watch source's schedule, an Event Grid source's
    /// `reconcile` (none: it lists only when asked).
    pub listing: Option<Schedule>,
    pub min_age: Duration,
    pub enabled: bool,
    pub secret: Option<String>,
    /// The container Event Grid events must name.
    pub container: Option<String>,
    /// The blob store's own prefix inside that container (`az://c/prefix`): stripped from
    /// event keys.
    pub store_prefix: String,
}

impl Source {
    /// Where this source was found, for the ledger: a watch source's listing is `watch`, an
    /// Event Grid source's is `reconcile`.
    pub fn listing_found_by(&self) -> FoundBy {
        match self.kind {
            SourceKind::Watch => FoundBy::Watch,
            SourceKind::Eventgrid => FoundBy::Reconcile,
        }
    }
}

/// How a blob was found (`ingest_ledger.found_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundBy {
    Watch,
    Eventgrid,
    Reconcile,
}

impl FoundBy {
    pub fn as_str(self) -> &'static str {
        match self {
            FoundBy::Watch => "watch",
            FoundBy::Eventgrid => "eventgrid",
            FoundBy::Reconcile => "reconcile",
        }
    }
}

/// A source name: 1–64 of `a-z 0-9 _ -` (it is a URL segment and an environment-variable
/// part, which the loader lower-cases).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "source name {name:?}: expected 1 to 64 characters from a-z, 0-9, '_', '-'"
        ))
    }
}

/// What the blob store's URL says about containers: `az://container/prefix`, or a directory.
#[derive(Debug, Clone, Default)]
pub struct StoreScope {
    pub container: Option<String>,
    pub prefix: String,
}

impl StoreScope {
    pub fn from_blob_url(url: &str) -> StoreScope {
        match url.strip_prefix("az://") {
            Some(rest) => {
                let (c, p) = rest.split_once('/').unwrap_or((rest, ""));
                let p = p.trim_matches('/');
                StoreScope {
                    container: Some(c.to_string()),
                    prefix: if p.is_empty() {
                        String::new()
                    } else {
                        format!("{p}/")
                    },
                }
            }
            None => StoreScope::default(),
        }
    }
}

/// Checks every `[sources.NAME]` against the connectors and the blob store.
pub fn check_all(
    specs: &BTreeMap<String, SourceSpec>,
    connectors: &[&str],
    scope: &StoreScope,
    api_tokens: bool,
) -> Result<BTreeMap<String, Source>, String> {
    specs
        .iter()
        .map(|(name, spec)| {
            check(name, spec, connectors, scope, api_tokens)
                .map(|s| (name.clone(), s))
                .map_err(|e| format!("sources.{name}: {e}"))
        })
        .collect()
}

fn check(
    name: &str,
    s: &SourceSpec,
    connectors: &[&str],
    scope: &StoreScope,
    api_tokens: bool,
) -> Result<Source, String> {
    check_name(name)?;
    if !connectors.contains(&s.connector.as_str()) {
        return Err(format!(
            "connector {:?} is not configured (configured: {})",
            s.connector,
            connectors.join(", ")
        ));
    }
    if s.prefix.is_empty() || s.prefix.starts_with('/') || s.prefix.contains("..") {
        return Err(format!(
            "prefix {:?}: expected a relative prefix like \"incoming/\"",
            s.prefix
        ));
    }
    if let Some(r) = RESERVED_PREFIXES
        .iter()
        .find(|r| s.prefix.starts_with(**r) || r.starts_with(s.prefix.as_str()))
    {
        return Err(format!(
            "prefix {:?} overlaps {r:?}, where etlq keeps its own blobs",
            s.prefix
        ));
    }
    let include: Vec<String> = match &s.include {
        Some(v) => v.clone(),
        None => WORKBOOK_GLOBS.iter().map(|g| g.to_string()).collect(),
    };
    let matcher = Matcher::new(&s.prefix, &include, s.path.as_deref(), s.bu_id.as_deref())?;
    let listing = match s.kind {
        SourceKind::Watch => {
            if s.reconcile.is_some() {
                return Err("`reconcile` is for eventgrid sources; a watch source lists on `schedule` or `every`".into());
            }
            if !s.secret.is_empty() || s.container.is_some() {
                return Err("`secret` and `container` are for eventgrid sources".into());
            }
            Some(Schedule::parse(
                s.schedule.as_deref(),
                s.every.as_deref(),
                s.timezone.as_deref(),
            )?)
        }
        SourceKind::Eventgrid => {
            if s.schedule.is_some() || s.every.is_some() {
                return Err("an eventgrid source is driven by events; list it on a schedule with `reconcile = \"0 * * * *\"`".into());
            }
            if s.secret.is_empty() && !api_tokens {
                return Err(format!(
                    "an eventgrid source needs `secret` (set ETLQ__SOURCES__{}__SECRET, at least 16 characters) or api.tokens: its endpoint is never open",
                    name.to_uppercase()
                ));
            }
            if !s.secret.is_empty() && s.secret.len() < 16 {
                return Err("secret must be at least 16 characters".into());
            }
            s.reconcile
                .as_deref()
                .map(|r| Schedule::parse(Some(r), None, s.timezone.as_deref()))
                .transpose()?
        }
    };
    let container = match (s.kind, &s.container, &scope.container) {
        (SourceKind::Watch, _, _) => None,
        (_, Some(c), _) => Some(c.clone()),
        (_, None, Some(c)) => Some(c.clone()),
        (_, None, None) => {
            return Err(
                "`container`: the blob store is a directory, so name the container its Event Grid events come from"
                    .into(),
            );
        }
    };
    Ok(Source {
        name: name.to_string(),
        kind: s.kind,
        matcher,
        connector: s.connector.clone(),
        listing,
        min_age: Duration::from_millis(s.min_age_ms.unwrap_or(MIN_AGE_WHEN_UNSET_MS)),
        enabled: s.enabled,
        secret: (!s.secret.is_empty()).then(|| s.secret.clone()),
        container,
        store_prefix: scope.prefix.clone(),
    })
}

/// The configured sources and the one ingest path, as the API and the watcher share them.
#[derive(Clone)]
pub struct SourceSet {
    pub sources: std::sync::Arc<BTreeMap<String, Source>>,
    pub ingest: ingest::Ingest,
}

impl SourceSet {
    pub fn get(&self, name: &str) -> Option<&Source> {
        self.sources.get(name)
    }

    pub fn store(&self) -> &SourceStore {
        self.ingest.store()
    }

    pub fn names(&self) -> Vec<String> {
        self.sources.keys().cloned().collect()
    }

    /// Creates the source's schedule row when no worker has yet (an `api` process acting
    /// before any worker started); an existing row keeps its slot unless the schedule
    /// changed.
    pub async fn ensure_row(&self, s: &Source) -> Result<(), store::StoreError> {
        ensure_schedule(self.store(), s).await
    }
}

/// Writes `s`'s schedule row: created when missing, its slot recomputed only when the
/// schedule changed (the watcher at startup, an action before any worker ran).
pub async fn ensure_schedule(store: &SourceStore, s: &Source) -> Result<(), store::StoreError> {
    let spec = s.listing.as_ref().map(|l| l.text()).unwrap_or("on request");
    let listing = s.listing.clone();
    store
        .sync_schedule(&s.name, spec, |now| listing.as_ref()?.next_after(now))
        .await
}
