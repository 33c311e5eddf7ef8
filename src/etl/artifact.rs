//! The records artifact and what makes documents deterministic: ids from (bu_id, connector,
//! key values) and content hashes that verify sums.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;

use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::coerce::Value;
use crate::sink::Document;

/// Where a run's artifacts live.
pub fn run_prefix(job_id: i64) -> String {
    format!("runs/{job_id}")
}
pub const RECORDS: &str = "records.ndjson";
pub const REJECTED: &str = "rejected.ndjson";
pub const REPORT: &str = "report.json";
pub const MANIFEST: &str = "manifest.json";

/// The promoted copy of a dataset's artifacts.
pub fn latest_prefix(bu_id: &str, connector: &str) -> String {
    format!("latest/{bu_id}/{connector}")
}

/// A document id: 32 hex digits of SHA-256 over bu_id, connector and the key values' JSON
/// (so `"1"` and `1` differ), separated by a byte no text contains. Cosmos-safe characters.
pub fn doc_id(bu_id: &str, connector: &str, key: &[&Value]) -> String {
    let mut h = Sha256::new();
    h.update(bu_id.as_bytes());
    h.update([0x1f]);
    h.update(connector.as_bytes());
    for v in key {
        h.update([0x1f]);
        h.update(serde_json::to_vec(v).expect("values serialise").as_slice());
    }
    let digest = h.finalize();
    let mut s = String::with_capacity(32);
    for b in &digest[..16] {
        write!(s, "{b:02x}").expect("writing to a String");
    }
    s
}

/// The first 8 bytes of SHA-256 over id and body, as a signed integer (PostgreSQL `bigint`).
pub fn content_hash(id: &str, body: &str) -> i64 {
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update([0x1f]);
    h.update(body.as_bytes());
    let d = h.finalize();
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Appends one record as a line of the records artifact; returns its hash.
pub fn write_line(
    out: &mut Vec<u8>,
    id: &str,
    row: usize,
    record: &BTreeMap<String, Value>,
) -> i64 {
    let body = serde_json::to_string(record).expect("records serialise");
    let hash = content_hash(id, &body);
    // Hand-written so the body is embedded verbatim: the sink stores exactly the hashed bytes.
    writeln!(
        out,
        "{{\"id\":\"{id}\",\"row\":{row},\"hash\":{hash},\"data\":{body}}}"
    )
    .expect("writing to a Vec");
    hash
}

#[derive(Deserialize)]
struct Line<'a> {
    id: &'a str,
    hash: i64,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Debug, thiserror::Error)]
#[error("records artifact line {line}: {message}")]
pub struct ArtifactError {
    pub line: usize,
    pub message: String,
}

/// Parses the records artifact back into documents, in file order.
pub fn read_documents(bytes: &[u8]) -> Result<Vec<Document>, ArtifactError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ArtifactError {
        line: 0,
        message: e.to_string(),
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| {
            let line: Line = serde_json::from_str(l).map_err(|e| ArtifactError {
                line: i + 1,
                message: e.to_string(),
            })?;
            let body = line.data.get();
            if content_hash(line.id, body) != line.hash {
                return Err(ArtifactError {
                    line: i + 1,
                    message: "content hash does not match (artifact damaged)".into(),
                });
            }
            Ok(Document {
                id: line.id.to_string(),
                body: body.to_string(),
                hash: line.hash,
            })
        })
        .collect()
}

/// Order-independent checksum of a set of documents: the sum of their hashes.
pub fn checksum<'a>(hashes: impl IntoIterator<Item = &'a i64>) -> i128 {
    hashes.into_iter().map(|h| i128::from(*h)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    #[test]
    fn ids_are_deterministic_and_typed() {
        let a = doc_id("BU1", "gl", &[&Value::String("1".into())]);
        assert_eq!(a, doc_id("BU1", "gl", &[&Value::String("1".into())]));
        assert_eq!(a.len(), 32);
        assert_ne!(a, doc_id("BU1", "gl", &[&Value::Integer(1)]));
        assert_ne!(a, doc_id("BU2", "gl", &[&Value::String("1".into())]));
    }

    #[test]
    fn lines_round_trip_and_damage_is_detected() {
        let mut rec = BTreeMap::new();
        rec.insert(
            "amount".to_string(),
            Value::Decimal(Decimal::new(-123456, 2)),
        );
        rec.insert(
            "text".to_string(),
            Value::String("a \"quoted\"\n line".into()),
        );
        let mut out = Vec::new();
        let h = write_line(&mut out, "abc", 7, &rec);
        let docs = read_documents(&out).unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].hash, h);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&docs[0].body).unwrap()["amount"],
            "-1234.56"
        );
        let damaged = String::from_utf8(out)
            .unwrap()
            .replace("1234.56", "1234.57");
        assert!(read_documents(damaged.as_bytes()).is_err());
    }
}
