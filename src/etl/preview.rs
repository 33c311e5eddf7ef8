//! Connector preview: what an upload of a file would give, before any job exists — the
//! detected format, the header row and which header matched which column, the first typed
//! records and rejections, and the verdict ("would succeed" / "would go dead because …").
//! Runs in the extract child (`etl/child.rs`) with the same limits and isolation as extract;
//! nothing is stored.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use serde::{Deserialize, Serialize};

use super::connector::{ColumnMatch, Connector, HeaderMatch};
use super::extractor::CommandReport;
use super::mapping::RejectedRow;
use super::parse::{ParseError, parse_rows};
use super::workbook::{FormatInfo, SheetReader};

/// Records and rejections shown.
pub const PREVIEW_ROWS: usize = 50;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Preview {
    pub connector: String,
    /// `sheet`, `csv`, `html` or `command`.
    pub kind: String,
    /// True when the upload would succeed.
    pub would_succeed: bool,
    /// "this upload would succeed …" or "this upload would go dead because …".
    pub verdict: String,
    pub format: Option<FormatInfo>,
    pub sheet: Option<String>,
    /// 1-based, as a spreadsheet shows it.
    pub header_row: Option<usize>,
    pub columns: Vec<ColumnMatch>,
    /// Required headers not found (each with the nearest text, when one is close).
    pub missing: Vec<String>,
    pub data_rows: usize,
    pub records: usize,
    pub skipped_rows: usize,
    pub rejected_rows: usize,
    pub rejected_ratio: f64,
    pub max_rejected_ratio: f64,
    /// The first typed records, as the sink would store them.
    pub rows: Vec<serde_json::Value>,
    pub rejections: Vec<RejectedRow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extractor: Option<CommandReport>,
}

/// Keeps the first `PREVIEW_ROWS` lines of the records artifact, drops the rest.
#[derive(Default)]
pub struct FirstLines {
    lines: Vec<Vec<u8>>,
    partial: Vec<u8>,
}

impl Write for FirstLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.lines.len() >= PREVIEW_ROWS {
            return Ok(buf.len());
        }
        for &b in buf {
            if b == b'\n' {
                self.lines.push(std::mem::take(&mut self.partial));
                if self.lines.len() >= PREVIEW_ROWS {
                    break;
                }
            } else {
                self.partial.push(b);
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Previews `sheet` with `connector`. `extractor`: the command's run, for command connectors.
pub fn preview(
    connector: &Connector,
    sheet: Result<SheetReader, ParseError>,
    bu_id: &str,
) -> Result<Preview, ParseError> {
    let mut p = Preview {
        connector: connector.name.clone(),
        kind: connector.kind().into(),
        would_succeed: false,
        verdict: String::new(),
        format: None,
        sheet: None,
        header_row: None,
        columns: Vec::new(),
        missing: Vec::new(),
        data_rows: 0,
        records: 0,
        skipped_rows: 0,
        rejected_rows: 0,
        rejected_ratio: 0.0,
        max_rejected_ratio: connector.spec.max_rejected_ratio,
        rows: Vec::new(),
        rejections: Vec::new(),
        extractor: None,
    };
    let sheet = match sheet {
        Ok(s) => s,
        Err(ParseError::Io(m)) => return Err(ParseError::Io(m)),
        Err(e) => {
            p.verdict = format!("this upload would go dead because {e}");
            return Ok(p);
        }
    };
    p.format = Some(sheet.format_info());
    p.sheet = Some(sheet.name.clone());
    // The whole file is mapped (the ratio needs every row); the verdict applies the limit.
    let mut spec = connector.spec.clone();
    spec.max_rejected_ratio = 1.0;
    let relaxed = Connector::new(&connector.name, spec).map_err(ParseError::Layout)?;
    let seen: Mutex<Option<HeaderMatch>> = Mutex::new(None);
    let on_header = |m: &HeaderMatch| {
        *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(m.clone());
    };
    let mut first = FirstLines::default();
    let parsed = parse_rows(
        &relaxed,
        sheet,
        bu_id,
        &mut first,
        &AtomicUsize::new(0),
        &|| false,
        Some(&on_header),
    );
    if let Some(m) = seen.into_inner().unwrap_or_else(|p| p.into_inner()) {
        p.header_row = m.row.map(|r| r + 1);
        p.missing = m.missing();
        p.columns = m.columns;
    }
    p.rows = first
        .lines
        .iter()
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .filter_map(|mut v| v.get_mut("data").map(serde_json::Value::take))
        .collect();
    let parsed = match parsed {
        Ok(Some(parsed)) => parsed,
        Ok(None) => unreachable!("a preview is never cancelled"),
        Err(ParseError::Io(m)) => return Err(ParseError::Io(m)),
        Err(e) => {
            p.verdict = format!("this upload would go dead because {e}");
            return Ok(p);
        }
    };
    p.data_rows = parsed.report.data_rows;
    p.records = parsed.records;
    p.skipped_rows = parsed.report.skipped_rows;
    p.rejected_rows = parsed.report.rejected_rows;
    p.rejections = parsed.rejected.into_iter().take(PREVIEW_ROWS).collect();
    let considered = p.records + p.rejected_rows;
    p.rejected_ratio = if considered == 0 {
        0.0
    } else {
        p.rejected_rows as f64 / considered as f64
    };
    if p.rejected_ratio > p.max_rejected_ratio {
        p.verdict = format!(
            "this upload would go dead because {} of {considered} rows were rejected ({:.1}%), more than max_rejected_ratio allows ({:.1}%)",
            p.rejected_rows,
            p.rejected_ratio * 100.0,
            p.max_rejected_ratio * 100.0
        );
    } else {
        p.would_succeed = true;
        p.verdict = format!(
            "this upload would succeed: {} records, {} rows rejected, {} skipped",
            p.records, p.rejected_rows, p.skipped_rows
        );
    }
    Ok(p)
}
