//! Deterministic sample ERP exports and the values they hold, computed here from the same
//! model the workbook is written from (not by reading it back): the tests compare the sink
//! against these, and `examples/make_samples.rs` writes them to `samples/`.
#![allow(dead_code)]

use chrono::NaiveDate;
use rust_decimal::Decimal;
use rust_xlsxwriter::{DocProperties, ExcelDateTime, Format, Workbook, Worksheet};

/// Tiny deterministic generator (no dependency, same sequence everywhere).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One line item of the G/L export, as the connector `sap_fbl3n` must read it.
#[derive(Debug, Clone, PartialEq)]
pub struct GlLine {
    pub row: usize,
    pub company_code: String,
    pub gl_account: String,
    pub document: String,
    pub line_item: i64,
    pub posting_date: NaiveDate,
    pub document_type: String,
    pub amount: Decimal,
    pub currency: String,
    pub text: Option<String>,
}

pub struct GlSample {
    pub bytes: Vec<u8>,
    pub lines: Vec<GlLine>,
    /// (1-based row, column header) of rows that must be rejected.
    pub rejected: Vec<(usize, &'static str)>,
    /// Subtotal and blank rows that must be skipped.
    pub skipped: usize,
}

pub const GL_HEADERS: [&str; 9] = [
    "Company Code",
    "G/L Account",
    "Document Number",
    "Line Item",
    "Posting Date",
    "Document Type",
    "Amount in LC",
    "Currency",
    "Text",
];

fn german(d: Decimal) -> String {
    // 1234.5 → "1.234,50"; the sign is added by the caller.
    let s = format!("{:.2}", d.abs());
    let (int, frac) = s.split_once('.').expect("two decimals");
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push('.');
        }
        grouped.push(c);
    }
    format!("{grouped},{frac}")
}

fn fixed_properties(wb: &mut Workbook) {
    let when = ExcelDateTime::from_ymd(2026, 1, 2).expect("date");
    wb.set_properties(&DocProperties::new().set_creation_datetime(&when));
}

/// A SAP FBL3N-like G/L line-item export: title rows above the header, line items grouped
/// by account with a `*` subtotal line and a blank row after each group, dates as date
/// cells or `dd.mm.yyyy` text, amounts as numbers, `1.234,56-` or `(1.234,56)` text.
/// `bad_rows` rows get an impossible date and must be rejected.
pub fn gl_export(lines: usize, bad_rows: usize) -> GlSample {
    let mut wb = Workbook::new();
    fixed_properties(&mut wb);
    let ws = wb.add_worksheet();
    ws.set_name("GL").expect("name");
    let date_fmt = Format::new().set_num_format("dd.mm.yyyy");
    ws.write_string(0, 0, "G/L Account Line Item Display")
        .expect("write");
    ws.write_string(1, 0, "Company Code 1000, Ledger 0L")
        .expect("write");
    ws.write_string(2, 0, "Exported 02.01.2026 by ETL_USER")
        .expect("write");
    for (c, h) in GL_HEADERS.iter().enumerate() {
        ws.write_string(4, c as u16, *h).expect("write");
    }
    let mut rng = Lcg(42);
    let mut out = GlSample {
        bytes: Vec::new(),
        lines: Vec::with_capacity(lines),
        rejected: Vec::new(),
        skipped: 0,
    };
    let texts = [
        Some("Miete März"),
        Some("Office \"supplies\""),
        None,
        Some("Travel; Q4"),
        Some("  padded  "),
    ];
    let base = NaiveDate::from_ymd_opt(2025, 1, 1).expect("date");
    let bad_every = lines.checked_div(bad_rows).unwrap_or(usize::MAX);
    let mut r: u32 = 5;
    let mut group_sum = Decimal::ZERO;
    let mut account = 400000;
    for i in 0..lines {
        if i > 0 && i % 50 == 0 {
            subtotal(ws, &mut r, group_sum);
            out.skipped += 2;
            group_sum = Decimal::ZERO;
            account += 10;
        }
        let company = if i % 7 == 0 { "2000" } else { "1000" };
        let document = format!("19{:08}", i / 3);
        let line_item = (i % 3) as i64 + 1;
        let date = base + chrono::Days::new(rng.below(365));
        let cents = rng.below(20_000_000) as i64 - 5_000_000;
        let amount = Decimal::new(cents, 2);
        let doc_type = ["SA", "KR", "DR", "AB"][rng.below(4) as usize];
        let text = texts[i % texts.len()];
        ws.write_string(r, 0, company).expect("write");
        ws.write_number(r, 1, account as f64).expect("write");
        ws.write_string(r, 2, &document).expect("write");
        ws.write_number(r, 3, line_item as f64).expect("write");
        let bad = bad_rows > 0 && i % bad_every == bad_every - 1 && out.rejected.len() < bad_rows;
        if bad {
            ws.write_string(r, 4, "31.02.2025").expect("write");
            out.rejected.push((r as usize + 1, "Posting Date"));
        } else if i % 2 == 0 {
            let d = ExcelDateTime::from_ymd(
                date.year_ce().1 as u16,
                date.month0() as u8 + 1,
                date.day0() as u8 + 1,
            )
            .expect("date");
            ws.write_datetime_with_format(r, 4, &d, &date_fmt)
                .expect("write");
        } else {
            ws.write_string(r, 4, date.format("%d.%m.%Y").to_string())
                .expect("write");
        }
        ws.write_string(r, 5, doc_type).expect("write");
        match i % 3 {
            0 => {
                ws.write_number(r, 6, cents as f64 / 100.0).expect("write");
            }
            1 => {
                let sign = if amount.is_sign_negative() { "-" } else { "" };
                ws.write_string(r, 6, format!("{}{sign}", german(amount)))
                    .expect("write");
            }
            _ if amount.is_sign_negative() => {
                ws.write_string(r, 6, format!("({})", german(amount)))
                    .expect("write");
            }
            _ => {
                ws.write_string(r, 6, german(amount)).expect("write");
            }
        }
        ws.write_string(r, 7, "EUR").expect("write");
        if let Some(t) = text {
            ws.write_string(r, 8, t).expect("write");
        }
        if !bad {
            group_sum += amount;
            out.lines.push(GlLine {
                row: r as usize + 1,
                company_code: company.into(),
                gl_account: account.to_string(),
                document,
                line_item,
                posting_date: date,
                document_type: doc_type.into(),
                amount,
                currency: "EUR".into(),
                text: text.map(|t| t.trim().to_string()),
            });
        }
        r += 1;
    }
    subtotal(ws, &mut r, group_sum);
    out.skipped += 1; // no blank row after the last subtotal: the sheet ends there
    out.bytes = wb.save_to_buffer().expect("save");
    out
}

use chrono::Datelike;

fn subtotal(ws: &mut Worksheet, r: &mut u32, sum: Decimal) {
    ws.write_string(*r, 0, "*").expect("write");
    let sign = if sum.is_sign_negative() { "-" } else { "" };
    ws.write_string(*r, 6, format!("{}{sign}", german(sum)))
        .expect("write");
    *r += 2; // the subtotal, then a blank row
}

/// One trial-balance account, as the connector `trial_balance` must read it.
#[derive(Debug, Clone, PartialEq)]
pub struct TbLine {
    pub account: String,
    pub name: String,
    pub period_end: NaiveDate,
    pub opening: Decimal,
    pub debit: Option<Decimal>,
    pub credit: Option<Decimal>,
    pub closing: Decimal,
    pub active: Option<bool>,
}

pub struct TbSample {
    pub bytes: Vec<u8>,
    pub lines: Vec<TbLine>,
}

pub const TB_HEADERS: [&str; 8] = [
    "Account",
    "Account Name",
    "Period End",
    "Opening Balance",
    "Debit",
    "Credit",
    "Closing Balance",
    "Active",
];

fn english(d: Decimal) -> String {
    german(d)
        .replace('.', "_")
        .replace(',', ".")
        .replace('_', ",")
}

/// A trial balance: header in row 1, accounts as text, negatives in parentheses
/// (`(1,234.56)`), empty debit/credit cells, booleans as cells and as `Y`/`N` text.
pub fn trial_balance(accounts: usize) -> TbSample {
    let mut wb = Workbook::new();
    fixed_properties(&mut wb);
    let ws = wb.add_worksheet();
    ws.set_name("TB").expect("name");
    let date_fmt = Format::new().set_num_format("yyyy-mm-dd");
    for (c, h) in TB_HEADERS.iter().enumerate() {
        ws.write_string(0, c as u16, *h).expect("write");
    }
    let mut rng = Lcg(7);
    let period_end = NaiveDate::from_ymd_opt(2025, 12, 31).expect("date");
    let names = [
        "Cash",
        "Receivables",
        "Inventory",
        "Payables",
        "Revenue",
        "Rent expense",
    ];
    let mut lines = Vec::new();
    for i in 0..accounts {
        let r = i as u32 + 1;
        let account = format!("{:04}", 1000 + i * 10);
        let name = format!("{} {}", names[i % names.len()], i / names.len() + 1);
        let opening = Decimal::new(rng.below(2_000_000) as i64 - 1_000_000, 2);
        let debit = (i % 4 != 3).then(|| Decimal::new(rng.below(500_000) as i64, 2));
        let credit = (i % 5 != 4).then(|| Decimal::new(rng.below(500_000) as i64, 2));
        let closing = opening + debit.unwrap_or_default() - credit.unwrap_or_default();
        let active = match i % 3 {
            0 => Some(true),
            1 => Some(i % 2 == 0),
            _ => None,
        };
        ws.write_string(r, 0, &account).expect("write");
        ws.write_string(r, 1, &name).expect("write");
        ws.write_datetime_with_format(
            r,
            2,
            ExcelDateTime::from_ymd(2025, 12, 31).expect("date"),
            &date_fmt,
        )
        .expect("write");
        ws.write_number(r, 3, f64::try_from(opening).expect("f64"))
            .expect("write");
        if let Some(d) = debit {
            ws.write_number(r, 4, f64::try_from(d).expect("f64"))
                .expect("write");
        }
        if let Some(c) = credit {
            ws.write_string(r, 5, english(c)).expect("write");
        }
        if closing.is_sign_negative() {
            ws.write_string(r, 6, format!("({})", english(closing)))
                .expect("write");
        } else {
            ws.write_number(r, 6, f64::try_from(closing).expect("f64"))
                .expect("write");
        }
        match (i % 3, active) {
            (0, Some(b)) => {
                ws.write_boolean(r, 7, b).expect("write");
            }
            (_, Some(b)) => {
                ws.write_string(r, 7, if b { "Y" } else { "N" })
                    .expect("write");
            }
            _ => {}
        }
        lines.push(TbLine {
            account,
            name,
            period_end,
            opening,
            debit,
            credit,
            closing,
            active,
        });
    }
    TbSample {
        bytes: wb.save_to_buffer().expect("save"),
        lines,
    }
}
