//! An ETL job's payload, with its fields parsed once at the edge into types that cannot hold a
//! bad value (as zero2prod's `SubscriberName::parse`): a `BuId` is always a safe path segment,
//! a `BlobKey` always a relative key without traversal.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::sink::Dataset;

/// A business unit id: 1–64 characters from A–Z a–z 0–9 `_` `-` `.`, starting with a letter
/// or digit. It becomes a blob path segment and a document-id input.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BuId(String);

impl BuId {
    pub fn parse(s: &str) -> Result<BuId, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if ok {
            Ok(BuId(s.to_string()))
        } else {
            Err(format!(
                "invalid bu_id {:?}: expected 1 to 64 characters from A-Z, a-z, 0-9, '_', '-', '.', starting with a letter or digit",
                s.escape_debug().to_string()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BuId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        BuId::parse(&s)
    }
}

impl From<BuId> for String {
    fn from(b: BuId) -> String {
        b.0
    }
}

impl fmt::Display for BuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A blob key given by a client: relative, at most 1024 bytes, no `..` or `.` segments, no
/// empty segments, no backslashes or control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BlobKey(String);

impl BlobKey {
    pub fn parse(key: &str) -> Result<BlobKey, String> {
        let bad = key.is_empty()
            || key.len() > 1024
            || key.starts_with('/')
            || key.contains('\\')
            || key.chars().any(char::is_control)
            || key
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..");
        if bad {
            Err(format!(
                "invalid source_blob {:?}: expected a relative key like uploads/2026/file.xlsx, without '..', empty segments, backslashes or control characters",
                key.escape_debug().to_string()
            ))
        } else {
            Ok(BlobKey(key.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BlobKey {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        BlobKey::parse(&s)
    }
}

impl From<BlobKey> for String {
    fn from(b: BlobKey) -> String {
        b.0
    }
}

impl fmt::Display for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An ETL job's payload, as stored in `jobs.payload`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtlPayload {
    pub bu_id: BuId,
    /// A connector configured when the job was submitted (checked again by extract).
    pub connector: String,
    pub source_blob: BlobKey,
    /// The client's file name, for humans only (never used as a path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    /// The name of the token that submitted the job (audit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded_by: Option<String>,
}

impl EtlPayload {
    /// Parses a stored payload (a stage's view of it).
    pub fn from_value(v: &serde_json::Value) -> Result<EtlPayload, String> {
        EtlPayload::deserialize(v).map_err(|e| format!("invalid etl payload: {e}"))
    }

    /// The dataset version this job produces.
    pub fn dataset(&self, job_id: i64) -> Dataset {
        Dataset {
            bu_id: self.bu_id.to_string(),
            connector: self.connector.clone(),
            version: job_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bu_ids_and_blob_keys_refuse_path_tricks() {
        assert!(BuId::parse("BU-1000.de_x").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b", "a\0b", &"x".repeat(65)] {
            assert!(BuId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(BlobKey::parse("uploads/2026/a.xlsx").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "a//b",
            "a\\b",
            "a/./b",
            "a\0b",
        ] {
            assert!(BlobKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_payload_is_parsed_once_into_checked_types() {
        let ok =
            serde_json::json!({"bu_id": "BU-1", "connector": "tb", "source_blob": "in/a.xlsx"});
        let p = EtlPayload::from_value(&ok).unwrap();
        assert_eq!(p.bu_id.as_str(), "BU-1");
        let bad =
            serde_json::json!({"bu_id": "BU 1", "connector": "tb", "source_blob": "in/a.xlsx"});
        assert!(
            EtlPayload::from_value(&bad)
                .unwrap_err()
                .contains("invalid bu_id")
        );
    }
}
