//! `etlq connectors list|preview|suggest`: the configured connectors with their kind; what a
//! file would give with a connector (a running server's `POST /v1/connectors/…/preview`, so
//! the same limits and isolation apply and nothing is stored); and a connector TOML
//! suggested from a file's header (read here, nothing sent).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;

use etlq::configuration::Settings;
use etlq::etl::connector::SheetRef;
use etlq::startup::CheckedSettings;

use super::remote::{Server, answer};
use super::{exit, output};

#[derive(Subcommand)]
pub enum ConnectorsCmd {
    /// The configured connectors and their kind (sheet, csv, html, command).
    List,
    /// What an upload of FILE would give: format, header match, first typed rows and
    /// rejections, and whether it would succeed. Nothing is stored, no job is created.
    Preview {
        /// The file to try.
        file: PathBuf,
        /// A configured connector.
        #[arg(long, required_unless_present = "toml")]
        connector: Option<String>,
        /// A connector not yet in the config: a TOML file with the connector's keys (sheet,
        /// header, columns, …), or a `[connectors.NAME]` table as `suggest` prints it.
        #[arg(long, value_name = "FILE")]
        toml: Option<PathBuf>,
        #[command(flatten)]
        server: Server,
    },
    /// Print a connector TOML for the header FILE shows, ready to paste into the config
    /// (choose the key columns yourself).
    Suggest {
        /// A workbook, CSV/TSV or HTML export.
        file: PathBuf,
        /// The connector's name in the printed TOML.
        #[arg(long, default_value = "my_connector")]
        name: String,
        /// Workbooks: the sheet to read (name or 0-based number; default: the first).
        #[arg(long)]
        sheet: Option<String>,
    },
}

pub async fn connectors(settings: &Settings, cmd: ConnectorsCmd, json: bool) -> anyhow::Result<u8> {
    match cmd {
        ConnectorsCmd::List => {
            // Checked at startup (`CheckedSettings`): every one builds.
            let list: Vec<Value> = settings
                .connectors()?
                .values()
                .map(|c| {
                    serde_json::json!({
                        "name": c.name,
                        "kind": c.kind(),
                        "columns": c.spec.columns.len(),
                    })
                })
                .collect();
            if json {
                output::json(&list);
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|v| {
                        vec![
                            v["name"].as_str().unwrap_or("").into(),
                            v["kind"].as_str().unwrap_or("").into(),
                            v["columns"].to_string(),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "KIND", "COLUMNS"], &rows);
            }
            Ok(exit::OK)
        }
        ConnectorsCmd::Preview {
            file,
            connector,
            toml,
            server,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "upload".into());
            let mut form = reqwest::multipart::Form::new();
            if let Some(path) = &toml {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                form = form.text("connector", connector_body(&text)?);
            }
            form = form.part(
                "file",
                reqwest::multipart::Part::bytes(bytes).file_name(name),
            );
            let path = match (&connector, &toml) {
                (Some(c), _) => format!("/v1/connectors/{c}/preview"),
                (None, _) => "/v1/connectors/preview".into(),
            };
            let url = format!("{}{path}", server.base(settings));
            let mut req = server.client()?.post(&url).multipart(form);
            if let Some(t) = &server.token {
                req = req.bearer_auth(t);
            }
            let resp = req
                .send()
                .await
                .with_context(|| format!("cannot reach etlq at {url}"))?;
            let p = answer(&url, resp).await?;
            if json {
                output::json(&p);
            } else {
                print_preview(&p);
            }
            Ok(if p["would_succeed"] == true {
                exit::OK
            } else {
                exit::JOB_DEAD
            })
        }
        ConnectorsCmd::Suggest { file, name, sheet } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let sheet = match sheet {
                None => SheetRef::Index(0),
                Some(s) => s.parse().map(SheetRef::Index).unwrap_or(SheetRef::Name(s)),
            };
            let label = file.display().to_string();
            let text = etlq::etl::suggest::suggest(
                bytes,
                &name,
                &sheet,
                settings.etl.max_inflated_bytes,
                &label,
            )
            .with_context(|| format!("reading {label}"))?;
            print!("{text}");
            Ok(exit::OK)
        }
    }
}

/// The connector's own keys from a TOML file: a bare connector, or the one
/// `[connectors.NAME]` table in it.
fn connector_body(text: &str) -> anyhow::Result<String> {
    let doc: toml::Table = toml::from_str(text).context("the connector TOML")?;
    if let Some(toml::Value::Table(all)) = doc.get("connectors") {
        let mut it = all.values();
        match (it.next(), it.next()) {
            (Some(toml::Value::Table(one)), None) => return Ok(toml::to_string(one)?),
            _ => anyhow::bail!("the TOML file must hold one [connectors.NAME] table"),
        }
    }
    Ok(text.to_string())
}

fn print_preview(p: &Value) {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    println!("{}", s(&p["verdict"]));
    let f = &p["format"];
    if f.is_object() {
        let mut line = format!("format: {}", s(&f["format"]));
        if let Some(e) = f["encoding"].as_str() {
            line.push_str(&format!(", encoding {e}"));
        }
        if let Some(d) = f["delimiter"].as_str() {
            line.push_str(&format!(", delimiter {d:?}"));
        }
        println!("{line}");
    }
    if let Some(sheet) = p["sheet"].as_str() {
        println!("sheet: {sheet:?}, header row: {}", p["header_row"]);
    }
    if let Some(cols) = p["columns"].as_array()
        && !cols.is_empty()
    {
        let rows: Vec<Vec<String>> = cols
            .iter()
            .map(|c| {
                vec![
                    s(&c["name"]),
                    s(&c["header"]),
                    match c["column"].as_str() {
                        Some(col) => format!("{col}: {}", s(&c["found"])),
                        None if c["required"] == true => "MISSING".into(),
                        None => "absent (optional)".into(),
                    },
                    c["nearest"]
                        .as_str()
                        .map(|n| format!("nearest: {n:?}"))
                        .unwrap_or_default(),
                ]
            })
            .collect();
        output::table(&["COLUMN", "HEADER", "FOUND", ""], &rows);
    }
    println!(
        "{} records, {} rejected ({:.1}% of max {:.1}%), {} skipped",
        p["records"],
        p["rejected_rows"],
        p["rejected_ratio"].as_f64().unwrap_or(0.0) * 100.0,
        p["max_rejected_ratio"].as_f64().unwrap_or(0.0) * 100.0,
        p["skipped_rows"]
    );
    if let Some(rows) = p["rows"].as_array() {
        for r in rows.iter().take(10) {
            println!("  {r}");
        }
        if rows.len() > 10 {
            println!("  … {} more in --json", rows.len() - 10);
        }
    }
    if let Some(rej) = p["rejections"].as_array() {
        for r in rej.iter().take(10) {
            println!(
                "  rejected row {} column {:?}: {} ({:?})",
                r["row"],
                s(&r["column"]),
                s(&r["reason"]),
                s(&r["value"])
            );
        }
    }
}
