//! The records artifact and what makes documents deterministic: ids from (bu_id, connector,
//! key values) and content hashes that verify sums.

use std::fmt::Write as _;

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
pub fn doc_id(bu_id: &str, connector: &str, key: &[&Value<'_>]) -> String {
    hex_id(&doc_digest(bu_id, connector, key))
}

/// The 16 bytes `doc_id` shows in hex.
pub fn doc_digest(bu_id: &str, connector: &str, key: &[&Value<'_>]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(bu_id.as_bytes());
    h.update([0x1f]);
    h.update(connector.as_bytes());
    let mut json = String::new();
    for v in key {
        h.update([0x1f]);
        json.clear();
        write_value(v, &mut json);
        h.update(json.as_bytes());
    }
    let digest = h.finalize();
    digest[..16].try_into().expect("16 bytes")
}

pub fn hex_id(digest: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(32);
    for b in digest {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

/// Appends `v` as JSON: what serde_json writes for it (a test holds them equal), without
/// going through a serializer for the common values.
pub fn write_value(v: &Value<'_>, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::String(s) => write_json_str(s, out),
        Value::Integer(i) => write!(out, "{i}").expect("writing to a String"),
        Value::Decimal(d) => write!(out, "\"{d}\"").expect("writing to a String"),
        Value::Date(d) if (0..=9999).contains(&chrono::Datelike::year(d)) => {
            use chrono::Datelike;
            write!(out, "\"{:04}-{:02}-{:02}\"", d.year(), d.month(), d.day())
                .expect("writing to a String");
        }
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        other => out.push_str(&serde_json::to_string(other).expect("values serialise")),
    }
}

/// A JSON string literal, escaped as serde_json escapes it.
fn write_json_str(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            out.push_str("\\u00");
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
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

/// Appends one record (its JSON `body`) as a line of the records artifact; returns its hash.
pub fn write_line(
    out: &mut dyn std::io::Write,
    id: &str,
    row: usize,
    body: &str,
) -> std::io::Result<i64> {
    let hash = content_hash(id, body);
    // Hand-written so the body is embedded verbatim: the sink stores exactly the hashed bytes.
    writeln!(
        out,
        "{{\"id\":\"{id}\",\"row\":{row},\"hash\":{hash},\"data\":{body}}}"
    )?;
    Ok(hash)
}

/// Where a run's rejected rows are (`runs/{job}/rejected.ndjson`).
pub fn rejected_key(job_id: i64) -> String {
    format!("{}/{REJECTED}", run_prefix(job_id))
}

/// A page of a run's rejected rows (the bytes of its `rejected_key`) and how many there are.
/// Plain parsing: the caller reads the blob (this module does no I/O).
pub fn rejected_page(
    bytes: &[u8],
    offset: usize,
    limit: usize,
) -> (Vec<super::mapping::RejectedRow>, usize) {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let page = lines
        .iter()
        .skip(offset)
        .take(limit)
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (page, lines.len())
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
    let mut lines = DocumentLines::default();
    let mut docs = Vec::new();
    lines.feed(bytes, &mut docs)?;
    lines.finish(&mut docs)?;
    Ok(docs)
}

/// Reads the records artifact chunk by chunk (sync streams it instead of holding it).
#[derive(Default)]
pub struct DocumentLines {
    carry: Vec<u8>,
    line: usize,
}

impl DocumentLines {
    /// Parses every line `chunk` completes into `out`; keeps an unfinished last line.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Document>) -> Result<(), ArtifactError> {
        self.carry.extend_from_slice(chunk);
        let Some(end) = self.carry.iter().rposition(|b| *b == b'\n') else {
            return Ok(());
        };
        let complete = std::mem::take(&mut self.carry);
        let (lines, rest) = complete.split_at(end + 1);
        for l in lines.split(|b| *b == b'\n') {
            self.line += 1;
            if !l.is_empty() {
                out.push(parse_line(l, self.line)?);
            }
        }
        // The last split piece is the empty one after the final newline.
        self.line -= 1;
        self.carry.extend_from_slice(rest);
        Ok(())
    }

    /// The end of the artifact: a last line without its newline still counts.
    pub fn finish(mut self, out: &mut Vec<Document>) -> Result<(), ArtifactError> {
        if !self.carry.is_empty() {
            self.line += 1;
            out.push(parse_line(&std::mem::take(&mut self.carry), self.line)?);
        }
        Ok(())
    }
}

/// One line: the exact layout `write_line` writes is read by hand; anything else (an older
/// writer, a hand-edited file) through serde. Either way the content hash is checked.
fn parse_line(bytes: &[u8], line: usize) -> Result<Document, ArtifactError> {
    let fail = |message: String| ArtifactError { line, message };
    let text = std::str::from_utf8(bytes).map_err(|e| fail(e.to_string()))?;
    let (id, hash, body) = match split_line(text) {
        Some(parts) => parts,
        None => {
            let l: Line = serde_json::from_str(text).map_err(|e| fail(e.to_string()))?;
            (l.id, l.hash, l.data.get())
        }
    };
    if content_hash(id, body) != hash {
        return Err(fail(
            "content hash does not match (artifact damaged)".into(),
        ));
    }
    Ok(Document {
        id: id.to_string(),
        body: body.to_string(),
        hash,
    })
}

/// `{"id":"<hex>","row":N,"hash":H,"data":BODY}` → (id, hash, BODY).
fn split_line(text: &str) -> Option<(&str, i64, &str)> {
    let rest = text.strip_prefix("{\"id\":\"")?;
    let (id, rest) = rest.split_once('"')?;
    if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let rest = rest.strip_prefix(",\"row\":")?;
    let (row, rest) = rest.split_once(',')?;
    row.parse::<u64>().ok()?;
    let rest = rest.strip_prefix("\"hash\":")?;
    let (hash, rest) = rest.split_once(',')?;
    let hash = hash.parse().ok()?;
    let body = rest.strip_prefix("\"data\":")?.strip_suffix('}')?;
    (body.starts_with('{') && body.ends_with('}')).then_some((id, hash, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_ids_are_lowercase_two_digits_per_byte() {
        let digest: [u8; 16] = std::array::from_fn(|i| ((i as u8) * 17) ^ 0xa0);
        let want: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex_id(&digest), want);
        assert_eq!(hex_id(&[0; 16]), "0".repeat(32));
    }
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
    fn values_are_written_as_serde_json_writes_them() {
        let date = |y, m, d| chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap();
        let mut texts: Vec<String> = [
            "",
            "plain",
            "a \"quoted\"\n line",
            "tab\there",
            "back\\slash",
            "\u{0}\u{1f}\u{7f}",
            "Miete März €",
            "\u{8}\u{c}\r",
            "emoji 🧾",
            "</script>",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        texts.extend((0u8..=127).map(|b| format!("x{}y", b as char)));
        let mut values: Vec<Value> = texts
            .iter()
            .map(|t| Value::String(t.as_str().into()))
            .collect();
        values.extend([
            Value::Null,
            Value::Integer(0),
            Value::Integer(i64::MIN),
            Value::Integer(i64::MAX),
            Value::Decimal(Decimal::new(-123456, 2)),
            Value::Decimal(Decimal::new(1_000, 3)),
            Value::Decimal(Decimal::MAX),
            Value::Date(date(2025, 12, 31)),
            Value::Date(date(1, 1, 1)),
            Value::Date(date(-44, 3, 15)),
            Value::Date(date(12345, 6, 7)),
            Value::DateTime(date(2025, 1, 2).and_hms_milli_opt(3, 4, 5, 60).unwrap()),
            Value::DateTime(date(2025, 1, 2).and_hms_opt(0, 0, 0).unwrap()),
            Value::Bool(true),
            Value::Bool(false),
        ]);
        for v in &values {
            let mut ours = String::new();
            write_value(v, &mut ours);
            assert_eq!(ours, serde_json::to_string(v).unwrap(), "{v:?}");
        }
    }

    #[test]
    fn lines_round_trip_and_damage_is_detected() {
        let body = r#"{"amount":"-1234.56","text":"a \"quoted\"\n line"}"#;
        let mut out = Vec::new();
        let h = write_line(&mut out, "abc", 7, body).unwrap();
        let docs = read_documents(&out).unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].hash, h);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&docs[0].body).unwrap()["amount"],
            "-1234.56"
        );
        let damaged = String::from_utf8(out.clone())
            .unwrap()
            .replace("1234.56", "1234.57");
        assert!(read_documents(damaged.as_bytes()).is_err());
        // Fed in pieces of any size, the same documents come out.
        for size in [1, 7, 64] {
            let mut twice = out.clone();
            twice.extend_from_slice(&out);
            let mut lines = DocumentLines::default();
            let mut docs = Vec::new();
            for piece in twice.chunks(size) {
                lines.feed(piece, &mut docs).unwrap();
            }
            lines.finish(&mut docs).unwrap();
            assert_eq!(docs.len(), 2);
            assert!(docs.iter().all(|d| d.hash == h && d.body == body));
        }
        // A line in another key order (not the writer's layout) is read through serde.
        let other = format!("{{\"hash\":{h},\"id\":\"abc\",\"data\":{body},\"row\":7}}\n");
        assert_eq!(read_documents(other.as_bytes()).unwrap()[0].body, body);
    }
}
