//! `datasets list|show|diff|rollback`, over a running server's REST API (a rollback publishes
//! to the sink and `latest/`, and a diff reads the sink: the server has both).

use anyhow::bail;
use clap::Subcommand;
use serde_json::{Value, json};

use etlq::configuration::Settings;

use super::remote::Server;
use super::{exit, output};

#[derive(Subcommand)]
pub enum DatasetsCmd {
    /// Every dataset: promoted version, records, generation.
    List {
        #[command(flatten)]
        server: Server,
    },
    /// One dataset: its promotions, rollbacks and the versions still kept (rollback targets).
    Show {
        /// The business unit.
        bu_id: String,
        /// The connector (what kind of export).
        connector: String,
        #[command(flatten)]
        server: Server,
    },
    /// What changed between two versions (default: the one the current version replaced, and
    /// the current one): counts, and the changed records a page at a time.
    Diff {
        /// The business unit.
        bu_id: String,
        /// The connector (what kind of export).
        connector: String,
        /// The older version (job id); default: the one `--to` replaced.
        #[arg(long)]
        from: Option<i64>,
        /// The newer version (job id); default: the current one.
        #[arg(long)]
        to: Option<i64>,
        /// Changes per page (the counts always cover the whole diff).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// The page after this document id (`next_cursor` of the previous page).
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// Point the dataset back at a kept version (asking again for the same version is safe).
    Rollback {
        /// The business unit.
        bu_id: String,
        /// The connector (what kind of export).
        connector: String,
        /// The version (job id) to restore: see `datasets show`.
        #[arg(long)]
        to: i64,
        /// Why, for the audit log.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        server: Server,
    },
}

fn path_part(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub async fn datasets(settings: &Settings, action: DatasetsCmd, json: bool) -> anyhow::Result<u8> {
    match action {
        DatasetsCmd::List { server } => {
            let v = server
                .call(settings, reqwest::Method::GET, "/v1/datasets")
                .await?;
            if json {
                output::json(&v);
                return Ok(exit::OK);
            }
            let rows: Vec<Vec<String>> = v["datasets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    [
                        "bu_id",
                        "connector",
                        "version",
                        "records",
                        "generation",
                        "promoted_at",
                    ]
                    .iter()
                    .map(|k| text(&d[*k]))
                    .collect()
                })
                .collect();
            output::table(
                &[
                    "BU",
                    "CONNECTOR",
                    "VERSION",
                    "RECORDS",
                    "GENERATION",
                    "PROMOTED",
                ],
                &rows,
            );
            Ok(exit::OK)
        }
        DatasetsCmd::Show {
            bu_id,
            connector,
            server,
        } => {
            let path = format!(
                "/v1/datasets/{}/{}",
                path_part(&bu_id),
                path_part(&connector)
            );
            let v = server.call(settings, reqwest::Method::GET, &path).await?;
            if json {
                output::json(&v);
                return Ok(exit::OK);
            }
            let m = &v["manifest"];
            println!(
                "{bu_id}/{connector}: version {} ({} records, generation {}), promoted {}",
                text(&m["version"]),
                text(&m["records"]),
                text(&m["generation"]),
                text(&m["promoted_at"])
            );
            println!("\nkept versions (rollback targets):");
            let kept: Vec<Vec<String>> = v["kept_versions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|k| {
                    ["version", "records", "superseded_by", "restorable_until"]
                        .iter()
                        .map(|f| text(&k[*f]))
                        .collect()
                })
                .collect();
            output::table(
                &["VERSION", "RECORDS", "REPLACED BY", "RESTORABLE UNTIL"],
                &kept,
            );
            println!("\nrollbacks:");
            let rb: Vec<Vec<String>> = v["rollbacks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    [
                        "generation",
                        "from_version",
                        "to_version",
                        "actor",
                        "reason",
                        "at",
                    ]
                    .iter()
                    .map(|f| text(&r[*f]))
                    .collect()
                })
                .collect();
            output::table(&["GEN", "FROM", "TO", "BY", "REASON", "AT"], &rb);
            Ok(exit::OK)
        }
        DatasetsCmd::Diff {
            bu_id,
            connector,
            from,
            to,
            limit,
            cursor,
            server,
        } => {
            let mut path = format!(
                "/v1/datasets/{}/{}/diff?limit={limit}",
                path_part(&bu_id),
                path_part(&connector)
            );
            for (k, v) in [
                ("from", from.map(|v| v.to_string())),
                ("to", to.map(|v| v.to_string())),
                ("cursor", cursor),
            ] {
                if let Some(v) = v {
                    path.push_str(&format!("&{k}={}", path_part(&v)));
                }
            }
            let v = server.call(settings, reqwest::Method::GET, &path).await?;
            if json {
                output::json(&v);
                return Ok(exit::OK);
            }
            let c = &v["counts"];
            println!(
                "{} → {}: {} added, {} removed, {} changed, {} unchanged",
                text(&v["from"]),
                text(&v["to"]),
                text(&c["added"]),
                text(&c["removed"]),
                text(&c["changed"]),
                text(&c["unchanged"])
            );
            let mut rows = Vec::new();
            for ch in v["changes"].as_array().into_iter().flatten() {
                let id = text(&ch["id"]);
                match ch["change"].as_str() {
                    Some("changed") => {
                        for f in ch["fields"].as_array().into_iter().flatten() {
                            rows.push(vec![
                                "changed".into(),
                                id.clone(),
                                text(&f["field"]),
                                format!("{} → {}", text(&f["old"]), text(&f["new"])),
                            ]);
                        }
                    }
                    Some(kind) => rows.push(vec![
                        kind.into(),
                        id,
                        String::new(),
                        output::cell(&ch["record"].to_string(), 80),
                    ]),
                    None => {}
                }
            }
            output::table(&["CHANGE", "ID", "FIELD", "OLD → NEW / RECORD"], &rows);
            if let Some(next) = v["next_cursor"].as_str() {
                println!("more: --cursor {next}");
            }
            Ok(exit::OK)
        }
        DatasetsCmd::Rollback {
            bu_id,
            connector,
            to,
            reason,
            server,
        } => {
            if reason.trim().is_empty() {
                bail!("--reason: say why (it goes to the audit log)");
            }
            let path = format!(
                "/v1/datasets/{}/{}/rollback",
                path_part(&bu_id),
                path_part(&connector)
            );
            let body = json!({"version": to, "reason": reason});
            let v = server
                .call_with(settings, reqwest::Method::POST, &path, Some(&body))
                .await?;
            if json {
                output::json(&v);
            } else if v["changed"] == true {
                println!(
                    "{bu_id}/{connector}: version {} → {} (generation {}, cache counter {})",
                    text(&v["from_version"]),
                    text(&v["manifest"]["version"]),
                    text(&v["manifest"]["generation"]),
                    text(&v["cache_counter"])
                );
            } else {
                println!(
                    "{bu_id}/{connector}: version {to} is already the promoted one; nothing changed"
                );
            }
            Ok(exit::OK)
        }
    }
}
