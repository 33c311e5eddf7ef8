//! Connectors: named mappings of an ERP export layout (sheet, header row, typed columns, row
//! filters, locale), and the grid logic that applies one: header detection and row mapping.

use std::borrow::Cow;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::coerce::{Cell, ColumnType, Value, as_text, coerce, normalize_header, text_of};
use super::workbook::TextOptions;
use super::workbook::detect::SourceFormat;

pub use crate::configuration::connector::{ColumnSpec, ConnectorSpec, HeaderRef, SheetRef};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConnectorError {
    #[error("connector {0}: {1}")]
    Invalid(String, String),
    /// The file does not have this connector's layout (non-retryable).
    #[error("{0}")]
    Layout(String),
}

/// The header is looked for in the first rows only.
pub const MAX_HEADER_ROW: usize = 100;

/// A connector checked and ready to apply.
#[derive(Debug, Clone)]
pub struct Connector {
    pub name: String,
    pub spec: ConnectorSpec,
    skip: Vec<Regex>,
    /// Key columns' positions in `spec.columns` (and in a `Record`).
    keys: Vec<usize>,
    /// `"name":` as JSON, per column, in name order (a record's JSON has sorted keys).
    json_keys: Vec<(usize, String)>,
}

/// One mapped row: a value per column of the connector, in `spec.columns` order.
pub type Record<'a> = Vec<Value<'a>>;

impl Connector {
    pub fn new(name: &str, spec: ConnectorSpec) -> Result<Self, ConnectorError> {
        let invalid = |m: String| ConnectorError::Invalid(name.to_string(), m);
        if spec.columns.is_empty() {
            return Err(invalid("has no columns".into()));
        }
        if !spec.columns.iter().any(|c| c.key) {
            return Err(invalid("needs at least one key column".into()));
        }
        let mut seen = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for c in &spec.columns {
            if !seen.insert(normalize_header(&c.header)) {
                return Err(invalid(format!("header {:?} is mapped twice", c.header)));
            }
            if !names.insert(c.name.as_str()) {
                return Err(invalid(format!("column name {:?} is used twice", c.name)));
            }
        }
        if let HeaderRef::Auto(s) = &spec.header
            && s != "auto"
        {
            return Err(invalid(format!(
                "header must be a row number or \"auto\", not {s:?}"
            )));
        }
        // The header region is buffered before the column limit is known: keep it small.
        let header_row = match spec.header {
            HeaderRef::Row(n) => n,
            HeaderRef::Auto(_) => 0,
        };
        if header_row > MAX_HEADER_ROW || spec.header_search_rows > MAX_HEADER_ROW {
            return Err(invalid(format!(
                "header row and header_search_rows must be at most {MAX_HEADER_ROW}"
            )));
        }
        for c in &spec.columns {
            match c.scale {
                Some(_) if c.ty != ColumnType::Decimal => {
                    return Err(invalid(format!(
                        "column {:?}: scale applies to decimal columns only",
                        c.name
                    )));
                }
                Some(s) if s > 28 => {
                    return Err(invalid(format!(
                        "column {:?}: scale must be at most 28",
                        c.name
                    )));
                }
                _ => {}
            }
        }
        if let Some(d) = spec.delimiter
            && !matches!(d, ',' | ';' | '\t' | '|')
        {
            return Err(invalid(format!(
                "delimiter must be one of ',' ';' '\\t' '|', not {d:?}"
            )));
        }
        if let Some(x) = &spec.extractor {
            x.check().map_err(invalid)?;
            if matches!(spec.header, HeaderRef::Row(n) if n != 1)
                && x.format != super::workbook::records::RecordsFormat::Csv
            {
                return Err(invalid(
                    "a command extractor's JSON records have their header in row 1".into(),
                ));
            }
        }
        if !(0.0..=1.0).contains(&spec.max_rejected_ratio) {
            return Err(invalid("max_rejected_ratio must be between 0 and 1".into()));
        }
        let skip = spec
            .skip_key_patterns
            .iter()
            .map(|p| Regex::new(p).map_err(|e| invalid(format!("pattern {p:?}: {e}"))))
            .collect::<Result<_, _>>()?;
        let keys = (0..spec.columns.len())
            .filter(|i| spec.columns[*i].key)
            .collect();
        let mut json_keys: Vec<(usize, String)> = spec
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let name = serde_json::to_string(&c.name).expect("strings serialise");
                (i, format!("{name}:"))
            })
            .collect();
        json_keys.sort_by(|a, b| spec.columns[a.0].name.cmp(&spec.columns[b.0].name));
        Ok(Connector {
            name: name.to_string(),
            spec,
            skip,
            keys,
            json_keys,
        })
    }

    /// The columns' header texts, in spec order (what a command extractor's record keys match).
    pub fn headers(&self) -> Vec<String> {
        self.spec.columns.iter().map(|c| c.header.clone()).collect()
    }

    /// `sheet`, `csv`, `html` or `command`: how this connector reads its files.
    pub fn kind(&self) -> &'static str {
        if self.spec.extractor.is_some() {
            return "command";
        }
        match self.spec.format {
            SourceFormat::Csv => "csv",
            SourceFormat::Html => "html",
            SourceFormat::Auto | SourceFormat::Workbook => "sheet",
        }
    }

    pub fn text_options(&self) -> TextOptions {
        TextOptions {
            format: self.spec.format,
            encoding: self.spec.encoding,
            delimiter: self.spec.delimiter,
        }
    }

    /// How the header rows look against this connector: the row that matched (or the one
    /// that came closest) and, per column, the header cell found or the nearest text.
    pub fn match_header(&self, rows: &[Vec<Cell<'_>>]) -> HeaderMatch {
        let wanted: Vec<String> = self
            .spec
            .columns
            .iter()
            .map(|c| normalize_header(&c.header))
            .collect();
        let match_row = |row: &[Cell<'_>]| -> Vec<Option<usize>> {
            let texts: Vec<String> = row.iter().map(|c| normalize_header(&as_text(c))).collect();
            wanted
                .iter()
                .map(|w| texts.iter().position(|t| t == w))
                .collect()
        };
        let complete = |found: &[Option<usize>]| {
            self.spec
                .columns
                .iter()
                .zip(found)
                .all(|(c, f)| !c.required || f.is_some())
        };
        let candidates: Vec<usize> = match self.spec.header {
            HeaderRef::Row(n) if n >= 1 => vec![n - 1],
            HeaderRef::Row(_) => vec![0],
            HeaderRef::Auto(_) => (0..self.spec.header_search_rows.min(rows.len())).collect(),
        };
        let mut best: Option<(usize, Vec<Option<usize>>)> = None;
        let mut matched = false;
        for r in candidates {
            let Some(row) = rows.get(r) else { continue };
            let found = match_row(row);
            if complete(&found) {
                best = Some((r, found));
                matched = true;
                break;
            }
            let hits = found.iter().flatten().count();
            if best
                .as_ref()
                .is_none_or(|(_, b)| hits > b.iter().flatten().count())
            {
                best = Some((r, found));
            }
        }
        let empty: Vec<Cell<'_>> = Vec::new();
        let (row, found) = match best {
            Some((r, f)) => (Some(r), f),
            None => (None, vec![None; wanted.len()]),
        };
        let texts: Vec<String> = row
            .and_then(|r| rows.get(r))
            .unwrap_or(&empty)
            .iter()
            .map(as_text)
            .collect();
        let used: std::collections::HashSet<usize> = found.iter().flatten().copied().collect();
        let columns = self
            .spec
            .columns
            .iter()
            .zip(&found)
            .zip(&wanted)
            .map(|((c, f), w)| ColumnMatch {
                name: c.name.clone(),
                header: c.header.clone(),
                required: c.required,
                key: c.key,
                found: f.map(|i| texts[i].clone()),
                column: f.map(column_letter),
                nearest: match f {
                    Some(_) => None,
                    None => texts
                        .iter()
                        .enumerate()
                        .filter(|(i, t)| !used.contains(i) && !t.is_empty())
                        .map(|(_, t)| (strsim::normalized_levenshtein(w, &normalize_header(t)), t))
                        .filter(|(score, _)| *score >= 0.4)
                        .max_by(|a, b| a.0.total_cmp(&b.0))
                        .map(|(_, t)| t.clone()),
                },
            })
            .collect();
        HeaderMatch {
            row,
            matched,
            columns,
            positions: found,
        }
    }

    /// Finds the header row in `rows` (the sheet's first rows, 0-based) and maps each column
    /// spec to a column index.
    pub fn locate_header(
        &self,
        sheet: &str,
        rows: &[Vec<Cell<'_>>],
    ) -> Result<Header, ConnectorError> {
        self.header_of(sheet, &self.match_header(rows))
    }

    /// The header of a match, or the error naming what is missing (and the nearest text).
    pub fn header_of(&self, sheet: &str, m: &HeaderMatch) -> Result<Header, ConnectorError> {
        if m.matched {
            return Ok(Header {
                row: m.row.unwrap_or(0),
                columns: m.positions.clone(),
            });
        }
        let missing = m.missing();
        let scope = match self.spec.header {
            HeaderRef::Row(n) => format!("row {n}"),
            HeaderRef::Auto(_) => format!("the first {} rows", self.spec.header_search_rows),
        };
        Err(ConnectorError::Layout(format!(
            "header row not found in sheet {sheet:?}: missing {} in {scope}",
            missing.join(", ")
        )))
    }

    /// Maps one data row (0-based `row_index` in the sheet).
    pub fn map_row<'a>(&self, header: &Header, row: &[Cell<'a>]) -> RowOutcome<'a> {
        let cell = |i: Option<usize>| i.and_then(|i| row.get(i)).unwrap_or(&Cell::Empty);
        let blank = header.columns.iter().all(|i| cell(*i).is_blank());
        if blank {
            return if self.spec.skip_blank_rows {
                RowOutcome::Skipped
            } else {
                RowOutcome::Rejected(vec![Rejection {
                    column: String::new(),
                    value: String::new(),
                    reason: "blank row".into(),
                }])
            };
        }
        if !self.skip.is_empty() {
            for k in &self.keys {
                let text: Cow<'_, str> = text_of(cell(header.columns[*k]));
                if self.skip.iter().any(|re| re.is_match(&text)) {
                    return RowOutcome::Skipped;
                }
            }
        }
        let mut record = Vec::with_capacity(self.spec.columns.len());
        let mut rejections = Vec::new();
        for (spec, idx) in self.spec.columns.iter().zip(&header.columns) {
            let c = cell(*idx);
            match coerce(c, spec.ty, &self.spec.locale) {
                Ok(Value::Null) if spec.required => rejections.push(Rejection {
                    column: spec.header.clone(),
                    value: String::new(),
                    reason: "required value missing".into(),
                }),
                Ok(Value::Decimal(d)) if let Some(scale) = spec.scale => {
                    match rescaled(d, scale) {
                        Some(d) => record.push(Value::Decimal(d)),
                        None => rejections.push(Rejection {
                            column: spec.header.clone(),
                            value: as_text(c),
                            reason: format!(
                                "{} has more than {scale} decimal places (the column's scale); it is not rounded",
                                d.normalize()
                            ),
                        }),
                    }
                }
                Ok(v) => record.push(v),
                Err(e) => rejections.push(Rejection {
                    column: spec.header.clone(),
                    value: as_text(c),
                    reason: e.0,
                }),
            }
        }
        if rejections.is_empty() {
            RowOutcome::Record(record)
        } else {
            RowOutcome::Rejected(rejections)
        }
    }

    /// The key columns' values, in spec order (for deterministic document ids).
    pub fn key_of<'r, 'a>(&self, record: &'r Record<'a>) -> Vec<&'r Value<'a>> {
        self.keys.iter().map(|k| &record[*k]).collect()
    }

    /// The value of column `name` in `record`.
    pub fn value<'r, 'a>(&self, record: &'r Record<'a>, name: &str) -> Option<&'r Value<'a>> {
        let i = self.spec.columns.iter().position(|c| c.name == name)?;
        record.get(i)
    }

    /// Appends `record` as a JSON object with its keys in name order: the same bytes serde_json
    /// gives for a map of the columns (a test holds the two equal), without building the map.
    pub fn write_json(&self, record: &Record<'_>, out: &mut String) {
        out.push('{');
        for (n, (i, key)) in self.json_keys.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push_str(key);
            super::artifact::write_value(&record[*i], out);
        }
        out.push('}');
    }
}

/// `d` written with exactly `scale` places, or `None` when that would drop a non-zero digit.
fn rescaled(d: rust_decimal::Decimal, scale: u32) -> Option<rust_decimal::Decimal> {
    if d.normalize().scale() > scale {
        return None;
    }
    let mut d = d;
    d.rescale(scale);
    Some(d)
}

/// How one column's header was looked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnMatch {
    pub name: String,
    pub header: String,
    pub required: bool,
    pub key: bool,
    /// The header text found for it, as written in the file.
    pub found: Option<String>,
    /// Its column, as a spreadsheet letter (`A`, `AB`).
    pub column: Option<String>,
    /// Not found: the most similar header text in the row looked at.
    pub nearest: Option<String>,
}

impl HeaderMatch {
    /// The required headers not found, each with the nearest text when one is close.
    pub fn missing(&self) -> Vec<String> {
        self.columns
            .iter()
            .filter(|c| c.required && c.found.is_none())
            .map(|c| match &c.nearest {
                Some(n) => format!("{:?} (nearest: {n:?})", c.header),
                None => format!("{:?}", c.header),
            })
            .collect()
    }
}

/// The header row as looked for: the row (0-based) that matched or came closest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeaderMatch {
    pub row: Option<usize>,
    /// Every required header was found in `row`.
    pub matched: bool,
    pub columns: Vec<ColumnMatch>,
    /// Per column spec, its 0-based position in `row`.
    #[serde(skip)]
    pub positions: Vec<Option<usize>>,
}

/// 0 → `A`, 27 → `AB`.
pub fn column_letter(mut i: usize) -> String {
    let mut s = Vec::new();
    loop {
        s.push(b'A' + (i % 26) as u8);
        if i < 26 {
            break;
        }
        i = i / 26 - 1;
    }
    s.reverse();
    String::from_utf8(s).expect("ASCII")
}

/// The located header: its 0-based row and, per column spec, the 0-based column (None for an
/// optional column absent from this file).
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub row: usize,
    pub columns: Vec<Option<usize>>,
}

impl Header {
    /// One past the rightmost mapped column: nothing further right is ever read.
    pub fn width(&self) -> usize {
        self.columns.iter().flatten().max().map_or(0, |c| c + 1)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RowOutcome<'a> {
    Record(Record<'a>),
    Skipped,
    Rejected(Vec<Rejection>),
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Rejection {
    pub column: String,
    pub value: String,
    pub reason: String,
}

/// A SAP FBL3N-like G/L line-item layout, shared by the tests of this module and `mapping`.
#[cfg(test)]
pub(crate) fn sap_gl_spec() -> ConnectorSpec {
    toml::from_str(
        r#"
        sheet = "GL"
        header = "auto"
        skip_key_patterns = ['^\*']
        locale = { decimal_separator = ",", thousands_separator = ".", date_formats = ["%d.%m.%Y"] }
        columns = [
          { name = "document", header = "Document Number", type = "string", required = true, key = true },
          { name = "posting_date", header = "Posting Date", type = "date", required = true },
          { name = "amount", header = "Amount in LC", type = "decimal", required = true },
          { name = "text", header = "Text", type = "string" },
        ]
        "#,
    )
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    fn gl() -> Connector {
        Connector::new("sap_fbl3n", sap_gl_spec()).unwrap()
    }

    fn t(s: &str) -> Cell<'_> {
        Cell::Text(s.into())
    }

    #[test]
    fn finds_the_header_below_title_rows_and_maps_columns_by_text() {
        let rows = vec![
            vec![t("G/L Account Line Items")],
            vec![],
            vec![
                t("Amount in  LC"),
                t(" posting  DATE "),
                t("Document Number"),
            ],
        ];
        let h = gl().locate_header("GL", &rows).unwrap();
        assert_eq!(h.row, 2);
        assert_eq!(h.columns, vec![Some(2), Some(1), Some(0), None]);
    }

    #[test]
    fn a_missing_header_names_what_is_missing_and_where() {
        let rows = vec![vec![t("Document Number"), t("Text")]];
        let e = gl().locate_header("GL", &rows).unwrap_err();
        assert_eq!(
            e,
            ConnectorError::Layout(
                "header row not found in sheet \"GL\": missing \"Posting Date\", \"Amount in LC\" in the first 20 rows".into()
            )
        );
    }

    #[test]
    fn rows_become_records_are_skipped_or_rejected_with_reasons() {
        let c = gl();
        let h = Header {
            row: 0,
            columns: vec![Some(0), Some(1), Some(2), Some(3)],
        };
        match c.map_row(
            &h,
            &[t("100001"), t("31.12.2025"), t("1.234,56-"), t("rent")],
        ) {
            RowOutcome::Record(r) => {
                assert_eq!(
                    c.value(&r, "amount"),
                    Some(&Value::Decimal(Decimal::new(-123456, 2)))
                );
                assert_eq!(c.key_of(&r), vec![&Value::String("100001".into())]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            c.map_row(&h, &[t("** Total"), Cell::Empty, t("99,00")]),
            RowOutcome::Skipped
        );
        assert_eq!(c.map_row(&h, &[Cell::Empty, t("  ")]), RowOutcome::Skipped);
        match c.map_row(&h, &[t("100002"), t("31.02.2025"), Cell::Empty]) {
            RowOutcome::Rejected(r) => {
                assert_eq!(r.len(), 2);
                assert_eq!(
                    (r[0].column.as_str(), r[0].value.as_str()),
                    ("Posting Date", "31.02.2025")
                );
                assert_eq!(r[1].reason, "required value missing");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_decimal_scale_pads_every_value_and_rejects_more_places() {
        let mut spec = sap_gl_spec();
        spec.columns[2].scale = Some(2);
        let c = Connector::new("gl", spec).unwrap();
        let h = Header {
            row: 0,
            columns: vec![Some(0), Some(1), Some(2), None],
        };
        let amount = |raw: Cell<'static>| match c.map_row(&h, &[t("1"), t("31.12.2025"), raw]) {
            RowOutcome::Record(r) => {
                let mut out = String::new();
                super::super::artifact::write_value(&r[2], &mut out);
                Ok(out)
            }
            RowOutcome::Rejected(r) => Err(r[0].reason.clone()),
            RowOutcome::Skipped => Err("skipped".into()),
        };
        assert_eq!(amount(Cell::Int(-4871)), Ok("\"-4871.00\"".into()));
        assert_eq!(amount(Cell::Float(-1212.7)), Ok("\"-1212.70\"".into()));
        assert_eq!(amount(t("1.234,56-")), Ok("\"-1234.56\"".into()));
        assert_eq!(
            amount(t("1,5000")),
            Ok("\"1.50\"".into()),
            "trailing zeros are not places"
        );
        assert_eq!(
            amount(t("0,125")),
            Err(
                "0.125 has more than 2 decimal places (the column's scale); it is not rounded"
                    .into()
            )
        );
        let mut spec = sap_gl_spec();
        spec.columns[0].scale = Some(2);
        assert!(
            Connector::new("gl", spec).is_err(),
            "scale on a string column"
        );
    }

    #[test]
    fn invalid_connectors_are_refused_with_their_name() {
        let mut spec = gl().spec;
        spec.skip_key_patterns = vec!["(".into()];
        let e = Connector::new("broken", spec).unwrap_err();
        assert!(
            e.to_string().starts_with("connector broken: pattern"),
            "{e}"
        );
        let mut spec = gl().spec;
        spec.columns.iter_mut().for_each(|c| c.key = false);
        assert!(Connector::new("nokey", spec).is_err());
    }
}
