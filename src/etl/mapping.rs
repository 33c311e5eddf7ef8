//! Applies a connector to a sheet's rows: header location, records, rejected rows (sheet, row,
//! column, value, reason), and the counts the extract report carries.

use serde::Serialize;

use super::coerce::Cell;
use super::connector::{
    Connector, ConnectorError, Header, HeaderMatch, HeaderRef, Record, Rejection, RowOutcome,
};
use super::workbook::{Grid, Row};

/// One rejected row, as the rejected-rows artifact and the API show it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct RejectedRow {
    pub sheet: String,
    /// 1-based, as Excel shows it.
    pub row: usize,
    pub column: String,
    pub value: String,
    pub reason: String,
}

/// What extract found, kept in the checkpoint and shown with the job.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Report {
    pub sheet: String,
    /// 1-based.
    pub header_row: usize,
    pub data_rows: usize,
    pub records: usize,
    pub skipped_rows: usize,
    pub rejected_rows: usize,
    /// What the file was read as (format, encoding, delimiter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<super::workbook::FormatInfo>,
    /// A command extractor's run: exit status, time, memory, stderr's tail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extractor: Option<super::extractor::CommandReport>,
}

/// A whole sheet mapped in memory (small files and tests).
#[derive(Debug, Clone)]
pub struct Mapped<'a> {
    pub records: Vec<Record<'a>>,
    pub rejected: Vec<RejectedRow>,
    pub report: Report,
}

/// What the record callback decides.
pub enum Verdict {
    Keep,
    Reject(Rejection),
    /// Stop mapping (cancelled, or the output failed).
    Stop,
}

/// Rows as (0-based sheet row, cells from column 0).
pub type DenseRows<'a> = Vec<(usize, Vec<Cell<'a>>)>;

/// The result of a streamed mapping: `None` when stopped midway.
pub type Streamed = Option<(Vec<RejectedRow>, Report)>;

/// How many leading rows can hold the header: they are buffered until it is found.
pub fn header_scope(connector: &Connector) -> usize {
    match connector.spec.header {
        HeaderRef::Row(r) => r.max(connector.spec.header_search_rows),
        HeaderRef::Auto(_) => connector.spec.header_search_rows,
    }
}

/// Sparse cells to a dense row of at most `width` cells (nothing right of it is needed).
pub fn densify<'a>(row: Row<'a>, width: usize) -> Vec<Cell<'a>> {
    let mut dense = Vec::new();
    densify_into(row, width, &mut dense);
    dense
}

/// Appends `row` to `out` as dense cells up to its last cell within `width`.
pub fn densify_into<'a>(
    row: impl IntoIterator<Item = (u32, Cell<'a>)>,
    width: usize,
    out: &mut Vec<Cell<'a>>,
) {
    let start = out.len();
    for (c, cell) in row {
        let c = c as usize;
        if c >= width {
            break;
        }
        if out.len() - start <= c {
            out.resize(start + c, Cell::Empty);
            out.push(cell);
        } else {
            out[start + c] = cell;
        }
    }
}

/// Finds the header among the first rows; returns it and the rows below it in that region.
pub fn locate<'a>(
    connector: &Connector,
    sheet: &str,
    head: Vec<(usize, Row<'a>)>,
    on_match: Option<&(dyn Fn(&HeaderMatch) + Sync)>,
) -> Result<(Header, DenseRows<'a>), ConnectorError> {
    let mut dense: Vec<Vec<Cell<'a>>> = Vec::new();
    let mut sparse = Vec::with_capacity(head.len());
    for (i, row) in head {
        dense.resize(i, Vec::new());
        dense.push(densify(row.clone(), usize::MAX));
        sparse.push((i, row));
    }
    let matched = connector.match_header(&dense);
    if let Some(f) = on_match {
        f(&matched);
    }
    let header = connector.header_of(sheet, &matched)?;
    let width = header.width();
    let below = sparse
        .into_iter()
        .filter(|(i, _)| *i > header.row)
        .map(|(i, r)| (i, densify(r, width)))
        .collect();
    Ok((header, below))
}

/// Maps the data rows below a located header, one at a time (rows in ascending order; gaps
/// are blank rows), counting what happened to each.
pub struct Mapper<'c> {
    connector: &'c Connector,
    sheet: &'c str,
    header: &'c Header,
    rejected: Vec<RejectedRow>,
    records: usize,
    skipped: usize,
    rejected_rows: usize,
    last: usize,
}

impl<'c> Mapper<'c> {
    pub fn new(connector: &'c Connector, sheet: &'c str, header: &'c Header) -> Self {
        Mapper {
            connector,
            sheet,
            header,
            rejected: Vec::new(),
            records: 0,
            skipped: 0,
            rejected_rows: 0,
            last: header.row,
        }
    }

    fn reject(&mut self, r: usize, why: Vec<Rejection>) {
        let sheet = self.sheet;
        self.rejected.extend(why.into_iter().map(|w| RejectedRow {
            sheet: sheet.to_string(),
            row: r + 1,
            column: w.column,
            value: w.value,
            reason: w.reason,
        }));
    }

    /// Maps sheet row `r` (0-based); `on_record` gets each record with its 1-based row.
    /// False when `on_record` said stop.
    pub fn row<'a>(
        &mut self,
        r: usize,
        cells: &[Cell<'a>],
        on_record: &mut impl FnMut(usize, Record<'a>) -> Verdict,
    ) -> bool {
        if r <= self.header.row {
            return true;
        }
        if r > self.last + 1 {
            // Rows that hold no cell at all are blank rows.
            match self.connector.map_row(self.header, &[]) {
                RowOutcome::Rejected(why) => {
                    for gap in self.last + 1..r {
                        self.rejected_rows += 1;
                        self.reject(gap, why.clone());
                    }
                }
                _ => self.skipped += r - self.last - 1,
            }
        }
        self.last = r;
        match self.connector.map_row(self.header, cells) {
            RowOutcome::Record(rec) => match on_record(r + 1, rec) {
                Verdict::Keep => self.records += 1,
                Verdict::Reject(why) => {
                    self.rejected_rows += 1;
                    self.reject(r, vec![why]);
                }
                Verdict::Stop => return false,
            },
            RowOutcome::Skipped => self.skipped += 1,
            RowOutcome::Rejected(why) => {
                self.rejected_rows += 1;
                self.reject(r, why);
            }
        }
        true
    }

    /// The rejected rows and the report, or the file's failure when more rows were rejected
    /// than the connector allows.
    pub fn finish(self) -> Result<(Vec<RejectedRow>, Report), ConnectorError> {
        let data_rows = self.last - self.header.row;
        let considered = self.records + self.rejected_rows;
        let limit = self.connector.spec.max_rejected_ratio;
        if considered > 0 && self.rejected_rows as f64 / considered as f64 > limit {
            let first = self
                .rejected
                .first()
                .map(|r| format!("; first: row {} column {:?}: {}", r.row, r.column, r.reason))
                .unwrap_or_default();
            return Err(ConnectorError::Layout(format!(
                "{} of {considered} rows in sheet {:?} were rejected, more than the connector {} allows ({:.1}%){first}",
                self.rejected_rows,
                self.sheet,
                self.connector.name,
                limit * 100.0
            )));
        }
        Ok((
            self.rejected,
            Report {
                sheet: self.sheet.to_string(),
                header_row: self.header.row + 1,
                data_rows,
                records: self.records,
                skipped_rows: self.skipped,
                rejected_rows: self.rejected_rows,
                format: None,
                extractor: None,
            },
        ))
    }
}

/// Maps a whole sheet held in memory (small files and tests; extract streams).
pub fn map_grid<'g>(connector: &Connector, grid: &'g Grid) -> Result<Mapped<'g>, ConnectorError> {
    let scope = header_scope(connector);
    let sparse = |r: &'g Vec<Cell<'static>>| -> Row<'g> {
        r.iter()
            .enumerate()
            .filter(|(_, c)| !matches!(c, Cell::Empty))
            .map(|(i, c)| (i as u32, c.clone()))
            .collect()
    };
    let head = grid
        .rows
        .iter()
        .enumerate()
        .take(scope)
        .filter(|(_, r)| !r.is_empty())
        .map(|(i, r)| (i, sparse(r)))
        .collect();
    let (header, below) = locate(connector, &grid.sheet, head, None)?;
    let width = header.width();
    let rest = grid
        .rows
        .iter()
        .enumerate()
        .skip(scope)
        .filter(|(_, r)| !r.is_empty())
        .map(|(i, r)| (i, densify(sparse(r), width)));
    let mut records = Vec::new();
    let mut mapper = Mapper::new(connector, &grid.sheet, &header);
    let mut keep = |_, rec| {
        records.push(rec);
        Verdict::Keep
    };
    for (r, cells) in below.into_iter().chain(rest) {
        mapper.row(r, &cells, &mut keep);
    }
    let (rejected, report) = mapper.finish()?;
    Ok(Mapped {
        records,
        rejected,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etl::coerce::Value;
    use crate::etl::connector::{SheetRef, sap_gl_spec};
    use crate::etl::workbook::read_sheet;
    use rust_decimal::Decimal;
    use rust_xlsxwriter::Workbook;

    /// A small SAP FBL3N-like export: title rows, a header, line items (numbers held as text
    /// in German format), a subtotal line and a row with a bad date.
    fn fbl3n(bad_rows: usize) -> Vec<u8> {
        let mut wb = Workbook::new();
        let ws = wb.add_worksheet();
        ws.set_name("GL").unwrap();
        ws.write_string(0, 0, "G/L Account Line Item Display")
            .unwrap();
        ws.write_string(1, 0, "Company Code 1000").unwrap();
        for (c, h) in ["Document Number", "Posting Date", "Amount in LC", "Text"]
            .iter()
            .enumerate()
        {
            ws.write_string(3, c as u16, *h).unwrap();
        }
        let lines = [
            ("100001", "01.12.2025", "1.000,00"),
            ("100002", "15.12.2025", "250,50-"),
            ("100003", "31.12.2025", "(12,00)"),
        ];
        let mut r = 4;
        for (doc, date, amt) in lines {
            ws.write_string(r, 0, doc).unwrap();
            ws.write_string(r, 1, date).unwrap();
            ws.write_string(r, 2, amt).unwrap();
            ws.write_string(r, 3, "line").unwrap();
            r += 1;
        }
        ws.write_string(r, 0, "* Total").unwrap();
        ws.write_string(r, 2, "738,50").unwrap();
        r += 2; // a blank row
        for i in 0..bad_rows {
            ws.write_string(r, 0, format!("9{i:05}")).unwrap();
            ws.write_string(r, 1, "32.13.2025").unwrap();
            ws.write_string(r, 2, "1,00").unwrap();
            r += 1;
        }
        wb.save_to_buffer().unwrap()
    }

    fn connector(max_rejected_ratio: f64) -> Connector {
        let mut spec = sap_gl_spec();
        spec.max_rejected_ratio = max_rejected_ratio;
        Connector::new("sap_fbl3n", spec).unwrap()
    }

    #[test]
    fn extracts_line_items_skipping_titles_subtotals_and_blanks() {
        let grid = read_sheet(fbl3n(1), &SheetRef::Name("GL".into()), 64 << 20).unwrap();
        let c = connector(0.5);
        let out = map_grid(&c, &grid).unwrap();
        let amounts: Vec<&Value> = out
            .records
            .iter()
            .map(|r| c.value(r, "amount").unwrap())
            .collect();
        assert_eq!(
            amounts,
            [
                &Value::Decimal(Decimal::new(100000, 2)),
                &Value::Decimal(Decimal::new(-25050, 2)),
                &Value::Decimal(Decimal::new(-1200, 2)),
            ]
        );
        assert_eq!(
            c.value(&out.records[2], "posting_date"),
            Some(&Value::Date(
                chrono::NaiveDate::from_ymd_opt(2025, 12, 31).unwrap()
            ))
        );
        assert_eq!(
            out.rejected,
            vec![RejectedRow {
                sheet: "GL".into(),
                row: 10,
                column: "Posting Date".into(),
                value: "32.13.2025".into(),
                reason: "not a date: \"32.13.2025\"".into(),
            }]
        );
        assert_eq!(
            out.report,
            Report {
                sheet: "GL".into(),
                header_row: 4,
                data_rows: 6,
                records: 3,
                skipped_rows: 2,
                rejected_rows: 1,
                format: None,
                extractor: None,
            }
        );
    }

    #[test]
    fn too_many_rejected_rows_fail_the_file_with_the_first_reason() {
        let grid = read_sheet(fbl3n(2), &SheetRef::Index(0), 64 << 20).unwrap();
        let e = map_grid(&connector(0.05), &grid).unwrap_err();
        assert_eq!(
            e.to_string(),
            "2 of 5 rows in sheet \"GL\" were rejected, more than the connector sap_fbl3n allows (5.0%); first: row 10 column \"Posting Date\": not a date: \"32.13.2025\""
        );
    }
}
