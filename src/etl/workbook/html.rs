//! An HTML table as one sheet: what SAP's "spreadsheet" export and many ERP web GUIs save
//! under `.xls`. A small tag scanner, not a browser: `<tr>` starts a row, `<td>`/`<th>` a cell
//! (end tags optional, `colspan` honoured), `<br>` is a line break, entities are decoded,
//! whitespace collapses as a browser shows it, `<script>`, `<style>` and comments are skipped.
//! Of several tables, the one with the most rows is read (title blocks are small tables).

use std::borrow::Cow;

use super::WorkbookError;
use super::detect::{TextEncoding, decode};
use crate::etl::coerce::Cell;

pub struct HtmlTable {
    text: String,
    /// 0-based index of the table read, among the document's top-level tables.
    table: usize,
    pub encoding: TextEncoding,
}

enum Event<'t> {
    TableStart,
    TableEnd,
    RowStart,
    CellStart { span: u32 },
    CellEnd,
    LineBreak,
    Text(&'t str),
}

impl HtmlTable {
    pub fn open(bytes: Vec<u8>, encoding: TextEncoding) -> Result<Self, WorkbookError> {
        let text = decode(&bytes, encoding).into_owned();
        drop(bytes);
        // Pass 1: rows per top-level table.
        let mut rows: Vec<usize> = Vec::new();
        let mut depth = 0usize;
        scan(&text, |e| {
            match e {
                Event::TableStart => {
                    depth += 1;
                    if depth == 1 {
                        rows.push(0);
                    }
                }
                Event::TableEnd => depth = depth.saturating_sub(1),
                Event::RowStart if depth == 1 => *rows.last_mut().expect("a table") += 1,
                _ => {}
            }
            true
        });
        let table = rows
            .iter()
            .enumerate()
            .max_by_key(|(i, n)| (**n, std::cmp::Reverse(*i)))
            .map(|(i, _)| i)
            .ok_or_else(|| WorkbookError::Unsupported("an HTML page without a table".into()))?;
        Ok(HtmlTable {
            text,
            table,
            encoding,
        })
    }

    pub fn sheet_name(&self) -> String {
        format!("table {}", self.table + 1)
    }

    /// Calls `push(row, column, cell)` for every non-empty cell of the chosen table.
    pub fn for_each_cell(&self, mut push: impl FnMut(u32, u32, Cell<'static>) -> bool) {
        let mut depth = 0usize;
        let mut tables_seen = 0usize;
        let mut inside = false;
        let mut row: Option<u32> = None;
        let mut col: u32 = 0;
        let mut cell: Option<(String, u32)> = None;
        let mut next_row = 0u32;
        let mut stopped = false;
        let mut finish_cell =
            |cell: &mut Option<(String, u32)>, row: Option<u32>, col: &mut u32| {
                if let (Some((text, span)), Some(r)) = (cell.take(), row) {
                    let t = collapse(&text);
                    if !t.is_empty() && !push(r, *col, Cell::Text(Cow::Owned(t))) {
                        return false;
                    }
                    *col += span;
                }
                true
            };
        scan(&self.text, |e| {
            match e {
                Event::TableStart => {
                    depth += 1;
                    if depth == 1 {
                        inside = tables_seen == self.table;
                        tables_seen += 1;
                    }
                }
                Event::TableEnd => {
                    if depth == 1 && inside {
                        stopped = !finish_cell(&mut cell, row, &mut col);
                        return false;
                    }
                    depth = depth.saturating_sub(1);
                }
                _ if !inside || depth != 1 => {
                    // Text of a nested table belongs to the enclosing cell.
                    if let (Event::Text(t), Some((c, _))) = (&e, cell.as_mut()) {
                        c.push_str(t);
                        c.push(' ');
                    }
                }
                Event::RowStart => {
                    if !finish_cell(&mut cell, row, &mut col) {
                        stopped = true;
                        return false;
                    }
                    row = Some(next_row);
                    next_row += 1;
                    col = 0;
                }
                Event::CellStart { span } => {
                    if !finish_cell(&mut cell, row, &mut col) {
                        stopped = true;
                        return false;
                    }
                    if row.is_none() {
                        row = Some(next_row);
                        next_row += 1;
                    }
                    cell = Some((String::new(), span.clamp(1, 1000)));
                }
                Event::CellEnd => {
                    if !finish_cell(&mut cell, row, &mut col) {
                        stopped = true;
                        return false;
                    }
                }
                Event::LineBreak => {
                    if let Some((c, _)) = cell.as_mut() {
                        c.push('\n');
                    }
                }
                Event::Text(t) => {
                    if let Some((c, _)) = cell.as_mut() {
                        c.push_str(&unescape(t));
                    }
                }
            }
            next_row < super::MAX_ROWS
        });
        if !stopped {
            finish_cell(&mut cell, row, &mut col);
        }
    }
}

/// Whitespace runs become one space (line breaks from `<br>` are kept), ends trimmed.
fn collapse(s: &str) -> String {
    s.split('\n')
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

/// Decodes the entities ERP exports use: named basics, `&nbsp;`, decimal and hex references.
fn unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest[..rest.len().min(12)].find(';');
        let decoded = end.and_then(|e| {
            let name = &rest[1..e];
            let ch = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some(' '),
                _ if name.starts_with("#x") || name.starts_with("#X") => {
                    u32::from_str_radix(&name[2..], 16)
                        .ok()
                        .and_then(char::from_u32)
                }
                _ if name.starts_with('#') => name[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            };
            ch.map(|c| (c, e + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Walks the document's tags and text, calling `on` until it returns false.
fn scan<'t>(text: &'t str, mut on: impl FnMut(Event<'t>) -> bool) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'<' {
            let end = memchr::memchr(b'<', &b[i..]).map_or(b.len(), |n| i + n);
            if !on(Event::Text(&text[i..end])) {
                return;
            }
            i = end;
            continue;
        }
        if b[i..].starts_with(b"<!--") {
            i = find(b, i + 4, b"-->").map_or(b.len(), |n| n + 3);
            continue;
        }
        let close = b.get(i + 1) == Some(&b'/');
        let name_start = i + 1 + usize::from(close);
        let name_end = b[name_start..]
            .iter()
            .position(|c| !c.is_ascii_alphanumeric())
            .map_or(b.len(), |n| name_start + n);
        let tag_end = memchr::memchr(b'>', &b[i..]).map_or(b.len(), |n| i + n + 1);
        let name = text[name_start..name_end].to_ascii_lowercase();
        let attrs = &text[name_end..tag_end.saturating_sub(1).max(name_end)];
        i = tag_end;
        let event = match (name.as_str(), close) {
            ("script" | "style", false) => {
                let end_tag = format!("</{name}");
                i = find_ci(b, i, end_tag.as_bytes()).unwrap_or(b.len());
                continue;
            }
            ("table", false) => Event::TableStart,
            ("table", true) => Event::TableEnd,
            ("tr", false) => Event::RowStart,
            ("td" | "th", false) => Event::CellStart {
                span: attr(attrs, "colspan")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1),
            },
            ("td" | "th", true) => Event::CellEnd,
            ("br", _) | ("p", true) | ("div", true) => Event::LineBreak,
            _ => continue,
        };
        if !on(event) {
            return;
        }
    }
}

fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(&b[from.min(b.len())..], needle).map(|n| from + n)
}

fn find_ci(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    b[from.min(b.len())..]
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
        .map(|n| from + n)
}

/// The value of attribute `name` (quoted or not) in a tag's attribute text.
fn attr<'a>(attrs: &'a str, name: &str) -> Option<&'a str> {
    let lower = attrs.to_ascii_lowercase();
    let at = lower.find(name)?;
    let rest = attrs[at + name.len()..]
        .trim_start()
        .strip_prefix('=')?
        .trim_start();
    let value = match rest.chars().next()? {
        q @ ('"' | '\'') => rest[1..].split(q).next()?,
        _ => rest.split(|c: char| c.is_whitespace() || c == '>').next()?,
    };
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(html: &str) -> (String, Vec<(u32, u32, String)>) {
        let t = HtmlTable::open(html.as_bytes().to_vec(), TextEncoding::Utf8).unwrap();
        let mut cells = Vec::new();
        t.for_each_cell(|r, c, cell| {
            let Cell::Text(s) = cell else { unreachable!() };
            cells.push((r, c, s.into_owned()));
            true
        });
        (t.sheet_name(), cells)
    }

    #[test]
    fn the_largest_table_is_read_with_spans_entities_and_optional_end_tags() {
        let html = r#"<html><head><style>td{color:red}</style></head><body>
            <table><tr><td>Report</td></tr></table>
            <!-- <table><tr><td>commented</td></tr></table> -->
            <TABLE border=1>
              <tr><th colspan="2">Document &amp; date</th><th>Amount</th>
              <tr><td>100001<td>31.12.2025<td>1.234,56&nbsp;-</td></tr>
              <tr><td>A&#252;x</td><td></td><td>line<br>two</td></tr>
            </TABLE></body></html>"#;
        let (name, cells) = grid(html);
        assert_eq!(name, "table 2");
        assert_eq!(
            cells,
            vec![
                (0, 0, "Document & date".into()),
                (0, 2, "Amount".into()),
                (1, 0, "100001".into()),
                (1, 1, "31.12.2025".into()),
                (1, 2, "1.234,56 -".into()),
                (2, 0, "Aüx".into()),
                (2, 2, "line\ntwo".into()),
            ]
        );
    }

    #[test]
    fn a_page_without_a_table_is_named() {
        let e = HtmlTable::open(b"<html><p>hi</p></html>".to_vec(), TextEncoding::Utf8);
        assert!(e.err().unwrap().to_string().contains("without a table"));
    }
}
