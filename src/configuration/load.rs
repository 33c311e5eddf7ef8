//! Layered loading with errors that say where a bad setting came from.
//!
//! Layers, later wins: the embedded defaults, the settings file, `DATABASE_URL`, then
//! `ETLQ__SECTION__KEY` variables. Each leaf remembers its layer, so an unknown key or a
//! wrong type is reported with the file or variable that set it, the key path, and (for an
//! unknown key) the nearest valid one; an enum lists its valid values.

use std::collections::BTreeMap;
use std::path::Path;

use toml::{Table, Value};

use super::{DEFAULTS, Settings};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(String),
    #[error("configuration: {0}")]
    Invalid(String),
}

/// Where a leaf came from.
#[derive(Debug, Clone)]
enum Source {
    Defaults,
    File(String),
    Env(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Defaults => f.write_str("the embedded defaults"),
            Source::File(p) => write!(f, "{p}"),
            Source::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

/// Dotted paths of every leaf, with their source.
type Sources = BTreeMap<String, Source>;

fn record(sources: &mut Sources, prefix: &str, v: &Value, src: &Source) {
    match v {
        Value::Table(t) => {
            for (k, v) in t {
                record(sources, &join(prefix, k), v, src);
            }
        }
        _ => {
            sources.insert(prefix.to_string(), src.clone());
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Deep-merges `top` into `base` (tables merge, anything else replaces).
fn merge(base: &mut Table, top: Table) {
    for (k, v) in top {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(t)) => merge(b, t),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn parse_toml(text: &str, what: &str) -> Result<Table, ConfigError> {
    text.parse::<Table>()
        .map_err(|e| ConfigError::Load(format!("{what} is not valid TOML: {e}")))
}

/// The value at `path` in `t`, if any.
fn lookup<'a>(t: &'a Table, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let v = t.get(first)?;
    if rest.is_empty() {
        Some(v)
    } else {
        match v {
            Value::Table(t) => lookup(t, rest),
            _ => None,
        }
    }
}

/// A source defined only in the environment (`ETLQ__SOURCES__NAME__MIN_AGE_MS=500`) has no
/// default to take its types from: its non-string fields are typed here.
fn source_field_like(path: &[String]) -> Option<&'static Value> {
    static INT: Value = Value::Integer(0);
    static BOOL: Value = Value::Boolean(false);
    static ARRAY: Value = Value::Array(Vec::new());
    match path {
        [s, _, field] if s == "sources" => match field.as_str() {
            "min_age_ms" => Some(&INT),
            "enabled" => Some(&BOOL),
            "include" => Some(&ARRAY),
            _ => None,
        },
        _ => None,
    }
}

/// An environment variable's text as the type the defaults have at that path.
fn env_value(var: &str, text: &str, like: Option<&Value>) -> Result<Value, ConfigError> {
    let wrong = |ty: &str| {
        ConfigError::Load(format!(
            "environment variable {var}={text:?}: expected {ty}"
        ))
    };
    Ok(match like {
        Some(Value::Integer(_)) => {
            Value::Integer(text.trim().parse().map_err(|_| wrong("an integer"))?)
        }
        Some(Value::Float(_)) => Value::Float(text.trim().parse().map_err(|_| wrong("a number"))?),
        Some(Value::Boolean(_)) => Value::Boolean(match text.trim() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(wrong("true or false")),
        }),
        Some(Value::Array(_)) | Some(Value::Table(_)) => {
            let t = parse_toml(
                &format!("v = {text}"),
                &format!("environment variable {var}"),
            )?;
            t.get("v").cloned().ok_or_else(|| wrong("a TOML value"))?
        }
        _ => Value::String(text.to_string()),
    })
}

/// Keys an earlier release read, and what replaced them: their error says so instead of
/// guessing the nearest key.
const REPLACED: &[(&str, &str)] = &[
    (
        "maintenance.succeeded_retention_hours",
        "history.retention_days (whole days after the day a job finished; ADR 0017)",
    ),
    (
        "maintenance.dead_retention_hours",
        "history.retention_days (whole days after the day a job finished; ADR 0017)",
    ),
];

fn nearest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// The layer that set `path` or its nearest parent (array elements are not tracked one by one).
fn source_of(sources: &Sources, path: &str) -> Option<String> {
    let mut p = path;
    loop {
        if let Some(s) = sources.get(p) {
            return Some(s.to_string());
        }
        // A table set by a layer has its leaves recorded: any of them names the layer.
        if let Some((_, s)) = sources
            .iter()
            .find(|(k, _)| k.starts_with(&format!("{p}.")))
        {
            return Some(s.to_string());
        }
        let cut = p.rfind(['.', '['])?;
        p = &p[..cut];
    }
}

/// Makes serde's message name the source, the full key path and a suggestion.
fn explain(path: &str, message: &str, sources: &Sources) -> String {
    // "unknown field `concurency`, expected one of `a`, `b`" (deny_unknown_fields)
    if let Some(rest) = message.strip_prefix("unknown field `") {
        // toml adds "\nin `section.key`" after the list: not one of the valid keys.
        let rest = rest.split('\n').next().unwrap_or(rest);
        let field = rest.split('`').next().unwrap_or_default();
        // serde_path_to_error's path already ends with the unknown key.
        let parent = path
            .strip_suffix(field)
            .unwrap_or(path)
            .trim_matches('.')
            .to_string();
        let path = parent.as_str();
        let full = join(path, field);
        let expected: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
        let from = source_of(sources, &full).unwrap_or_else(|| "the settings".into());
        if let Some((_, now)) = REPLACED.iter().find(|(old, _)| *old == full) {
            return format!("unknown key {full} in {from}: it was replaced by {now}");
        }
        let hint = nearest(field, expected.iter().copied())
            .map(|n| format!("; did you mean {}?", join(path.trim_matches('.'), n)))
            .unwrap_or_else(|| {
                if expected.is_empty() {
                    String::new()
                } else {
                    format!("; valid keys: {}", expected.join(", "))
                }
            });
        return format!("unknown key {full} in {from}{hint}");
    }
    let from = source_of(sources, path)
        .map(|s| format!(" (from {s})"))
        .unwrap_or_default();
    // "unknown variant `decimel`, expected one of `string`, `integer`, …"
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        // toml adds "\nin `key`" after the list.
        let rest = rest.split('\n').next().unwrap_or(rest);
        let value = rest.split('`').next().unwrap_or_default();
        let expected: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
        let hint = nearest(value, expected.iter().copied())
            .map(|n| format!("; did you mean {n:?}?"))
            .unwrap_or_default();
        return format!(
            "{path}{from}: {value:?} is not one of {}{hint}",
            expected.join(", ")
        );
    }
    format!(
        "{path}{from}: {}",
        message.lines().next().unwrap_or(message)
    )
}

/// Loads settings from the layers; `env` is the process environment (a parameter for tests).
pub(super) fn load(file: Option<&Path>, env: &[(String, String)]) -> Result<Settings, ConfigError> {
    let mut merged = parse_toml(DEFAULTS, "the embedded defaults")?;
    #[cfg(feature = "test-aids")]
    merge(
        &mut merged,
        parse_toml(super::TESTING_DEFAULTS, "the embedded test-aid defaults")?,
    );
    let mut sources = Sources::new();
    record(
        &mut sources,
        "",
        &Value::Table(merged.clone()),
        &Source::Defaults,
    );
    let defaults = merged.clone();
    if let Some(path) = file {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Load(format!("cannot read settings file {shown}: {e}")))?;
        let t = parse_toml(&text, &format!("settings file {shown}"))?;
        let src = Source::File(format!("settings file {shown}"));
        record(&mut sources, "", &Value::Table(t.clone()), &src);
        merge(&mut merged, t);
    }
    let mut env_table = Table::new();
    for (var, text) in env {
        if var == "DATABASE_URL" && !text.is_empty() {
            set(
                &mut env_table,
                &["database".into(), "url".into()],
                Value::String(text.clone()),
            );
            sources.insert("database.url".into(), Source::Env(var.clone()));
            continue;
        }
        let Some(rest) = var.strip_prefix("ETLQ__") else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Load(format!(
                "environment variable {var}: expected ETLQ__SECTION__KEY"
            )));
        }
        let like = lookup(&merged, &path)
            .or_else(|| lookup(&defaults, &path))
            .or_else(|| source_field_like(&path));
        let value = env_value(var, text, like)?;
        record(
            &mut sources,
            &path.join("."),
            &value,
            &Source::Env(var.clone()),
        );
        set(&mut env_table, &path, value);
    }
    merge(&mut merged, env_table);
    // A source's Event Grid secret is a credential: never from a file that may be committed.
    for (path, src) in &sources {
        if let (Some(rest), Source::File(file)) = (path.strip_prefix("sources."), src)
            && let Some(name) = rest.strip_suffix(".secret")
        {
            return Err(ConfigError::Invalid(format!(
                "{path} (in {file}): a secret is read from the environment only; set ETLQ__SOURCES__{}__SECRET instead",
                name.to_uppercase()
            )));
        }
    }
    let mut settings: Settings =
        serde_path_to_error::deserialize(Value::Table(merged)).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            ConfigError::Invalid(explain(&path, &e.inner().to_string(), &sources))
        })?;
    settings.validate()?;
    settings.origins = sources
        .into_iter()
        .filter(|(_, s)| !matches!(s, Source::Defaults))
        .map(|(k, s)| (k, s.to_string()))
        .collect();
    Ok(settings)
}

fn set(t: &mut Table, path: &[String], v: Value) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut cur = t;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        cur = entry.as_table_mut().expect("a table");
    }
    cur.insert(last.clone(), v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configuration::test_files::{env, file};

    #[test]
    fn environment_overrides_are_typed_by_the_defaults() {
        let s = load(
            None,
            &env(&[
                ("ETLQ__WORKER__CONCURRENCY", "7"),
                ("ETLQ__API__TOKENS__DEPLOYER", "0123456789abcdef"),
                ("DATABASE_URL", "postgres://x@127.0.0.1/db"),
                ("UNRELATED", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(s.worker.concurrency, 7);
        assert_eq!(s.api.tokens["deployer"], "0123456789abcdef".into());
        assert_eq!(s.database.url, "postgres://x@127.0.0.1/db");
    }

    #[test]
    fn a_completion_wait_that_would_throttle_the_worker_is_refused() {
        assert_eq!(load(None, &[]).unwrap().worker.completion_wait_ms, 1);
        let ok = load(None, &env(&[("ETLQ__WORKER__COMPLETION_WAIT_MS", "1000")])).unwrap();
        assert_eq!(ok.worker.completion_wait_ms, 1000);
        let e = load(None, &env(&[("ETLQ__WORKER__COMPLETION_WAIT_MS", "1001")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("worker.completion_wait_ms must be at most 1000"),
            "{e}"
        );
    }

    #[test]
    fn a_replaced_key_names_what_replaced_it() {
        let env = [(
            "ETLQ__MAINTENANCE__SUCCEEDED_RETENTION_HOURS".to_string(),
            "24".to_string(),
        )];
        let err = load(None, &env).unwrap_err().to_string();
        assert!(
            err.contains("maintenance.succeeded_retention_hours")
                && err.contains("replaced by history.retention_days"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_variable_names_itself_and_the_nearest_key() {
        let e = load(None, &env(&[("ETLQ__WORKER__CONCURENCY", "5")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "configuration: unknown key worker.concurency in environment variable ETLQ__WORKER__CONCURENCY; did you mean worker.concurrency?"
        );
        let e = load(None, &env(&[("ETLQ__WORKER__CONCURRENCY", "many")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ETLQ__WORKER__CONCURRENCY=\"many\": expected an integer"),
            "{e}"
        );
    }

    #[test]
    fn a_typo_in_a_file_names_the_file_the_key_and_the_valid_values() {
        let f = file(
            r#"
            [connectors.invoices]
            sheet = 0
            header = 1
            columns = [
              { name = "id", header = "Id", type = "string", key = true, requird = true },
            ]
            "#,
        );
        let e = load(Some(f.path()), &[]).unwrap_err().to_string();
        let shown = f.path().display().to_string();
        assert!(
            e.contains(&format!(
                "unknown key connectors.invoices.columns[0].requird in settings file {shown}; did you mean connectors.invoices.columns[0].required?"
            )),
            "{e}"
        );
        let f = file(
            r#"
            [connectors.invoices]
            sheet = 0
            header = 1
            columns = [ { name = "amount", header = "Amount", type = "decimel", key = true } ]
            "#,
        );
        let e = load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(
            e.contains("\"decimel\" is not one of string, integer, decimal, date, datetime, bool; did you mean \"decimal\"?"),
            "{e}"
        );
        let f = file("[worker\nconcurrency = 1");
        let e = load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "settings file {shown} is not valid TOML",
                shown = f.path().display()
            )),
            "{e}"
        );
    }
}
