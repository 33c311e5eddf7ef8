//! Reads one sheet of a workbook (xlsx, xlsm, xlsb, xls, ods) — or the one table of delimited
//! text (`delimited.rs`), an HTML table (`html.rs`) or a command extractor's records
//! (`records.rs`) — row by row into sparse rows of `Cell`s, and names what is wrong with files
//! that are none of these (`detect.rs`: by content, never by extension).
//!
//! Memory follows the cells present: rows are sparse (only cells that exist), cells at or past
//! a column limit (the connector's rightmost mapped column, once the header is known) are
//! dropped as they are read, xlsx (our own reader, `xlsx/`, ADR 0010; calamine for layouts
//! it leaves to calamine) and xlsb are streamed cell by cell, ods is streamed by our
//! own reader with repeated rows and columns expanded lazily and within that limit, and xls
//! has its declared dimensions neutralised before calamine reads it (a forged DIMENSIONS
//! record made calamine reserve petabytes). The extract child's memory limit is the
//! backstop, not the mechanism.

pub mod delimited;
pub mod detect;
mod html;
mod ods;
pub mod records;
mod xls;
mod xlsx;

use std::borrow::Cow;
use std::io::Cursor;
use std::sync::atomic::{AtomicU32, Ordering};

use calamine::{Data, DataRef, Reader, Xls, Xlsb, Xlsx};

use super::coerce::Cell;
use super::connector::SheetRef;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WorkbookError {
    #[error("the file is empty")]
    Empty,
    #[error(
        "the file is {0}, not a workbook (xlsx, xlsm, xlsb, xls, ods), delimited text (CSV, TSV) or an HTML table"
    )]
    Unsupported(String),
    #[error("the workbook is password-protected (encrypted); save it without a password")]
    Encrypted,
    #[error("the workbook is damaged or truncated: {0}")]
    Corrupt(String),
    #[error(
        "the workbook inflates to {declared} bytes, more than the limit of {limit} (possible zip bomb)"
    )]
    TooLarge { declared: u64, limit: u64 },
    #[error("sheet {wanted} not found; the workbook has {available}")]
    SheetNotFound { wanted: String, available: String },
}

/// Excel's limits: columns A..XFD and 1,048,576 rows. Nothing past them is read.
pub const MAX_COLUMNS: u32 = 16_384;
pub const MAX_ROWS: u32 = 1_048_576;

/// One row: the cells present, in ascending column order (0-based columns).
pub type Row<'a> = Vec<(u32, Cell<'a>)>;

/// Cells at or past this column are dropped as rows are read. Starts at [`MAX_COLUMNS`]; the
/// row consumer lowers it once it knows which columns it needs.
#[derive(Debug)]
pub struct ColumnLimit(AtomicU32);

impl Default for ColumnLimit {
    fn default() -> Self {
        ColumnLimit(AtomicU32::new(MAX_COLUMNS))
    }
}

impl ColumnLimit {
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
    pub fn set(&self, limit: u32) {
        self.0.store(limit.min(MAX_COLUMNS), Ordering::Relaxed);
    }
}

/// One sheet as a dense grid (small files and tests; the pipeline streams sparse rows).
#[derive(Debug, Clone)]
pub struct Grid {
    pub sheet: String,
    pub rows: Vec<Vec<Cell<'static>>>,
}

use detect::{CFB_MAGIC, Detected, SourceFormat, TextEncoding};

/// How many leading bytes `sniff` is given.
pub const SNIFF_BYTES: usize = 4096;

/// Cheap check of the first bytes (up to [`SNIFF_BYTES`]), done before enqueueing a file: the
/// empty file and formats that are certainly not readable (a PDF, an image) are refused at
/// once; the full check happens at extract.
pub fn sniff(bytes: &[u8]) -> Result<(), WorkbookError> {
    detect::detect(bytes, SourceFormat::Auto, TextEncoding::Auto).map(|_| ())
}

/// How text files are read (a connector's `format`, `encoding` and `delimiter`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TextOptions {
    pub format: SourceFormat,
    pub encoding: TextEncoding,
    pub delimiter: Option<char>,
}

/// Office encrypts xlsx files by wrapping them in a CFB container with an `EncryptedPackage`
/// stream (directory names are UTF-16LE).
fn is_encrypted_container(bytes: &[u8]) -> bool {
    if !bytes.starts_with(CFB_MAGIC) {
        return false;
    }
    let needle: Vec<u8> = "EncryptedPackage"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    bytes.windows(needle.len()).any(|w| w == needle.as_slice())
}

/// Which zip-based format a package is, by its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZipKind {
    Xlsx,
    Xlsb,
    Ods,
}

/// Sums the uncompressed sizes the zip's central directory declares, without inflating
/// anything, and tells the format apart by its parts. The zip reader refuses to inflate an
/// entry past its declared size, so this bounds what reading the workbook can inflate.
fn inspect_zip(bytes: &[u8], limit: u64) -> Result<ZipKind, WorkbookError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| WorkbookError::Corrupt(e.to_string()))?;
    let mut declared: u64 = 0;
    let mut kind = None;
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| WorkbookError::Corrupt(e.to_string()))?;
        declared = declared.saturating_add(entry.size());
        let name = entry.name().map(|n| n.into_owned()).unwrap_or_default();
        kind = kind.or(match name.as_str() {
            "xl/workbook.xml" => Some(ZipKind::Xlsx),
            "xl/workbook.bin" => Some(ZipKind::Xlsb),
            "content.xml" => Some(ZipKind::Ods),
            _ => None,
        });
    }
    if declared > limit {
        return Err(WorkbookError::TooLarge { declared, limit });
    }
    kind.ok_or_else(|| {
        WorkbookError::Corrupt(
            "a zip archive without a workbook part (xl/workbook.xml, xl/workbook.bin or content.xml)"
                .into(),
        )
    })
}

fn cell(d: &Data) -> Cell<'static> {
    match d {
        Data::Empty => Cell::Empty,
        Data::Int(i) => Cell::Int(*i),
        Data::Float(f) => Cell::Float(*f),
        Data::String(s) => Cell::Text(Cow::Owned(s.clone())),
        Data::Bool(b) => Cell::Bool(*b),
        Data::DateTime(dt) if dt.is_datetime() => Cell::Serial(dt.as_f64()),
        Data::DateTime(dt) => Cell::Float(dt.as_f64()),
        Data::DateTimeIso(s) => Cell::Iso(s.clone()),
        Data::DurationIso(s) => Cell::Text(Cow::Owned(s.clone())),
        Data::Error(e) => Cell::Error(e.to_string()),
    }
}

/// Shared strings stay borrowed from the workbook: no copy per cell.
fn cell_ref<'a>(d: &DataRef<'a>) -> Cell<'a> {
    match d {
        DataRef::SharedString(s) => Cell::Text(Cow::Borrowed(s)),
        DataRef::String(s) => Cell::Text(Cow::Owned(s.clone())),
        DataRef::Empty => Cell::Empty,
        DataRef::Int(i) => Cell::Int(*i),
        DataRef::Float(f) => Cell::Float(*f),
        DataRef::Bool(b) => Cell::Bool(*b),
        DataRef::DateTime(dt) if dt.is_datetime() => Cell::Serial(dt.as_f64()),
        DataRef::DateTime(dt) => Cell::Float(dt.as_f64()),
        DataRef::DateTimeIso(s) => Cell::Iso(s.clone()),
        DataRef::DurationIso(s) => Cell::Text(Cow::Owned(s.clone())),
        DataRef::Error(e) => Cell::Error(e.to_string()),
    }
}

enum Book {
    /// Our own streaming reader (ADR 0010); calamine's for layouts it leaves to calamine.
    Fast(Box<xlsx::FastXlsx>),
    Xlsx(Box<Xlsx<Cursor<Vec<u8>>>>),
    Xlsb(Box<Xlsb<Cursor<Vec<u8>>>>),
    Xls(Box<Xls<Cursor<Vec<u8>>>>),
    Ods(ods::Ods),
    Delimited(Box<delimited::Delimited>),
    Html(Box<html::HtmlTable>),
    Records(Box<records::Records>),
}

/// An opened sheet, ready to be read row by row.
pub struct SheetReader {
    book: Book,
    pub name: String,
}

/// What was read, for reports and previews.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FormatInfo {
    /// `xlsx`, `xlsb`, `xls`, `ods`, `csv`, `html`, or the extractor's `json`, `jsonl`, `csv`.
    pub format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<String>,
}

impl SheetReader {
    /// A command extractor's records (`records.rs`), under the connector's `headers`.
    pub fn records(reader: records::Records) -> Self {
        SheetReader {
            name: reader.sheet_name(),
            book: Book::Records(Box::new(reader)),
        }
    }

    pub fn format_info(&self) -> FormatInfo {
        let plain = |f: &str| FormatInfo {
            format: f.into(),
            encoding: None,
            delimiter: None,
        };
        match &self.book {
            Book::Fast(_) | Book::Xlsx(_) => plain("xlsx"),
            Book::Xlsb(_) => plain("xlsb"),
            Book::Xls(_) => plain("xls"),
            Book::Ods(_) => plain("ods"),
            Book::Delimited(d) => FormatInfo {
                format: "csv".into(),
                encoding: Some(d.encoding.label().into()),
                delimiter: Some(match d.delimiter {
                    b'\t' => "\\t".into(),
                    b => (b as char).to_string(),
                }),
            },
            Book::Html(h) => FormatInfo {
                format: "html".into(),
                encoding: Some(h.encoding.label().into()),
                delimiter: None,
            },
            Book::Records(r) => plain(r.format_label()),
        }
    }
}

fn pick_sheet(names: &[String], which: &SheetRef) -> Result<String, WorkbookError> {
    let name = match which {
        SheetRef::Name(n) => names
            .iter()
            .find(|s| s.trim().eq_ignore_ascii_case(n.trim()))
            .cloned(),
        SheetRef::Index(i) => names.get(*i).cloned(),
    };
    name.ok_or_else(|| WorkbookError::SheetNotFound {
        wanted: match which {
            SheetRef::Name(n) => format!("{n:?}"),
            SheetRef::Index(i) => format!("number {i} (0-based)"),
        },
        available: if names.is_empty() {
            "no sheets".into()
        } else {
            format!("{names:?}")
        },
    })
}

/// Opens the sheet `which` of the workbook in `bytes`; zip-based formats may inflate to at most
/// `max_inflated_bytes` in all.
pub fn open_sheet(
    bytes: Vec<u8>,
    which: &SheetRef,
    max_inflated_bytes: u64,
    text: &TextOptions,
) -> Result<SheetReader, WorkbookError> {
    match detect::detect(&bytes, text.format, text.encoding)? {
        Detected::Workbook => {}
        // Text formats have one table: the connector's `sheet` does not apply.
        Detected::Delimited(encoding) => {
            let d = delimited::Delimited::open(bytes, encoding, text.delimiter)?;
            return Ok(SheetReader {
                name: "text".into(),
                book: Book::Delimited(Box::new(d)),
            });
        }
        Detected::Html(encoding) => {
            let h = html::HtmlTable::open(bytes, encoding)?;
            return Ok(SheetReader {
                name: h.sheet_name(),
                book: Book::Html(Box::new(h)),
            });
        }
    }
    if is_encrypted_container(&bytes) {
        return Err(WorkbookError::Encrypted);
    }
    let corrupt = |e: &dyn std::fmt::Display| WorkbookError::Corrupt(e.to_string());
    let book = if bytes.starts_with(CFB_MAGIC) {
        let bytes = xls::neutralise_dimensions(bytes)?;
        Book::Xls(Box::new(
            Xls::new(Cursor::new(bytes)).map_err(|e| corrupt(&e))?,
        ))
    } else {
        match inspect_zip(&bytes, max_inflated_bytes)? {
            ZipKind::Xlsx => match xlsx::FastXlsx::open(bytes)? {
                Ok(fast) => Book::Fast(Box::new(fast)),
                Err(bytes) => Book::Xlsx(Box::new(
                    Xlsx::new(Cursor::new(bytes)).map_err(|e| corrupt(&e))?,
                )),
            },
            ZipKind::Xlsb => Book::Xlsb(Box::new(
                Xlsb::new(Cursor::new(bytes)).map_err(|e| corrupt(&e))?,
            )),
            ZipKind::Ods => Book::Ods(ods::Ods::open(bytes)?),
        }
    };
    let names = match &book {
        Book::Fast(x) => x.sheet_names(),
        Book::Xlsx(x) => x.sheet_names(),
        Book::Xlsb(x) => x.sheet_names(),
        Book::Xls(x) => x.sheet_names(),
        Book::Ods(o) => o.sheet_names(),
        // Text formats returned above with their one table.
        Book::Delimited(_) | Book::Html(_) | Book::Records(_) => Vec::new(),
    };
    let name = pick_sheet(&names, which)?;
    Ok(SheetReader { book, name })
}

/// Collects cells into sparse rows and hands each finished row on (in one reused buffer).
struct RowBuilder<'l, 'a, F: FnMut(usize, &mut Row<'a>) -> bool> {
    row: Option<u32>,
    cells: Row<'a>,
    limit: &'l ColumnLimit,
    on_row: F,
    stopped: bool,
}

impl<'l, 'a, F: FnMut(usize, &mut Row<'a>) -> bool> RowBuilder<'l, 'a, F> {
    fn new(limit: &'l ColumnLimit, on_row: F) -> Self {
        RowBuilder {
            row: None,
            cells: Vec::new(),
            limit,
            on_row,
            stopped: false,
        }
    }

    /// Adds a cell; false once the consumer asked to stop.
    fn push(&mut self, row: u32, col: u32, cell: Cell<'a>) -> bool {
        if matches!(cell, Cell::Empty) {
            return !self.stopped;
        }
        if self.row.is_some_and(|r| r != row) {
            self.flush();
        }
        if col < self.limit.get() && row < MAX_ROWS {
            self.row = Some(row);
            let cur = &mut self.cells;
            // Cells normally arrive in column order; keep the row sorted if not.
            match cur.last() {
                Some((c, _)) if *c >= col => match cur.binary_search_by_key(&col, |(c, _)| *c) {
                    Ok(i) => cur[i].1 = cell,
                    Err(i) => cur.insert(i, (col, cell)),
                },
                _ => cur.push((col, cell)),
            }
        }
        !self.stopped
    }

    fn flush(&mut self) {
        if let Some(r) = self.row.take()
            && !self.stopped
            && !self.cells.is_empty()
        {
            self.stopped = !(self.on_row)(r as usize, &mut self.cells);
        }
        self.cells.clear();
    }
}

impl SheetReader {
    /// Calls `on_row(index, cells)` for every row holding a cell, in order (0-based index);
    /// the consumer may take the cells out of the buffer. Cells at or past `limit` are dropped.
    /// `on_row` returns false to stop early. Text cells borrow from the reader where they can.
    pub fn for_each_row<'a>(
        &'a mut self,
        limit: &ColumnLimit,
        on_row: impl FnMut(usize, &mut Row<'a>) -> bool,
    ) -> Result<(), WorkbookError> {
        let corrupt = |e: &dyn std::fmt::Display| WorkbookError::Corrupt(e.to_string());
        let mut rows = RowBuilder::new(limit, on_row);
        let SheetReader { book, name } = self;
        match book {
            Book::Delimited(d) => d.for_each_cell(|r, c, cell| rows.push(r, c, cell))?,
            Book::Html(h) => h.for_each_cell(|r, c, cell| rows.push(r, c, cell)),
            Book::Records(x) => x.for_each_cell(|r, c, cell| rows.push(r, c, cell))?,
            Book::Fast(x) => x.for_each_cell(name, |r, c, cell| rows.push(r, c, cell))?,
            Book::Xlsx(x) => {
                let mut cells = x.worksheet_cells_reader(name).map_err(|e| corrupt(&e))?;
                while let Some(c) = cells.next_cell().map_err(|e| corrupt(&e))? {
                    let (r, col) = c.get_position();
                    if !rows.push(r, col, cell_ref(c.get_value())) {
                        return Ok(());
                    }
                }
            }
            Book::Xlsb(x) => {
                let mut cells = x.worksheet_cells_reader(name).map_err(|e| corrupt(&e))?;
                while let Some(c) = cells.next_cell().map_err(|e| corrupt(&e))? {
                    let (r, col) = c.get_position();
                    if !rows.push(r, col, cell_ref(c.get_value())) {
                        return Ok(());
                    }
                }
            }
            Book::Xls(x) => {
                let range = x.worksheet_range(name).map_err(|e| corrupt(&e))?;
                for (r, c, d) in range.used_cells() {
                    let (r0, c0) = range.start().unwrap_or((0, 0));
                    if !rows.push(r0 + r as u32, c0 + c as u32, cell(d)) {
                        return Ok(());
                    }
                }
            }
            Book::Ods(o) => {
                o.for_each_cell(name, limit, |r, c, cell| rows.push(r, c, cell))?;
            }
        }
        rows.flush();
        Ok(())
    }
}

/// Reads the sheet `which` whole into a dense grid (small files and tests).
pub fn read_sheet(
    bytes: Vec<u8>,
    which: &SheetRef,
    max_inflated_bytes: u64,
) -> Result<Grid, WorkbookError> {
    let mut reader = open_sheet(bytes, which, max_inflated_bytes, &TextOptions::default())?;
    let sheet = reader.name.clone();
    let rows = reader.dense_rows(usize::MAX)?;
    Ok(Grid { sheet, rows })
}

impl SheetReader {
    /// The first `max_rows` rows (by row number) as dense rows, owning their text.
    pub fn dense_rows(
        &mut self,
        max_rows: usize,
    ) -> Result<Vec<Vec<Cell<'static>>>, WorkbookError> {
        let mut rows: Vec<Vec<Cell<'static>>> = Vec::new();
        self.for_each_row(&ColumnLimit::default(), |i, row| {
            if i >= max_rows {
                return false;
            }
            rows.resize(i, Vec::new());
            let width = row.last().map_or(0, |(c, _)| *c as usize + 1);
            let mut dense = vec![Cell::Empty; width];
            for (c, cell) in row.drain(..) {
                dense[c as usize] = cell.into_owned();
            }
            rows.push(dense);
            true
        })?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_xlsxwriter::{ExcelDateTime, Format, Workbook};

    const LIMIT: u64 = 64 << 20;

    fn workbook() -> Vec<u8> {
        let mut wb = Workbook::new();
        let ws = wb.add_worksheet();
        ws.set_name("Cover").unwrap();
        ws.write_string(0, 0, "nothing here").unwrap();
        let ws = wb.add_worksheet();
        ws.set_name("GL").unwrap();
        let date = Format::new().set_num_format("dd.mm.yyyy");
        ws.write_string(2, 1, "Posting Date").unwrap();
        ws.write_string(2, 2, "Amount").unwrap();
        ws.write_datetime_with_format(3, 1, ExcelDateTime::from_ymd(2025, 12, 31).unwrap(), &date)
            .unwrap();
        ws.write_number(3, 2, -1234.56).unwrap();
        ws.write_string(4, 2, "1.234,56-").unwrap();
        wb.save_to_buffer().unwrap()
    }

    #[test]
    fn reads_a_sheet_by_name_with_cells_at_their_sheet_positions() {
        let g = read_sheet(workbook(), &SheetRef::Name("gl".into()), LIMIT).unwrap();
        assert_eq!(g.sheet, "GL");
        assert_eq!(g.rows[2][1], Cell::Text("Posting Date".into()));
        assert_eq!(
            g.rows[3][1],
            Cell::Serial(46022.0),
            "2025-12-31 as an Excel serial"
        );
        assert_eq!(g.rows[3][2], Cell::Float(-1234.56));
        assert_eq!(g.rows[4][2], Cell::Text("1.234,56-".into()));
        let g = read_sheet(workbook(), &SheetRef::Index(0), LIMIT).unwrap();
        assert_eq!(g.sheet, "Cover");
    }

    #[test]
    fn cells_past_the_column_limit_are_dropped_as_they_are_read() {
        let mut wb = Workbook::new();
        let ws = wb.add_worksheet();
        for r in 0..100 {
            ws.write_string(r, 0, "kept").unwrap();
            ws.write_string(r, 16_383, "far away").unwrap();
        }
        let mut reader = open_sheet(
            wb.save_to_buffer().unwrap(),
            &SheetRef::Index(0),
            LIMIT,
            &TextOptions::default(),
        )
        .unwrap();
        let limit = ColumnLimit::default();
        limit.set(4);
        let mut widths = Vec::new();
        reader
            .for_each_row(&limit, |_, row| {
                widths.push(row.len());
                true
            })
            .unwrap();
        assert_eq!(widths, vec![1; 100]);
    }

    #[test]
    fn unreadable_files_get_named_errors() {
        assert_eq!(
            read_sheet(Vec::new(), &SheetRef::Index(0), LIMIT).unwrap_err(),
            WorkbookError::Empty
        );
        assert_eq!(
            read_sheet(b"%PDF-1.4\n".to_vec(), &SheetRef::Index(0), LIMIT).unwrap_err(),
            WorkbookError::Unsupported("a PDF document".into())
        );
        let mut truncated = workbook();
        truncated.truncate(truncated.len() / 2);
        assert!(matches!(
            read_sheet(truncated, &SheetRef::Index(0), LIMIT).unwrap_err(),
            WorkbookError::Corrupt(_)
        ));
        let e = read_sheet(workbook(), &SheetRef::Name("Trial Balance".into()), LIMIT).unwrap_err();
        assert_eq!(
            e.to_string(),
            "sheet \"Trial Balance\" not found; the workbook has [\"Cover\", \"GL\"]"
        );
        // An Office-encrypted file: a CFB container holding an EncryptedPackage stream.
        let mut encrypted = CFB_MAGIC.to_vec();
        encrypted.extend(vec![0u8; 512]);
        encrypted.extend("EncryptedPackage".encode_utf16().flat_map(u16::to_le_bytes));
        assert_eq!(
            read_sheet(encrypted, &SheetRef::Index(0), LIMIT).unwrap_err(),
            WorkbookError::Encrypted
        );
    }

    #[test]
    fn a_workbook_that_inflates_past_the_limit_is_refused_before_parsing() {
        // 20,000 rows of repetitive text: ~60 KB on disk, well over 1 MB of XML inflated.
        let mut wb = Workbook::new();
        let ws = wb.add_worksheet();
        for r in 0..20_000 {
            ws.write_string(r, 0, "same text in every row").unwrap();
            ws.write_number(r, 1, 1.0).unwrap();
        }
        let bytes = wb.save_to_buffer().unwrap();
        assert!(bytes.len() < 1 << 20, "compressed {} bytes", bytes.len());
        match read_sheet(bytes.clone(), &SheetRef::Index(0), 1 << 20).unwrap_err() {
            WorkbookError::TooLarge { declared, limit } => {
                assert!(declared > limit);
                assert_eq!(limit, 1 << 20);
            }
            other => panic!("{other:?}"),
        }
        let grid = read_sheet(bytes, &SheetRef::Index(0), LIMIT).unwrap();
        assert_eq!(grid.rows.len(), 20_000);
    }
}
