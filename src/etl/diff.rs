//! What changed between two versions of a dataset: a merge of two id-ordered scans of the sink
//! (never two hash maps), so two 1,000,000-record versions diff in the memory of a page.
//! Counts cover the whole diff; the changes come a page at a time after a cursor (an id).

use std::collections::BTreeSet;

use futures_util::TryStreamExt;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::sink::{Dataset, DocumentSink, SinkError, StoredDoc};

/// Changes per page when the caller does not say.
pub const DEFAULT_DIFF_PAGE: usize = 100;
/// The most a page may hold.
pub const MAX_DIFF_PAGE: usize = 1000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DiffCounts {
    pub added: u64,
    pub removed: u64,
    pub changed: u64,
    pub unchanged: u64,
}

/// One field whose value differs (`null` where the record has no such field).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub old: Value,
    pub new: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum Change {
    Added {
        id: String,
        record: Value,
    },
    Removed {
        id: String,
        record: Value,
    },
    Changed {
        id: String,
        fields: Vec<FieldChange>,
    },
}

impl Change {
    fn id(&self) -> &str {
        match self {
            Change::Added { id, .. } | Change::Removed { id, .. } | Change::Changed { id, .. } => {
                id
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub from: i64,
    pub to: i64,
    pub counts: DiffCounts,
    pub changes: Vec<Change>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

fn record(d: &StoredDoc) -> Value {
    serde_json::from_str(&d.body).unwrap_or_else(|_| Value::String(d.body.clone()))
}

/// The fields that differ, in name order.
pub fn changed_fields(old: &Value, new: &Value) -> Vec<FieldChange> {
    let empty = Map::new();
    let (a, b) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names
        .into_iter()
        .filter_map(|k| {
            let (o, n) = (
                a.get(k).cloned().unwrap_or(Value::Null),
                b.get(k).cloned().unwrap_or(Value::Null),
            );
            (o != n).then(|| FieldChange {
                field: k.clone(),
                old: o,
                new: n,
            })
        })
        .collect()
}

pub async fn diff(
    sink: &dyn DocumentSink,
    from: &Dataset,
    to: &Dataset,
    after: Option<&str>,
    limit: usize,
) -> Result<Diff, SinkError> {
    let limit = limit.clamp(1, MAX_DIFF_PAGE);
    let (mut old, mut new) = (sink.scan_version(from), sink.scan_version(to));
    let (mut a, mut b) = (old.try_next().await?, new.try_next().await?);
    let mut out = Diff {
        from: from.version,
        to: to.version,
        counts: DiffCounts::default(),
        changes: Vec::new(),
        next_cursor: None,
    };
    let mut more = false;
    loop {
        let order = match (&a, &b) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => x.id.as_bytes().cmp(y.id.as_bytes()),
        };
        // Only the changes of this page are built (and their bodies parsed).
        let wanted =
            |id: &str, out: &Diff| after.is_none_or(|c| id > c) && out.changes.len() < limit;
        let change = match order {
            std::cmp::Ordering::Less => {
                let x = a.take().expect("a head");
                out.counts.removed += 1;
                a = old.try_next().await?;
                wanted(&x.id, &out).then(|| Change::Removed {
                    record: record(&x),
                    id: x.id,
                })
            }
            std::cmp::Ordering::Greater => {
                let y = b.take().expect("a head");
                out.counts.added += 1;
                b = new.try_next().await?;
                wanted(&y.id, &out).then(|| Change::Added {
                    record: record(&y),
                    id: y.id,
                })
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (a.take().expect("a head"), b.take().expect("a head"));
                a = old.try_next().await?;
                b = new.try_next().await?;
                if x.hash == y.hash {
                    out.counts.unchanged += 1;
                    continue;
                }
                out.counts.changed += 1;
                wanted(&y.id, &out).then(|| Change::Changed {
                    fields: changed_fields(&record(&x), &record(&y)),
                    id: y.id,
                })
            }
        };
        match change {
            Some(c) => out.changes.push(c),
            None => {
                if out.changes.len() == limit {
                    more = true;
                }
            }
        }
    }
    if more {
        out.next_cursor = out.changes.last().map(|c| c.id().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_the_fields_that_differ_are_named_old_to_new() {
        let f = changed_fields(
            &json!({"amount": "1.00", "text": "a", "gone": 1}),
            &json!({"amount": "2.00", "text": "a", "new": true}),
        );
        let names: Vec<&str> = f.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(names, ["amount", "gone", "new"]);
        assert_eq!(f[0].old, json!("1.00"));
        assert_eq!(f[0].new, json!("2.00"));
        assert_eq!(f[1].new, Value::Null);
    }
}
