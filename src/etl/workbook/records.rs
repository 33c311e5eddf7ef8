//! A command extractor's output as one sheet: JSON (an array of objects, at the top level or
//! at a dotted path), JSON lines, or CSV with a header line. Streamed: one record is held at
//! a time, so a million-record document costs what one record does.
//!
//! JSON records become rows under a header row the reader writes itself (row 0): the
//! connector's headers that the first record has, then the first record's other keys (so a
//! missing column can be explained by the nearest key). Numbers keep their text exactly
//! (`-31007.2` is the decimal -31007.2, never a float).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::str::FromStr;

use rust_decimal::Decimal;
use struson::reader::{JsonReader, JsonStreamReader, ReaderSettings, ValueType};

use super::WorkbookError;
use crate::etl::coerce::{Cell, normalize_header};

pub use crate::configuration::connector::RecordsFormat;

pub struct Records {
    input: Box<dyn Read + Send>,
    format: RecordsFormat,
    /// Dotted path to the array in a JSON document; empty: the top level.
    path: Vec<String>,
    /// The connector's headers, normalised, by position.
    headers: Vec<String>,
}

fn bad(e: impl std::fmt::Display) -> WorkbookError {
    WorkbookError::Corrupt(format!(
        "the extractor's output is not what it should be: {e}"
    ))
}

impl Records {
    pub fn new(
        input: Box<dyn Read + Send>,
        format: RecordsFormat,
        path: Option<&str>,
        headers: &[String],
    ) -> Self {
        Records {
            input,
            format,
            path: path
                .map(|p| {
                    p.split('.')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            headers: headers.iter().map(|h| normalize_header(h)).collect(),
        }
    }

    pub fn sheet_name(&self) -> String {
        "records".into()
    }

    pub fn format_label(&self) -> &'static str {
        match self.format {
            RecordsFormat::Json => "json",
            RecordsFormat::Jsonl => "jsonl",
            RecordsFormat::Csv => "csv",
        }
    }

    /// Calls `push(row, column, cell)` for the header row and then every record's fields.
    pub fn for_each_cell(
        &mut self,
        mut push: impl FnMut(u32, u32, Cell<'static>) -> bool,
    ) -> Result<(), WorkbookError> {
        let input = std::mem::replace(&mut self.input, Box::new(std::io::empty()));
        if self.format == RecordsFormat::Csv {
            return csv_rows(input, push);
        }
        let settings = ReaderSettings {
            allow_multiple_top_level: self.format == RecordsFormat::Jsonl,
            max_nesting_depth: Some(64),
            ..Default::default()
        };
        let mut json = JsonStreamReader::new_custom(
            std::io::BufReader::with_capacity(1 << 16, input),
            settings,
        );
        let mut columns: HashMap<String, u32> = self
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| (h.clone(), i as u32))
            .collect();
        let jsonl = self.format == RecordsFormat::Jsonl;
        if !jsonl {
            self.descend(&mut json)?;
            json.begin_array().map_err(bad)?;
        }
        let mut row: u32 = 0;
        let mut record: Vec<(u32, Cell<'static>)> = Vec::new();
        // struson's `has_next` is for after a first top-level value: before it, peek.
        let more = |json: &mut JsonStreamReader<_>, row: u32| -> Result<bool, WorkbookError> {
            if jsonl && row == 0 {
                match json.peek() {
                    Ok(_) => Ok(true),
                    Err(struson::reader::ReaderError::SyntaxError(e))
                        if e.kind == struson::reader::SyntaxErrorKind::IncompleteDocument =>
                    {
                        Ok(false)
                    }
                    Err(e) => Err(bad(e)),
                }
            } else {
                json.has_next().map_err(bad)
            }
        };
        while more(&mut json, row)? {
            record.clear();
            let first = row == 0;
            let mut extra: Vec<String> = Vec::new();
            if json.peek().map_err(bad)? != ValueType::Object {
                return Err(bad(format!("record {} is not an object", row + 1)));
            }
            json.begin_object().map_err(bad)?;
            while json.has_next().map_err(bad)? {
                let key = normalize_header(json.next_name().map_err(bad)?);
                let col = match columns.get(&key) {
                    Some(c) => *c,
                    None if first => {
                        let c = columns.len() as u32;
                        columns.insert(key.clone(), c);
                        extra.push(key);
                        c
                    }
                    None => {
                        json.skip_value().map_err(bad)?;
                        continue;
                    }
                };
                let cell = value(&mut json)?;
                if (col as usize) < self.headers.len() {
                    record.push((col, cell));
                }
            }
            json.end_object().map_err(bad)?;
            if first {
                // The header row: the connector's headers this record has, then its others.
                for (i, h) in self.headers.iter().enumerate() {
                    if record.iter().any(|(c, _)| *c as usize == i)
                        && !push(0, i as u32, Cell::Text(Cow::Owned(h.clone())))
                    {
                        return Ok(());
                    }
                }
                for (n, k) in extra.into_iter().enumerate() {
                    if !push(
                        0,
                        (self.headers.len() + n) as u32,
                        Cell::Text(Cow::Owned(k)),
                    ) {
                        return Ok(());
                    }
                }
            }
            row += 1;
            record.sort_by_key(|(c, _)| *c);
            for (c, cell) in record.drain(..) {
                if !push(row, c, cell) {
                    return Ok(());
                }
            }
            if row >= super::MAX_ROWS {
                return Err(bad(format!("more than {} records", super::MAX_ROWS - 1)));
            }
        }
        if row == 0 {
            // No records at all: an empty export, with every header present.
            for (i, h) in self.headers.iter().enumerate() {
                if !push(0, i as u32, Cell::Text(Cow::Owned(h.clone()))) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn descend<R: Read>(&self, json: &mut JsonStreamReader<R>) -> Result<(), WorkbookError> {
        for (depth, key) in self.path.iter().enumerate() {
            let at = self.path[..depth].join(".");
            if json.peek().map_err(bad)? != ValueType::Object {
                return Err(bad(format!(
                    "expected an object at {:?} to find {key:?} in (records)",
                    if at.is_empty() { "the top level" } else { &at }
                )));
            }
            json.begin_object().map_err(bad)?;
            let mut found = false;
            while json.has_next().map_err(bad)? {
                if json.next_name().map_err(bad)? == key {
                    found = true;
                    break;
                }
                json.skip_value().map_err(bad)?;
            }
            if !found {
                return Err(bad(format!(
                    "no field {:?} in the JSON document (records)",
                    self.path[..=depth].join(".")
                )));
            }
        }
        if json.peek().map_err(bad)? != ValueType::Array {
            return Err(bad(if self.path.is_empty() {
                "the JSON document is not an array of records; set `records` to the field that holds it".to_string()
            } else {
                format!("{:?} is not an array of records", self.path.join("."))
            }));
        }
        Ok(())
    }
}

/// One JSON value as a cell: numbers exact, nested values named rather than flattened.
fn value<R: Read>(json: &mut JsonStreamReader<R>) -> Result<Cell<'static>, WorkbookError> {
    Ok(match json.peek().map_err(bad)? {
        ValueType::String => Cell::Text(Cow::Owned(json.next_string().map_err(bad)?)),
        ValueType::Number => {
            let text = json.next_number_as_str().map_err(bad)?;
            match Decimal::from_str_exact(text).or_else(|_| Decimal::from_scientific(text)) {
                Ok(d) => Cell::Number(d),
                Err(_) => Cell::Float(f64::from_str(text).map_err(bad)?),
            }
        }
        ValueType::Boolean => Cell::Bool(json.next_bool().map_err(bad)?),
        ValueType::Null => {
            json.next_null().map_err(bad)?;
            Cell::Empty
        }
        ValueType::Object | ValueType::Array => {
            json.skip_value().map_err(bad)?;
            Cell::Error("a nested object or array, not a value".into())
        }
    })
}

fn csv_rows(
    input: Box<dyn Read + Send>,
    mut push: impl FnMut(u32, u32, Cell<'static>) -> bool,
) -> Result<(), WorkbookError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(input);
    let mut record = csv::StringRecord::new();
    let mut row = 0u32;
    while reader.read_record(&mut record).map_err(bad)? {
        for (col, f) in record.iter().enumerate() {
            if !f.is_empty() && !push(row, col as u32, Cell::Text(Cow::Owned(f.to_string()))) {
                return Ok(());
            }
        }
        row += 1;
        if row >= super::MAX_ROWS {
            return Err(bad(format!("more than {} rows", super::MAX_ROWS)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(
        text: &str,
        format: RecordsFormat,
        path: Option<&str>,
    ) -> Result<Vec<(u32, u32, Cell<'static>)>, WorkbookError> {
        let headers = vec!["Document".to_string(), "Amount".to_string()];
        let mut r = Records::new(
            Box::new(std::io::Cursor::new(text.to_string().into_bytes())),
            format,
            path,
            &headers,
        );
        let mut out = Vec::new();
        r.for_each_cell(|row, col, cell| {
            out.push((row, col, cell));
            true
        })?;
        Ok(out)
    }

    #[test]
    fn json_numbers_stay_exact_and_keys_map_to_the_connector_headers() {
        let rows = read(
            r#"{"meta": {"x": [1, 2]}, "rows": [{"amount": -31007.2, "document": "1", "note": "x"}, {"Document": 2, "AMOUNT": 1e2, "note": {"a": 1}}]}"#,
            RecordsFormat::Json,
            Some("rows"),
        )
        .unwrap();
        assert_eq!(
            rows,
            vec![
                (0, 0, Cell::Text("document".into())),
                (0, 1, Cell::Text("amount".into())),
                (0, 2, Cell::Text("note".into())),
                (1, 0, Cell::Text("1".into())),
                (1, 1, Cell::Number(Decimal::new(-310072, 1))),
                (2, 0, Cell::Number(Decimal::from(2))),
                (2, 1, Cell::Number(Decimal::from(100))),
            ]
        );
    }

    #[test]
    fn jsonl_and_csv_outputs_read_the_same_way() {
        let rows = read(
            "{\"Document\": \"1\", \"Amount\": 5}\n\n{\"Document\": \"2\"}\n",
            RecordsFormat::Jsonl,
            None,
        )
        .unwrap();
        assert_eq!(rows.len(), 5, "{rows:?}");
        let rows = read("Document,Amount\n1,\"5,00\"\n", RecordsFormat::Csv, None).unwrap();
        assert_eq!(rows[3], (1, 1, Cell::Text("5,00".into())));
    }

    #[test]
    fn output_that_is_not_records_is_explained() {
        let e = read("[1, 2]", RecordsFormat::Json, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("record 1 is not an object"), "{e}");
        let e = read("{\"data\": []}", RecordsFormat::Json, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("set `records`"), "{e}");
        let e = read("{\"data\": []}", RecordsFormat::Json, Some("rows"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no field \"rows\""), "{e}");
        let e = read(
            "Traceback (most recent call last):",
            RecordsFormat::Json,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not what it should be"), "{e}");
    }
}
