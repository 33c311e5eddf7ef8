//! Applies a connector to a sheet: records, rejected rows (sheet, row, column, value, reason),
//! and the counts the extract report carries.

use std::collections::BTreeMap;

use serde::Serialize;

use super::coerce::Cell;
use super::coerce::Value;
use super::connector::{Connector, ConnectorError, HeaderRef, Rejection, RowOutcome};
use super::workbook::Grid;

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct RejectedRow {
    pub sheet: String,
    /// 1-based, as Excel shows it.
    pub row: usize,
    pub column: String,
    pub value: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Report {
    pub sheet: String,
    /// 1-based header row.
    pub header_row: usize,
    pub data_rows: usize,
    pub records: usize,
    pub skipped_rows: usize,
    pub rejected_rows: usize,
}

#[derive(Debug, Clone)]
pub struct Extracted {
    pub records: Vec<BTreeMap<String, Value>>,
    pub rejected: Vec<RejectedRow>,
    pub report: Report,
}

/// What the caller of [`extract_with`] makes of a mapped record.
pub enum Verdict {
    Keep,
    /// Reject the row after all (e.g. a duplicate key).
    Reject(Rejection),
    /// Stop reading (cancelled).
    Stop,
}

/// Outcome of [`extract_with`]: the rejected rows and the report, or `None` when stopped.
pub type Streamed = Option<(Vec<RejectedRow>, Report)>;

/// Extracts every data row below the header, collecting the records (small files and tests).
pub fn extract(connector: &Connector, grid: &Grid) -> Result<Extracted, ConnectorError> {
    let mut records = Vec::new();
    let (rejected, report) = extract_with(connector, grid, |_, rec| {
        records.push(rec);
        Verdict::Keep
    })?
    .expect("never stopped");
    Ok(Extracted {
        records,
        rejected,
        report,
    })
}

/// [`extract_stream`] over a grid already in memory.
pub fn extract_with(
    connector: &Connector,
    grid: &Grid,
    on_record: impl FnMut(usize, BTreeMap<String, Value>) -> Verdict,
) -> Result<Streamed, ConnectorError> {
    let rows = grid
        .rows
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.is_empty())
        .map(|(i, r)| (i, r.clone()));
    extract_stream(connector, &grid.sheet, rows, on_record)
}

/// Extracts every data row below the header from `rows` ((0-based index, cells), in order;
/// rows absent from the iterator are blank), handing each record with its 1-based row to
/// `on_record` as it is mapped, so nothing but the rejected rows is held. Fails (a layout
/// error: the job must not be retried) when the header is missing or more rows are rejected
/// than the connector allows.
pub fn extract_stream(
    connector: &Connector,
    sheet: &str,
    rows: impl Iterator<Item = (usize, Vec<Cell>)>,
    mut on_record: impl FnMut(usize, BTreeMap<String, Value>) -> Verdict,
) -> Result<Streamed, ConnectorError> {
    // The header is looked for in the first rows only; buffer just those.
    let scope = match connector.spec.header {
        HeaderRef::Row(r) => r.max(connector.spec.header_search_rows),
        HeaderRef::Auto(_) => connector.spec.header_search_rows,
    };
    let mut rows = rows.peekable();
    let mut head: Vec<Vec<Cell>> = Vec::new();
    while let Some((i, _)) = rows.peek() {
        if *i >= scope {
            break;
        }
        let (i, row) = rows.next().expect("peeked");
        head.resize(i, Vec::new());
        head.push(row);
    }
    let header = connector.locate_header(sheet, &head)?;
    let body = head
        .into_iter()
        .enumerate()
        .skip(header.row + 1)
        .filter(|(_, r)| !r.is_empty())
        .chain(rows);

    let mut rejected = Vec::new();
    let (mut records, mut skipped, mut rejected_rows) = (0, 0, 0);
    let mut reject = |r: usize, why: Vec<Rejection>| {
        rejected.extend(why.into_iter().map(|w| RejectedRow {
            sheet: sheet.to_string(),
            row: r + 1,
            column: w.column,
            value: w.value,
            reason: w.reason,
        }));
    };
    let mut last = header.row;
    for (r, row) in body {
        // Rows between two read rows hold no cell: they are blank rows.
        for gap in last + 1..r {
            match connector.map_row(&header, &[]) {
                RowOutcome::Rejected(why) => {
                    rejected_rows += 1;
                    reject(gap, why);
                }
                _ => skipped += 1,
            }
        }
        last = r;
        match connector.map_row(&header, &row) {
            RowOutcome::Record(rec) => match on_record(r + 1, rec) {
                Verdict::Keep => records += 1,
                Verdict::Reject(why) => {
                    rejected_rows += 1;
                    reject(r, vec![why]);
                }
                Verdict::Stop => return Ok(None),
            },
            RowOutcome::Skipped => skipped += 1,
            RowOutcome::Rejected(why) => {
                rejected_rows += 1;
                reject(r, why);
            }
        }
    }
    let data_rows = last - header.row;
    let considered = records + rejected_rows;
    let limit = connector.spec.max_rejected_ratio;
    if considered > 0 && rejected_rows as f64 / considered as f64 > limit {
        let first = rejected
            .first()
            .map(|r| format!("; first: row {} column {:?}: {}", r.row, r.column, r.reason))
            .unwrap_or_default();
        return Err(ConnectorError::Layout(format!(
            "{rejected_rows} of {considered} rows in sheet {sheet:?} were rejected, more than the connector {} allows ({:.1}%){first}",
            connector.name,
            limit * 100.0
        )));
    }
    Ok(Some((
        rejected,
        Report {
            sheet: sheet.to_string(),
            header_row: header.row + 1,
            data_rows,
            records,
            skipped_rows: skipped,
            rejected_rows,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let out = extract(&connector(0.5), &grid).unwrap();
        let amounts: Vec<&Value> = out.records.iter().map(|r| &r["amount"]).collect();
        assert_eq!(
            amounts,
            [
                &Value::Decimal(Decimal::new(100000, 2)),
                &Value::Decimal(Decimal::new(-25050, 2)),
                &Value::Decimal(Decimal::new(-1200, 2)),
            ]
        );
        assert_eq!(
            out.records[2]["posting_date"],
            Value::Date(chrono::NaiveDate::from_ymd_opt(2025, 12, 31).unwrap())
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
                rejected_rows: 1
            }
        );
    }

    #[test]
    fn too_many_rejected_rows_fail_the_file_with_the_first_reason() {
        let grid = read_sheet(fbl3n(2), &SheetRef::Index(0), 64 << 20).unwrap();
        let e = extract(&connector(0.05), &grid).unwrap_err();
        assert_eq!(
            e.to_string(),
            "2 of 5 rows in sheet \"GL\" were rejected, more than the connector sap_fbl3n allows (5.0%); first: row 10 column \"Posting Date\": not a date: \"32.13.2025\""
        );
    }
}
