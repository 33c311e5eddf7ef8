//! A streaming reader for OpenDocument spreadsheets (`content.xml`).
//!
//! calamine reads an ods sheet whole and materialises `table:number-columns-repeated` before
//! bounding anything: a 1,617-byte file of 1,500 rows, each one cell repeated 16,384 times,
//! drove a worker to 2 GiB. Here rows are streamed, empty repeats are skipped, and a repeated
//! cell is expanded only up to the column limit (the connector's rightmost mapped column once
//! the header is known) and never past [`MAX_COLUMNS`]; repeated rows are emitted one by one
//! (time, not memory) up to [`MAX_ROWS`].

use std::io::{BufRead, BufReader, Cursor};

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::QName;

use super::{ColumnLimit, MAX_COLUMNS, MAX_ROWS, WorkbookError};
use crate::etl::coerce::Cell;

pub(super) struct Ods {
    bytes: Vec<u8>,
    names: Vec<String>,
}

fn corrupt(e: impl std::fmt::Display) -> WorkbookError {
    WorkbookError::Corrupt(e.to_string())
}

/// Runs `f` on a streaming XML reader over the package's `content.xml`. The zip reader
/// refuses to inflate past the entry's declared size, which the caller has already checked
/// against the inflation limit.
fn with_content<T>(
    bytes: &[u8],
    f: impl FnOnce(
        &mut Reader<BufReader<zip::read::ZipFile<'_, Cursor<&[u8]>>>>,
    ) -> Result<T, WorkbookError>,
) -> Result<T, WorkbookError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(corrupt)?;
    let entry = zip.by_name("content.xml").map_err(corrupt)?;
    let mut r = Reader::from_reader(BufReader::with_capacity(64 * 1024, entry));
    r.config_mut().trim_text(false);
    f(&mut r)
}

fn attr(e: &BytesStart<'_>, name: &str) -> Result<Option<String>, WorkbookError> {
    match e.try_get_attribute(name).map_err(corrupt)? {
        Some(a) => Ok(Some(
            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(corrupt)?
                .into_owned(),
        )),
        None => Ok(None),
    }
}

fn repeats(e: &BytesStart<'_>, name: &str, max: u32) -> Result<u32, WorkbookError> {
    Ok(match attr(e, name)? {
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map_err(|_| corrupt(format!("{name}={v:?} is not a count")))?
            .clamp(1, u64::from(max)) as u32,
        None => 1,
    })
}

fn is_cell(name: QName<'_>) -> bool {
    name == QName("table:table-cell") || name == QName("table:covered-table-cell")
}

impl Ods {
    pub(super) fn open(bytes: Vec<u8>) -> Result<Ods, WorkbookError> {
        let names = with_content(&bytes, |r| {
            let mut names = Vec::new();
            let mut buf = Vec::new();
            loop {
                match r.read_event_into(&mut buf).map_err(corrupt)? {
                    Event::Start(e) if e.name() == QName("table:table") => {
                        names.push(attr(&e, "table:name")?.unwrap_or_default());
                        let end = e.to_end().into_owned();
                        r.read_to_end_into(end.name(), &mut Vec::new())
                            .map_err(corrupt)?;
                    }
                    Event::Empty(e) if e.name() == QName("table:table") => {
                        names.push(attr(&e, "table:name")?.unwrap_or_default());
                    }
                    Event::Eof => break,
                    _ => {}
                }
                buf.clear();
            }
            Ok(names)
        })?;
        Ok(Ods { bytes, names })
    }

    pub(super) fn sheet_names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// Calls `f(row, column, cell)` for each non-empty cell of sheet `name`, row by row. A
    /// repeated cell is reported once per column it covers below `limit`.
    pub(super) fn for_each_cell(
        &self,
        name: &str,
        limit: &ColumnLimit,
        f: impl FnMut(u32, u32, Cell<'static>) -> bool,
    ) -> Result<(), WorkbookError> {
        with_content(&self.bytes, |r| read_table(r, name, limit, f))
    }
}

fn read_table<B: BufRead>(
    r: &mut Reader<B>,
    name: &str,
    limit: &ColumnLimit,
    mut f: impl FnMut(u32, u32, Cell<'static>) -> bool,
) -> Result<(), WorkbookError> {
    {
        let mut buf = Vec::new();
        // Find the table.
        loop {
            match r.read_event_into(&mut buf).map_err(corrupt)? {
                Event::Start(e)
                    if e.name() == QName("table:table")
                        && attr(&e, "table:name")?.as_deref() == Some(name) =>
                {
                    break;
                }
                Event::Eof => return Ok(()),
                _ => {}
            }
            buf.clear();
        }
        let mut row: u32 = 0;
        let mut cells: Vec<(u32, u32, Cell<'static>)> = Vec::new();
        loop {
            buf.clear();
            let (row_repeats, empty_row) = match r.read_event_into(&mut buf).map_err(corrupt)? {
                Event::Start(e) if e.name() == QName("table:table-row") => {
                    let n = repeats(&e, "table:number-rows-repeated", MAX_ROWS)?;
                    cells.clear();
                    read_row(r, limit, &mut cells)?;
                    (n, cells.is_empty())
                }
                Event::Empty(e) if e.name() == QName("table:table-row") => {
                    (repeats(&e, "table:number-rows-repeated", MAX_ROWS)?, true)
                }
                Event::End(e) if e.name() == QName("table:table") => return Ok(()),
                Event::Eof => return Err(corrupt("content.xml ends inside a table")),
                // Row groups, header rows, column definitions: only rows hold cells.
                Event::Start(e) if e.name() == QName("table:table-column") => {
                    let end = e.to_end().into_owned();
                    r.read_to_end_into(end.name(), &mut Vec::new())
                        .map_err(corrupt)?;
                    continue;
                }
                _ => continue,
            };
            if !empty_row {
                for _ in 0..row_repeats {
                    if row >= MAX_ROWS {
                        return Ok(());
                    }
                    let width = limit.get();
                    for (col, n, cell) in &cells {
                        for c in *col..(col + n).min(width) {
                            if !f(row, c, cell.clone()) {
                                return Ok(());
                            }
                        }
                    }
                    row += 1;
                }
            } else {
                row = row.saturating_add(row_repeats);
            }
            if row >= MAX_ROWS {
                return Ok(());
            }
        }
    }
}

/// Reads one `table:table-row` into runs `(first column, repeat, cell)` of non-empty cells.
fn read_row<B: BufRead>(
    r: &mut Reader<B>,
    limit: &ColumnLimit,
    cells: &mut Vec<(u32, u32, Cell<'static>)>,
) -> Result<(), WorkbookError> {
    let mut col: u32 = 0;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let (e, closed) = match r.read_event_into(&mut buf).map_err(corrupt)? {
            Event::Start(e) if is_cell(e.name()) => (e.into_owned(), false),
            Event::Empty(e) if is_cell(e.name()) => (e.into_owned(), true),
            Event::End(e) if e.name() == QName("table:table-row") => return Ok(()),
            Event::Eof => return Err(corrupt("content.xml ends inside a row")),
            _ => continue,
        };
        let n = repeats(&e, "table:number-columns-repeated", MAX_COLUMNS)?;
        let cell = read_cell(r, &e, closed)?;
        if !matches!(cell, Cell::Empty) && col < limit.get().min(MAX_COLUMNS) {
            let n = n.min(MAX_COLUMNS - col);
            cells.push((col, n, cell));
        }
        col = col.saturating_add(n).min(MAX_COLUMNS);
    }
}

/// The value of one cell: typed attributes first, else its text paragraphs.
fn read_cell<B: BufRead>(
    r: &mut Reader<B>,
    e: &BytesStart<'_>,
    closed: bool,
) -> Result<Cell<'static>, WorkbookError> {
    let ty = attr(e, "office:value-type")?;
    let typed = match ty.as_deref() {
        Some("float" | "percentage" | "currency") => attr(e, "office:value")?
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .map(Cell::Float)
                    .map_err(|_| corrupt(format!("office:value {v:?} is not a number")))
            })
            .transpose()?,
        Some("date") => attr(e, "office:date-value")?.map(Cell::Iso),
        Some("time") => attr(e, "office:time-value")?.map(|t| Cell::Text(t.into())),
        Some("boolean") => {
            attr(e, "office:boolean-value")?.map(|v| Cell::Bool(v.eq_ignore_ascii_case("true")))
        }
        Some("string") => attr(e, "office:string-value")?.map(|t| Cell::Text(t.into())),
        _ => None,
    };
    if closed {
        return Ok(typed.unwrap_or(Cell::Empty));
    }
    let text = read_text(r, e.name())?;
    Ok(match (typed, ty) {
        (Some(c), _) => c,
        (None, Some(_)) | (None, None) if !text.is_empty() => Cell::Text(text.into()),
        _ => Cell::Empty,
    })
}

/// The text of a cell's paragraphs (joined by newlines), up to the cell's end tag. Notes
/// (`office:annotation`) are skipped.
fn read_text<B: BufRead>(r: &mut Reader<B>, end: QName<'_>) -> Result<String, WorkbookError> {
    let end = end.as_ref().to_string();
    let mut s = String::new();
    let mut paragraphs = 0;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_event_into(&mut buf).map_err(corrupt)? {
            Event::Text(t) => s.push_str(&t.xml10_content()),
            Event::CData(t) => s.push_str(&t),
            Event::GeneralRef(g) => {
                if let Some(v) = quick_xml::escape::resolve_xml_entity(&g) {
                    s.push_str(v);
                } else if let Some(c) = g.resolve_char_ref().map_err(corrupt)? {
                    s.push(c);
                }
            }
            Event::Start(e) if e.name() == QName("office:annotation") => {
                let end = e.to_end().into_owned();
                r.read_to_end_into(end.name(), &mut Vec::new())
                    .map_err(corrupt)?;
            }
            Event::Start(e) if e.name() == QName("text:p") => {
                if paragraphs > 0 {
                    s.push('\n');
                }
                paragraphs += 1;
            }
            Event::Start(e) | Event::Empty(e) if e.name() == QName("text:s") => {
                let n = attr(&e, "text:c")?
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(1)
                    .min(1024);
                s.extend(std::iter::repeat_n(' ', n));
            }
            Event::Start(e) | Event::Empty(e) if e.name() == QName("text:tab") => s.push('\t'),
            Event::Start(e) | Event::Empty(e) if e.name() == QName("text:line-break") => {
                s.push('\n')
            }
            Event::End(e) if e.name().as_ref() == end.as_str() => return Ok(s),
            Event::Eof => return Err(corrupt("content.xml ends inside a cell")),
            _ => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;
    use crate::etl::connector::SheetRef;
    use crate::etl::workbook::{ColumnLimit, open_sheet, read_sheet};

    /// A minimal ods package around `body` (the `office:spreadsheet` content).
    pub(crate) fn ods(body: &str) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut out);
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("mimetype", stored).unwrap();
        z.write_all(b"application/vnd.oasis.opendocument.spreadsheet")
            .unwrap();
        let deflated = zip::write::SimpleFileOptions::default();
        z.start_file("content.xml", deflated).unwrap();
        write!(
            z,
            r#"<?xml version="1.0" encoding="UTF-8"?><office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" office:version="1.2"><office:body><office:spreadsheet>{body}</office:spreadsheet></office:body></office:document-content>"#
        )
        .unwrap();
        z.start_file("META-INF/manifest.xml", deflated).unwrap();
        z.write_all(br#"<?xml version="1.0" encoding="UTF-8"?><manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0"><manifest:file-entry manifest:full-path="/" manifest:media-type="application/vnd.oasis.opendocument.spreadsheet"/><manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/></manifest:manifest>"#).unwrap();
        z.finish().unwrap();
        out.into_inner()
    }

    #[test]
    fn reads_typed_cells_text_and_repeats() {
        let body = r#"<table:table table:name="Other"><table:table-row><table:table-cell/></table:table-row></table:table>
        <table:table table:name="TB"><table:table-column table:number-columns-repeated="3"/>
        <table:table-row><table:table-cell office:value-type="string"><text:p>Account</text:p></table:table-cell><table:table-cell office:value-type="string"><text:p>A &amp; B<text:s text:c="2"/>x</text:p></table:table-cell></table:table-row>
        <table:table-row table:number-rows-repeated="2"><table:table-cell office:value-type="float" office:value="1.5"/><table:table-cell table:number-columns-repeated="2" office:value-type="boolean" office:boolean-value="true"/></table:table-row>
        <table:table-row table:number-rows-repeated="1000000"><table:table-cell table:number-columns-repeated="16384"/></table:table-row>
        <table:table-row><table:table-cell office:value-type="date" office:date-value="2025-12-31"/></table:table-row>
        </table:table>"#;
        let g = read_sheet(ods(body), &SheetRef::Name("TB".into()), 1 << 30).unwrap();
        assert_eq!(g.sheet, "TB");
        assert_eq!(
            g.rows[0],
            vec![Cell::Text("Account".into()), Cell::Text("A & B  x".into())]
        );
        for r in [1, 2] {
            assert_eq!(
                g.rows[r],
                vec![Cell::Float(1.5), Cell::Bool(true), Cell::Bool(true)]
            );
        }
        assert_eq!(g.rows.len(), 1_000_004);
        assert_eq!(g.rows[1_000_003], vec![Cell::Iso("2025-12-31".into())]);
    }

    #[test]
    fn repeated_columns_are_expanded_only_below_the_column_limit() {
        let row = r#"<table:table-row><table:table-cell table:number-columns-repeated="16384" office:value-type="float" office:value="7"/></table:table-row>"#;
        let body = format!(
            r#"<table:table table:name="S">{}</table:table>"#,
            row.repeat(1500)
        );
        let mut reader = open_sheet(
            ods(&body),
            &SheetRef::Index(0),
            1 << 30,
            &Default::default(),
        )
        .unwrap();
        let limit = ColumnLimit::default();
        limit.set(3);
        let mut cells = 0;
        let mut rows = 0;
        reader
            .for_each_row(&limit, |_, r| {
                rows += 1;
                cells += r.len();
                true
            })
            .unwrap();
        assert_eq!((rows, cells), (1500, 4500));
    }
}
