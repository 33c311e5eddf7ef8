//! Connectors as configuration writes them (`[connectors.NAME]`): plain data, checked and
//! applied by `etl::connector`. Kept here so that `configuration` depends on nothing else in
//! the crate (ARCHITECTURE.md: configuration is a leaf).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which sheet to read.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum SheetRef {
    /// 0-based position in the workbook.
    Index(usize),
    Name(String),
}

/// Where the header row is.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum HeaderRef {
    /// 1-based row number, as Excel shows it.
    Row(usize),
    /// `"auto"`: the first row holding every required header within `header_search_rows`.
    Auto(String),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// Field name in the output records.
    pub name: String,
    /// Header text to match (case- and whitespace-insensitive).
    pub header: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
    #[serde(default)]
    pub required: bool,
    /// Key columns make the document id (with bu_id and connector).
    #[serde(default)]
    pub key: bool,
    /// Decimal columns: the number of places every value is written with (`-4871` →
    /// `"-4871.00"`); a value with more places is rejected, never rounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorSpec {
    /// Workbooks: which sheet (default: the first). Text formats have one table.
    #[serde(default = "first_sheet")]
    pub sheet: SheetRef,
    #[serde(default = "auto_header")]
    pub header: HeaderRef,
    /// `auto` (by content), `workbook`, `csv` or `html`.
    #[serde(default)]
    pub format: SourceFormat,
    /// Text files: `auto`, `utf-8`, `utf-16le`, `utf-16be` or `windows-1252`.
    #[serde(default)]
    pub encoding: TextEncoding,
    /// Delimited text: `,` `;` `\t` `|` (default: sniffed from the first lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<char>,
    /// A command that extracts the records instead of the built-in reader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extractor: Option<ExtractorSpec>,
    #[serde(default = "default_search_rows")]
    pub header_search_rows: usize,
    pub columns: Vec<ColumnSpec>,
    #[serde(default = "yes")]
    pub skip_blank_rows: bool,
    /// Rows whose key column's text matches one of these regexes are skipped (subtotals).
    #[serde(default)]
    pub skip_key_patterns: Vec<String>,
    #[serde(default)]
    pub locale: Locale,
    /// Largest share of data rows that may be rejected before the file fails (0.0–1.0).
    #[serde(default = "default_reject_ratio")]
    pub max_rejected_ratio: f64,
}

fn first_sheet() -> SheetRef {
    SheetRef::Index(0)
}
fn auto_header() -> HeaderRef {
    HeaderRef::Auto("auto".into())
}
fn default_search_rows() -> usize {
    20
}
fn yes() -> bool {
    true
}
fn default_reject_ratio() -> f64 {
    0.05
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    String,
    Integer,
    Decimal,
    Date,
    Datetime,
    Bool,
}

/// How numbers and dates held as text are written in an export.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Locale {
    pub decimal_separator: char,
    /// `None` accepts no grouping characters at all.
    pub thousands_separator: Option<char>,
    /// chrono formats tried in order for dates held as text; ISO `%Y-%m-%d` is always tried last.
    pub date_formats: Vec<String>,
}

impl Default for Locale {
    fn default() -> Self {
        Locale {
            decimal_separator: '.',
            thousands_separator: Some(','),
            date_formats: Vec::new(),
        }
    }
}

/// How a connector reads its files (`format` on a connector).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// Decided by content: a workbook, an HTML table or delimited text.
    #[default]
    Auto,
    /// Only workbooks (xlsx, xlsm, xlsb, xls, ods).
    Workbook,
    /// Delimited text (CSV, TSV, `;` or `|` separated), whatever the content looks like.
    Csv,
    /// An HTML table (SAP's "spreadsheet" export).
    Html,
}

/// The character encoding of a text file (`encoding` on a connector).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum TextEncoding {
    /// A byte-order mark decides; without one, UTF-8 when the bytes are valid UTF-8, else
    /// Windows-1252 (what Excel writes for "CSV" on a western Windows).
    #[default]
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "utf-8")]
    Utf8,
    /// What Excel's "Unicode text" writes (with a BOM).
    #[serde(rename = "utf-16le")]
    Utf16Le,
    #[serde(rename = "utf-16be")]
    Utf16Be,
    #[serde(rename = "windows-1252")]
    Windows1252,
}

/// The format a command extractor writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordsFormat {
    #[default]
    Json,
    Jsonl,
    Csv,
}

/// Where the command writes its records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputChannel {
    /// The file named by `{output}` in the command.
    #[default]
    File,
    Stdout,
}

pub const DEFAULT_TIMEOUT_MS: u64 = 600_000;
pub const DEFAULT_MEMORY_LIMIT_MB: u64 = 2048;
pub const DEFAULT_MAX_OUTPUT_MB: u64 = 4096;

/// `extractor = { … }` on a connector.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractorSpec {
    /// Program and arguments; `{input}` is the staged source file (with its extension),
    /// `{output}` a file in the job's work directory.
    pub command: Vec<String>,
    #[serde(default)]
    pub output: OutputChannel,
    #[serde(default)]
    pub format: RecordsFormat,
    /// JSON: the dotted path of the records array in the document (absent: the top level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<String>,
    /// The command's whole environment besides PATH, LANG and HOME.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_memory_limit_mb")]
    pub memory_limit_mb: u64,
    /// Largest output the command may write (file or stdout).
    #[serde(default = "default_max_output_mb")]
    pub max_output_mb: u64,
    /// Where the command runs (default: the worker's working directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<PathBuf>,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_memory_limit_mb() -> u64 {
    DEFAULT_MEMORY_LIMIT_MB
}
fn default_max_output_mb() -> u64 {
    DEFAULT_MAX_OUTPUT_MB
}
