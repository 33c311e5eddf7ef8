//! Azure Event Grid deliveries, read into what etlq needs of them. Two schemas reach the same
//! webhook: the Event Grid schema (a JSON array; `aeg-event-type` header) and CloudEvents 1.0
//! (`application/cloudevents+json`, one event, or `application/cloudevents-batch+json`).
//! Nothing here touches the database: the handler parses, then records in one transaction.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

pub const VALIDATION_EVENT: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";
pub const BLOB_CREATED: &str = "Microsoft.Storage.BlobCreated";
/// The Blob Storage operations whose BlobCreated means a whole blob is there. `PutBlock` and
/// the Data Lake `CreateFile` fire before the content is complete.
pub const FINISHING_APIS: [&str; 4] = ["PutBlob", "PutBlockList", "CopyBlob", "FlushWithClose"];
/// Longest delivery Event Grid sends (its documented batch limit is 1 MB / 5,000 events); the
/// body limit of this route.
pub const MAX_EVENTS: usize = 5000;

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The Event Grid schema's handshake: answer with this code.
    Validation {
        code: String,
    },
    BlobCreated(BlobCreated),
    /// Any other type, kept by name for the count.
    Other {
        event_type: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct BlobCreated {
    pub id: String,
    pub container: Option<String>,
    /// The blob's name inside its container (not URL-encoded).
    pub blob: Option<String>,
    pub etag: Option<String>,
    pub content_length: Option<i64>,
    pub api: Option<String>,
    pub event_time: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("the body is not JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Shape(String),
}

/// The envelope fields of both schemas (camelCase Event Grid, lowercase CloudEvents).
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default, rename = "eventType")]
    event_type: Option<String>,
    #[serde(default, rename = "type")]
    ce_type: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default, rename = "eventTime")]
    event_time: Option<String>,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    data: Option<Value>,
}

/// Reads a delivery body: an array (either schema's batch) or one object (a single
/// CloudEvent).
pub fn parse(body: &[u8]) -> Result<Vec<Event>, ParseError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))?;
    let items = match v {
        Value::Array(items) => items,
        obj @ Value::Object(_) => vec![obj],
        _ => {
            return Err(ParseError::Shape(
                "expected an array of events or one CloudEvent object".into(),
            ));
        }
    };
    if items.len() > MAX_EVENTS {
        return Err(ParseError::Shape(format!(
            "{} events in one delivery; Event Grid sends at most {MAX_EVENTS}",
            items.len()
        )));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let env: Envelope = serde_json::from_value(item)
                .map_err(|e| ParseError::Shape(format!("event {i}: {e}")))?;
            event(env).map_err(|m| ParseError::Shape(format!("event {i}: {m}")))
        })
        .collect()
}

fn event(env: Envelope) -> Result<Event, String> {
    let ty = env
        .event_type
        .or(env.ce_type)
        .ok_or("no eventType (Event Grid schema) or type (CloudEvents)")?;
    let data = env.data.unwrap_or(Value::Null);
    let text = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_string);
    match ty.as_str() {
        VALIDATION_EVENT => Ok(Event::Validation {
            code: text("validationCode").ok_or("a validation event without data.validationCode")?,
        }),
        BLOB_CREATED => {
            let id = match env.id {
                Some(Value::String(s)) => s,
                Some(other) => other.to_string(),
                None => return Err("a BlobCreated event without an id".into()),
            };
            let (mut container, mut blob) = env
                .subject
                .as_deref()
                .and_then(from_subject)
                .map(|(c, b)| (Some(c), Some(b)))
                .unwrap_or((None, None));
            if blob.is_none()
                && let Some((c, b)) = text("url").as_deref().and_then(from_url)
            {
                container = Some(c);
                blob = Some(b);
            }
            let time = env.event_time.or(env.time).and_then(|t| {
                DateTime::parse_from_rfc3339(&t)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            });
            Ok(Event::BlobCreated(BlobCreated {
                id,
                container,
                blob,
                etag: text("eTag").map(|e| normalize_etag(&e)),
                content_length: data.get("contentLength").and_then(Value::as_i64),
                api: text("api"),
                event_time: time,
            }))
        }
        _ => Ok(Event::Other { event_type: ty }),
    }
}

/// `/blobServices/default/containers/{c}/blobs/{path}`, the leading `/` optional.
fn from_subject(s: &str) -> Option<(String, String)> {
    let rest = s
        .trim_start_matches('/')
        .strip_prefix("blobServices/default/containers/")?;
    let (container, blob) = rest.split_once("/blobs/")?;
    (!container.is_empty() && !blob.is_empty()).then(|| (container.into(), blob.into()))
}

/// `https://account.blob.core.windows.net/{c}/{path}`, or an emulator's
/// `http://127.0.0.1:10000/{account}/{c}/{path}`: the container is the first segment unless
/// the host is an IP or localhost, where the account comes first.
fn from_url(u: &str) -> Option<(String, String)> {
    let url = url::Url::parse(u).ok()?;
    let emulator = matches!(url.host()?, url::Host::Ipv4(_) | url::Host::Ipv6(_))
        || url.host_str() == Some("localhost");
    let mut segs = url.path_segments()?;
    if emulator {
        segs.next()?;
    }
    let container = segs.next()?.to_string();
    let rest: Vec<String> = segs.map(percent_decode).collect::<Option<_>>()?;
    let blob = rest.join("/");
    (!container.is_empty() && !blob.is_empty()).then_some((container, blob))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// An entity tag without quotes or a weak marker: `"0x8D…"`, `0x8D…` and `W/"0x8D…"` are one
/// etag to the ledger, whoever reported it.
pub fn normalize_etag(e: &str) -> String {
    let e = e.trim();
    let e = e.strip_prefix("W/").unwrap_or(e);
    e.trim_matches('"').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BlobCreated event in the Event Grid schema, as Azure's documentation shows it.
    const EG_BLOB_CREATED: &str = r#"[{
      "topic": "/subscriptions/{subscription-id}/resourceGroups/Storage/providers/Microsoft.Storage/storageAccounts/my-storage-account",
      "subject": "/blobServices/default/containers/test-container/blobs/new-file.txt",
      "eventType": "Microsoft.Storage.BlobCreated",
      "eventTime": "2017-06-26T18:41:00.9584103Z",
      "id": "831e1650-001e-001b-66ab-eeb76e069631",
      "data": {
        "api": "PutBlockList",
        "clientRequestId": "6d79dbfb-0e37-4fc4-981f-442c9ca65760",
        "requestId": "831e1650-001e-001b-66ab-eeb76e000000",
        "eTag": "\"0x8D4BCC2E4835CD0\"",
        "contentType": "text/plain",
        "contentLength": 524288,
        "blobType": "BlockBlob",
        "url": "https://my-storage-account.blob.core.windows.net/testcontainer/new-file.txt",
        "sequencer": "00000000000004420000000000028963",
        "storageDiagnostics": { "batchId": "b68529f3-68cd-4744-baa4-3c0498ec19f0" }
      },
      "dataVersion": "",
      "metadataVersion": "1"
    }]"#;

    #[test]
    fn a_blob_created_in_the_event_grid_schema() {
        let ev = parse(EG_BLOB_CREATED.as_bytes()).unwrap();
        let Event::BlobCreated(b) = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!(b.id, "831e1650-001e-001b-66ab-eeb76e069631");
        assert_eq!(b.container.as_deref(), Some("test-container"));
        assert_eq!(b.blob.as_deref(), Some("new-file.txt"));
        assert_eq!(b.etag.as_deref(), Some("0x8D4BCC2E4835CD0"));
        assert_eq!(b.content_length, Some(524288));
        assert_eq!(b.api.as_deref(), Some("PutBlockList"));
        assert!(b.event_time.is_some());
    }

    #[test]
    fn a_single_cloud_event_and_the_key_from_the_url_when_there_is_no_subject() {
        let ce = r#"{"specversion":"1.0","type":"Microsoft.Storage.BlobCreated",
            "source":"/subscriptions/x/resourceGroups/r/providers/Microsoft.Storage/storageAccounts/acct",
            "id":"9aeb0fdf","time":"2026-01-01T00:00:00Z",
            "data":{"api":"PutBlob","eTag":"0x1","contentLength":10,
                    "url":"http://127.0.0.1:10000/devstoreaccount1/etlq/incoming/BU%201/a%2Bb.xlsx"}}"#;
        let ev = parse(ce.as_bytes()).unwrap();
        let Event::BlobCreated(b) = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!(b.container.as_deref(), Some("etlq"));
        assert_eq!(b.blob.as_deref(), Some("incoming/BU 1/a+b.xlsx"));
        assert_eq!(
            from_url("https://acct.blob.core.windows.net/c/dir/x.xlsx"),
            Some(("c".into(), "dir/x.xlsx".into()))
        );
        assert_eq!(
            from_subject("blobServices/default/containers/c/blobs/a/b.xlsx"),
            Some(("c".into(), "a/b.xlsx".into()))
        );
    }

    #[test]
    fn validation_other_types_and_bad_bodies() {
        let v = r#"[{"id":"2d1781af","topic":"/subscriptions/x","subject":"",
            "data":{"validationCode":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
                    "validationUrl":"https://rp-eastus2.eventgrid.azure.net/api/vs"},
            "eventType":"Microsoft.EventGrid.SubscriptionValidationEvent",
            "eventTime":"2018-01-25T22:12:19.4556811Z","metadataVersion":"1","dataVersion":"1"}]"#;
        assert_eq!(
            parse(v.as_bytes()).unwrap(),
            [Event::Validation {
                code: "512d38b6-c7b8-40c8-89fe-f46f9e9622b6".into()
            }]
        );
        let other =
            r#"[{"id":"1","eventType":"Microsoft.Storage.BlobDeleted","subject":"x","data":{}}]"#;
        assert_eq!(
            parse(other.as_bytes()).unwrap(),
            [Event::Other {
                event_type: "Microsoft.Storage.BlobDeleted".into()
            }]
        );
        assert!(matches!(parse(b"[{"), Err(ParseError::Json(_))));
        assert!(matches!(parse(b"42"), Err(ParseError::Shape(_))));
        assert!(matches!(
            parse(br#"[{"id":"1"}]"#),
            Err(ParseError::Shape(_))
        ));
        assert_eq!(normalize_etag("W/\"0xAB\""), "0xAB");
    }
}
