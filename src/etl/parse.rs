//! The CPU half of extract, run inside the isolated child process (`etl/child.rs`): reads the
//! workbook, locates the header, maps and types rows, rejects duplicate keys, and writes the
//! records artifact as it goes.
//!
//! Two threads: one reads the sheet and locates the header (so the column limit is set before
//! any row past the header region is read), the other maps, types and serialises.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::artifact;
use super::coerce::Cell;
use super::connector::Record;
use super::connector::{Connector, ConnectorError, Header, HeaderMatch, Rejection};
use super::mapping::{
    DenseRows, Mapper, RejectedRow, Report, Verdict, densify_into, header_scope, locate,
};
use super::workbook::{ColumnLimit, Row, SheetReader, WorkbookError, open_sheet};

/// Rows handed from the reading thread to the mapping thread at a time.
const ROW_BATCH: usize = 1024;
/// Batches in flight between the threads.
const BATCHES_IN_FLIGHT: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The file is not a readable workbook.
    #[error(transparent)]
    Workbook(#[from] WorkbookError),
    /// The workbook does not have the connector's layout (or too many rows were rejected).
    #[error(transparent)]
    Layout(#[from] ConnectorError),
    /// Writing the artifact failed (disk full): worth retrying elsewhere.
    #[error("writing the records artifact: {0}")]
    Io(String),
    /// A command extractor failed (its cause and the setting to raise are in the message).
    #[error("{0}")]
    Extractor(String),
}

/// What one parse produced besides the records written out.
#[derive(Debug)]
pub struct Parsed {
    pub records: usize,
    /// Sum of the records' content hashes (order-independent; verify compares it).
    pub checksum: i128,
    pub rejected: Vec<RejectedRow>,
    pub report: Report,
}

/// Rows handed from the reading thread to the mapping thread, in one flat buffer: each row is
/// the header's width of cells (fewer when its last cells are empty), so a batch costs two
/// allocations however many rows and cells it holds.
struct Batch<'a> {
    /// (0-based sheet row, end of its cells in `cells`).
    rows: Vec<(usize, usize)>,
    cells: Vec<Cell<'a>>,
}

impl<'a> Batch<'a> {
    fn new(width: usize) -> Self {
        Batch {
            rows: Vec::with_capacity(ROW_BATCH),
            cells: Vec::with_capacity(ROW_BATCH * width),
        }
    }

    fn push(&mut self, row: usize, cells: &mut Row<'a>, width: usize) {
        densify_into(cells.drain(..), width, &mut self.cells);
        self.rows.push((row, self.cells.len()));
    }
}

enum Msg<'a> {
    /// The header, with the rows below it inside the header region.
    Header(Header, DenseRows<'a>),
    Rows(Batch<'a>),
}

/// Parses `source` with `connector`, writing one NDJSON line per record to `out`. `rows_read`
/// is updated as rows are mapped; `cancelled` is polled every 1,024 rows. `None` when
/// cancelled midway.
pub fn parse_workbook(
    connector: &Connector,
    source: Vec<u8>,
    bu_id: &str,
    max_inflated_bytes: u64,
    out: &mut dyn Write,
    rows_read: &AtomicUsize,
    cancelled: &dyn Fn() -> bool,
) -> Result<Option<Parsed>, ParseError> {
    let sheet = open_sheet(
        source,
        &connector.spec.sheet,
        max_inflated_bytes,
        &connector.text_options(),
    )?;
    parse_rows(connector, sheet, bu_id, out, rows_read, cancelled, None)
}

/// `parse_workbook` on a sheet already opened (a file's, or a command extractor's records).
pub fn parse_rows(
    connector: &Connector,
    mut sheet: SheetReader,
    bu_id: &str,
    out: &mut dyn Write,
    rows_read: &AtomicUsize,
    cancelled: &dyn Fn() -> bool,
    on_header: Option<&(dyn Fn(&HeaderMatch) + Sync)>,
) -> Result<Option<Parsed>, ParseError> {
    let format = sheet.format_info();
    let name = sheet.name.clone();
    let scope = header_scope(connector);
    let limit = ColumnLimit::default();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Msg<'_>>(BATCHES_IN_FLIGHT);

    let mut checksum: i128 = 0;
    let mut written = 0usize;
    let mut io_error: Option<std::io::Error> = None;
    let mut seen: HashMap<[u8; 16], usize> = HashMap::new();
    let key_headers: Vec<&str> = connector
        .spec
        .columns
        .iter()
        .filter(|c| c.key)
        .map(|c| c.header.as_str())
        .collect();

    let (read, mapped) = std::thread::scope(|scope_| {
        let limit = &limit;
        let name = &name;
        let sheet = &mut sheet;
        let reader = scope_.spawn(move || -> Result<(), ParseError> {
            let mut head: Vec<(usize, Row)> = Vec::new();
            let mut width: Option<usize> = None;
            let mut batch: Option<Batch<'_>> = None;
            let mut located: Result<(), ParseError> = Ok(());
            let send_header = |head: &mut Vec<_>| {
                let (header, below) = locate(connector, name, std::mem::take(head), on_header)?;
                limit.set(header.width() as u32);
                let w = header.width();
                let open = tx.send(Msg::Header(header, below)).is_ok();
                Ok::<_, ParseError>((w, open))
            };
            let r = sheet.for_each_row(limit, |i, row| {
                let w = match width {
                    Some(w) => w,
                    None if i < scope => {
                        head.push((i, std::mem::take(row)));
                        return true;
                    }
                    None => match send_header(&mut head) {
                        Ok((w, open)) => {
                            width = Some(w);
                            if !open {
                                return false;
                            }
                            w
                        }
                        Err(e) => {
                            located = Err(e);
                            return false;
                        }
                    },
                };
                let b = batch.get_or_insert_with(|| Batch::new(w));
                b.push(i, row, w);
                if b.rows.len() == ROW_BATCH {
                    let full = batch.take().expect("a batch");
                    // A closed channel means the consumer stopped: stop reading.
                    return tx.send(Msg::Rows(full)).is_ok();
                }
                true
            });
            r?;
            located?;
            if width.is_none() {
                send_header(&mut head)?;
            }
            if let Some(b) = batch {
                let _ = tx.send(Msg::Rows(b));
            }
            Ok(())
        });

        let mapped = (|| {
            let Ok(Msg::Header(header, below)) = rx.recv() else {
                return Ok(None);
            };
            let mut mapper = Mapper::new(connector, name, &header);
            let mut body = String::with_capacity(1024);
            let mut on_record = |row: usize, rec: Record<'_>| {
                if row.is_multiple_of(1024) {
                    if cancelled() {
                        return Verdict::Stop;
                    }
                    rows_read.store(row, Ordering::Relaxed);
                }
                let key = connector.key_of(&rec);
                let digest = artifact::doc_digest(bu_id, &connector.name, &key);
                if let Some(first) = seen.get(&digest) {
                    return Verdict::Reject(Rejection {
                        column: key_headers.join(", "),
                        value: serde_json::to_string(&key).unwrap_or_default(),
                        reason: format!("duplicate key: row {first} has the same"),
                    });
                }
                body.clear();
                connector.write_json(&rec, &mut body);
                match artifact::write_line(out, &artifact::hex_id(&digest), row, &body) {
                    Ok(h) => checksum += i128::from(h),
                    Err(e) => {
                        io_error = Some(e);
                        return Verdict::Stop;
                    }
                }
                written += 1;
                seen.insert(digest, row);
                Verdict::Keep
            };
            for (r, cells) in below {
                if !mapper.row(r, &cells, &mut on_record) {
                    return Ok(None);
                }
            }
            for msg in rx.iter() {
                let Msg::Rows(batch) = msg else { continue };
                let mut start = 0;
                for (r, end) in batch.rows {
                    if !mapper.row(r, &batch.cells[start..end], &mut on_record) {
                        return Ok(None);
                    }
                    start = end;
                }
            }
            mapper.finish().map(Some)
        })();
        drop(rx);
        (reader.join(), mapped)
    });
    // A read error midway ends the row stream early: it wins over whatever was mapped.
    match read {
        Ok(r) => r?,
        Err(panic) => std::panic::resume_unwind(panic),
    }
    if let Some(e) = io_error {
        return Err(ParseError::Io(e.to_string()));
    }
    // None: no header message (cancelled before it) or stopped midway (cancelled).
    Ok(mapped?.map(|(rejected, mut report)| {
        report.format = Some(format);
        Parsed {
            records: written,
            checksum,
            rejected,
            report,
        }
    }))
}
