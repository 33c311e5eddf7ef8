//! Reads one sheet of a workbook (xlsx, xlsm, xlsb, xls, ods) with calamine into `Cell`s, and
//! names what is wrong with files that are not readable workbooks.

use std::io::Cursor;

use calamine::{Data, DataRef, Reader, Sheets, open_workbook_auto_from_rs};

use super::coerce::Cell;
use super::connector::SheetRef;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WorkbookError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is not a workbook (xlsx, xlsm, xlsb, xls or ods)")]
    NotAWorkbook,
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

/// One sheet as a grid: `rows[r][c]` is the cell at 0-based row `r`, column `c` of the sheet
/// (A1 is `rows[0][0]`, whatever the used range's origin).
#[derive(Debug, Clone)]
pub struct Grid {
    pub sheet: String,
    pub rows: Vec<Vec<Cell>>,
}

const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
const CFB_MAGIC: &[u8] = &[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];

/// Cheap check of the first bytes, done before enqueueing an upload.
pub fn sniff(bytes: &[u8]) -> Result<(), WorkbookError> {
    if bytes.is_empty() {
        return Err(WorkbookError::Empty);
    }
    if bytes.starts_with(ZIP_MAGIC) || bytes.starts_with(CFB_MAGIC) {
        Ok(())
    } else {
        Err(WorkbookError::NotAWorkbook)
    }
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

/// Sums the uncompressed sizes the zip's central directory declares, without inflating
/// anything. The zip reader under calamine refuses to inflate an entry past its declared size,
/// so this bounds what reading the workbook can allocate.
fn check_inflated_size(bytes: &[u8], limit: u64) -> Result<(), WorkbookError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| WorkbookError::Corrupt(e.to_string()))?;
    let mut declared: u64 = 0;
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| WorkbookError::Corrupt(e.to_string()))?;
        declared = declared.saturating_add(entry.size());
    }
    if declared > limit {
        return Err(WorkbookError::TooLarge { declared, limit });
    }
    Ok(())
}

fn cell(d: &Data) -> Cell {
    match d {
        Data::Empty => Cell::Empty,
        Data::Int(i) => Cell::Int(*i),
        Data::Float(f) => Cell::Float(*f),
        Data::String(s) => Cell::Text(s.clone()),
        Data::Bool(b) => Cell::Bool(*b),
        Data::DateTime(dt) if dt.is_datetime() => Cell::Serial(dt.as_f64()),
        Data::DateTime(dt) => Cell::Float(dt.as_f64()),
        Data::DateTimeIso(s) => Cell::Iso(s.clone()),
        Data::DurationIso(s) => Cell::Text(s.clone()),
        Data::Error(e) => Cell::Error(e.to_string()),
    }
}

/// An opened sheet, ready to be read row by row (streaming where the format allows).
pub struct SheetReader {
    wb: Sheets<Cursor<Vec<u8>>>,
    pub name: String,
}

/// Opens the sheet `which` of the workbook in `bytes`; zip-based formats may inflate to at most
/// `max_inflated_bytes` in all.
pub fn open_sheet(
    bytes: Vec<u8>,
    which: &SheetRef,
    max_inflated_bytes: u64,
) -> Result<SheetReader, WorkbookError> {
    sniff(&bytes)?;
    if is_encrypted_container(&bytes) {
        return Err(WorkbookError::Encrypted);
    }
    if bytes.starts_with(ZIP_MAGIC) {
        check_inflated_size(&bytes, max_inflated_bytes)?;
    }
    let wb = open_workbook_auto_from_rs(Cursor::new(bytes))
        .map_err(|e| WorkbookError::Corrupt(e.to_string()))?;
    let names = wb.sheet_names();
    let name = match which {
        SheetRef::Name(n) => names
            .iter()
            .find(|s| s.trim().eq_ignore_ascii_case(n.trim()))
            .cloned(),
        SheetRef::Index(i) => names.get(*i).cloned(),
    };
    let Some(name) = name else {
        return Err(WorkbookError::SheetNotFound {
            wanted: match which {
                SheetRef::Name(n) => format!("{n:?}"),
                SheetRef::Index(i) => format!("number {i} (0-based)"),
            },
            available: if names.is_empty() {
                "no sheets".into()
            } else {
                format!("{names:?}")
            },
        });
    };
    Ok(SheetReader { wb, name })
}

impl SheetReader {
    /// Calls `on_row(index, cells)` for every row holding a cell, in order (0-based index;
    /// `cells[c]` is column `c`). xlsx is streamed cell by cell without building the sheet in
    /// memory; the other formats are read whole by calamine first. `on_row` returns false to
    /// stop early.
    pub fn for_each_row(
        mut self,
        mut on_row: impl FnMut(usize, Vec<Cell>) -> bool,
    ) -> Result<(), WorkbookError> {
        let corrupt = |e: &dyn std::fmt::Display| WorkbookError::Corrupt(e.to_string());
        if let Sheets::Xlsx(x) = &mut self.wb {
            let mut cells = x
                .worksheet_cells_reader(&self.name)
                .map_err(|e| corrupt(&e))?;
            let mut current: Option<(u32, Vec<Cell>)> = None;
            while let Some(c) = cells.next_cell().map_err(|e| corrupt(&e))? {
                let (r, col) = c.get_position();
                if current.as_ref().is_some_and(|(cr, _)| *cr != r) {
                    let (cr, row) = current.take().expect("checked");
                    if !on_row(cr as usize, row) {
                        return Ok(());
                    }
                }
                let row = &mut current.get_or_insert_with(|| (r, Vec::with_capacity(16))).1;
                let col = col as usize;
                if row.len() < col {
                    row.resize(col, Cell::Empty);
                }
                let value = cell_ref(c.get_value());
                if row.len() == col {
                    row.push(value);
                } else {
                    row[col] = value;
                }
            }
            if let Some((r, row)) = current {
                on_row(r as usize, row);
            }
            return Ok(());
        }
        let range = self
            .wb
            .worksheet_range(&self.name)
            .map_err(|e| corrupt(&e))?;
        let (row0, col0) = range.start().unwrap_or((0, 0));
        for (i, r) in range.rows().enumerate() {
            if r.iter().all(|d| matches!(d, Data::Empty)) {
                continue;
            }
            let mut out = vec![Cell::Empty; col0 as usize];
            out.extend(r.iter().map(cell));
            if !on_row(row0 as usize + i, out) {
                break;
            }
        }
        Ok(())
    }
}

fn cell_ref(d: &DataRef<'_>) -> Cell {
    match d {
        DataRef::SharedString(s) => Cell::Text((*s).to_string()),
        DataRef::String(s) => Cell::Text(s.clone()),
        DataRef::Empty => Cell::Empty,
        DataRef::Int(i) => Cell::Int(*i),
        DataRef::Float(f) => Cell::Float(*f),
        DataRef::Bool(b) => Cell::Bool(*b),
        DataRef::DateTime(dt) if dt.is_datetime() => Cell::Serial(dt.as_f64()),
        DataRef::DateTime(dt) => Cell::Float(dt.as_f64()),
        DataRef::DateTimeIso(s) => Cell::Iso(s.clone()),
        DataRef::DurationIso(s) => Cell::Text(s.clone()),
        DataRef::Error(e) => Cell::Error(e.to_string()),
    }
}

/// Reads the sheet `which` whole into a grid (small files and tests; the pipeline streams).
pub fn read_sheet(
    bytes: Vec<u8>,
    which: &SheetRef,
    max_inflated_bytes: u64,
) -> Result<Grid, WorkbookError> {
    let reader = open_sheet(bytes, which, max_inflated_bytes)?;
    let sheet = reader.name.clone();
    let mut rows: Vec<Vec<Cell>> = Vec::new();
    reader.for_each_row(|i, row| {
        rows.resize(i, Vec::new());
        rows.push(row);
        true
    })?;
    Ok(Grid { sheet, rows })
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
    fn unreadable_files_get_named_errors() {
        assert_eq!(
            read_sheet(Vec::new(), &SheetRef::Index(0), LIMIT).unwrap_err(),
            WorkbookError::Empty
        );
        assert_eq!(
            read_sheet(
                b"Posting Date;Amount\n".to_vec(),
                &SheetRef::Index(0),
                LIMIT
            )
            .unwrap_err(),
            WorkbookError::NotAWorkbook
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
