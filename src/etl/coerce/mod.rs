//! Turns workbook cells into typed values the way finance exports need: exact decimals,
//! locale-formatted numbers held as text (`1.234,56-`, `(1,234.56)`), Excel serial dates and
//! dates held as text (`31.12.2025`).

use std::borrow::Cow;
use std::str::FromStr;

use chrono::{Duration, NaiveDate, NaiveDateTime};
use rust_decimal::Decimal;
use serde::Serialize;

pub use crate::configuration::connector::{ColumnType, Locale};

/// A cell as the reader saw it (mapped from calamine's `Data`). Text borrows from the
/// workbook's shared-strings table where the reader allows it (xlsx, xlsb): most cells of an
/// export are shared strings, and copying each one was the extract's largest cost.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    Empty,
    Int(i64),
    Float(f64),
    Text(Cow<'a, str>),
    Bool(bool),
    /// An Excel date/time serial (1900 date system), from a cell formatted as a date.
    Serial(f64),
    /// An ISO 8601 date or date-time (ods).
    Iso(String),
    /// A cell error such as `#N/A`.
    Error(String),
    /// An exact number given as decimal text (a JSON number from a command extractor):
    /// never a float, so `-31007.2` stays `-31007.2`.
    Number(Decimal),
}

impl Cell<'_> {
    /// The same cell, owning its text.
    pub fn into_owned(self) -> Cell<'static> {
        match self {
            Cell::Empty => Cell::Empty,
            Cell::Int(i) => Cell::Int(i),
            Cell::Float(f) => Cell::Float(f),
            Cell::Text(t) => Cell::Text(Cow::Owned(t.into_owned())),
            Cell::Bool(b) => Cell::Bool(b),
            Cell::Serial(f) => Cell::Serial(f),
            Cell::Iso(s) => Cell::Iso(s),
            Cell::Error(e) => Cell::Error(e),
            Cell::Number(d) => Cell::Number(d),
        }
    }

    /// Empty, or text that is only whitespace (what `as_text` would make empty).
    pub fn is_blank(&self) -> bool {
        match self {
            Cell::Empty => true,
            Cell::Text(t) => t.trim().is_empty(),
            Cell::Iso(s) | Cell::Error(s) => s.is_empty(),
            _ => false,
        }
    }
}

/// A typed value, serialised into the records artifact.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value<'a> {
    Null,
    String(Cow<'a, str>),
    Integer(i64),
    /// Serialised as a string so no JSON reader turns it into a float.
    Decimal(#[serde(with = "rust_decimal::serde::str")] Decimal),
    Date(NaiveDate),
    DateTime(NaiveDateTime),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CoerceError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, CoerceError> {
    Err(CoerceError(msg.into()))
}

/// Coerces one cell to `ty`. Empty cells (and whitespace-only text) become `Value::Null`;
/// whether that is allowed is the caller's (the column's `required` flag).
pub fn coerce<'a>(
    cell: &Cell<'a>,
    ty: ColumnType,
    locale: &Locale,
) -> Result<Value<'a>, CoerceError> {
    if let Cell::Text(t) = cell
        && t.trim().is_empty()
    {
        return Ok(Value::Null);
    }
    match (cell, ty) {
        (Cell::Empty, _) => Ok(Value::Null),
        (Cell::Error(e), _) => err(format!("cell error {e}")),
        (_, ColumnType::String) => Ok(Value::String(storable(text_of(cell)))),
        (_, ColumnType::Decimal) => decimal(cell, locale).map(Value::Decimal),
        (_, ColumnType::Integer) => {
            let d = decimal(cell, locale)?;
            if d.fract() != Decimal::ZERO {
                return err(format!("{} is not a whole number", d.normalize()));
            }
            i64::try_from(d)
                .map(Value::Integer)
                .or_else(|_| err(format!("{d} is out of range for an integer")))
        }
        (_, ColumnType::Date) => date_time(cell, locale).map(|dt| Value::Date(dt.date())),
        (_, ColumnType::Datetime) => date_time(cell, locale).map(Value::DateTime),
        (_, ColumnType::Bool) => boolean(cell).map(Value::Bool),
    }
}

/// Text every sink can store: NUL (U+0000 — what Excel writes as `_x0000_` for a control
/// character) becomes U+FFFD. PostgreSQL's `jsonb` refuses it, so one such cell used to fail a
/// whole upload at sync; replacing it at extract keeps the row and makes both sinks store the
/// same bytes.
pub fn storable(text: Cow<'_, str>) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        text
    }
}

/// Text form of a cell, numbers without a spurious `.0` (account numbers are often numeric).
pub fn as_text(cell: &Cell) -> String {
    match cell {
        Cell::Empty => String::new(),
        Cell::Int(i) => i.to_string(),
        Cell::Float(f) | Cell::Serial(f) => float_text(*f),
        Cell::Text(t) => t.trim().to_string(),
        Cell::Bool(b) => b.to_string(),
        Cell::Iso(s) | Cell::Error(s) => s.clone(),
        Cell::Number(d) => d.to_string(),
    }
}

/// `as_text`, borrowing where the cell's text is borrowed.
pub fn text_of<'a>(cell: &Cell<'a>) -> Cow<'a, str> {
    match cell {
        Cell::Text(Cow::Borrowed(t)) => Cow::Borrowed(t.trim()),
        other => Cow::Owned(as_text(other)),
    }
}

/// The shortest text that round-trips the float: 1234.56 → "1234.56", 400000.0 → "400000".
fn float_text(f: f64) -> String {
    if let Some(d) = cents(f) {
        return d.to_string();
    }
    let s = format!("{f}");
    s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
}

/// Whole numbers and amounts in cents — nearly every number in an export — without
/// formatting and parsing text: when n/100 round-trips to `f`, its decimal is exactly what
/// `format!("{f}")` shows (below 1e13 no other text with at most two decimals is as close).
/// A test holds the two paths equal.
fn cents(f: f64) -> Option<Decimal> {
    if f == 0.0 || f.abs() >= 1e13 || !f.is_finite() {
        return None;
    }
    let n = (f * 100.0).round();
    (n / 100.0 == f).then(|| Decimal::new(n as i64, 2).normalize())
}

fn decimal(cell: &Cell, locale: &Locale) -> Result<Decimal, CoerceError> {
    match cell {
        Cell::Int(i) => Ok(Decimal::from(*i)),
        Cell::Number(d) => Ok(*d),
        // The shortest round-trip text is what Excel displays; parsing it gives the exact
        // decimal the user typed (1234.56, not 1234.5599999999999).
        Cell::Float(f) if let Some(d) = cents(*f) => Ok(d),
        Cell::Float(f) if f.is_finite() => Decimal::from_str(&format!("{f}"))
            .or_else(|_| Decimal::from_scientific(&format!("{f:e}")))
            .or_else(|_| err(format!("{f} cannot be represented exactly"))),
        Cell::Text(t) => parse_number_text(t, locale),
        Cell::Bool(_) | Cell::Serial(_) | Cell::Iso(_) | Cell::Float(_) => {
            err(format!("expected a number, found {}", describe(cell)))
        }
        Cell::Empty | Cell::Error(_) => err("no number"),
    }
}

/// Parses numbers held as text: `1,234.56`, `1.234,56`, `1.234,56-` (trailing minus),
/// `(1,234.56)` (accounting negative), `-5`, `+5`, `1 234,56` (space grouping).
///
/// ASCII text (nearly all of it) is parsed without allocating; anything else, and numbers too
/// long for the fast path, go through `parse_number_text_general`, which defines the result
/// (a test compares the two).
pub fn parse_number_text(raw: &str, locale: &Locale) -> Result<Decimal, CoerceError> {
    if raw.is_ascii()
        && let Some(r) = parse_ascii_number(raw, locale)
    {
        return r;
    }
    parse_number_text_general(raw, locale)
}

/// The fast path of `parse_number_text`: `None` hands the text to the general parser.
fn parse_ascii_number(raw: &str, locale: &Locale) -> Option<Result<Decimal, CoerceError>> {
    let bad = || Some(err(format!("not a number: {raw:?}")));
    let mut s = raw.trim();
    let mut negative = false;
    if s.starts_with('(') && s.ends_with(')') && s.len() > 2 {
        negative = true;
        s = s[1..s.len() - 1].trim();
    }
    if let Some(rest) = s.strip_suffix('-') {
        negative = !negative;
        s = rest.trim_end();
    } else if let Some(rest) = s.strip_prefix('-') {
        negative = !negative;
        s = rest.trim_start();
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest.trim_start();
    }
    if s.is_empty() {
        return bad();
    }
    let dec = locale.decimal_separator;
    let (mut mantissa, mut digits, mut scale) = (0u128, 0u32, 0u32);
    let (mut int_digits, mut in_frac) = (0usize, false);
    let mut last_group = 0usize;
    let mut grouped = false;
    for c in s.chars() {
        if c == dec {
            if in_frac {
                return bad();
            }
            in_frac = true;
        } else if let Some(d) = c.to_digit(10) {
            if digits >= 38 {
                return None;
            }
            mantissa = mantissa * 10 + u128::from(d);
            digits += 1;
            if in_frac {
                scale += 1;
            } else {
                int_digits += 1;
                last_group += 1;
            }
        } else if !in_frac
            && (Some(c) == locale.thousands_separator
                || (c == ' ' && locale.thousands_separator.is_some()))
        {
            if int_digits == 0 || (grouped && last_group != 3) || (!grouped && last_group > 3) {
                return bad();
            }
            grouped = true;
            last_group = 0;
        } else {
            return bad();
        }
    }
    if (grouped && last_group != 3) || (int_digits == 0 && scale == 0) || (in_frac && scale == 0) {
        return bad();
    }
    let signed = i128::try_from(mantissa).ok()?;
    let d = Decimal::try_from_i128_with_scale(signed, scale).ok()?;
    Some(Ok(if negative { -d } else { d }))
}

/// The general parser (any text, any length), also the fast path's reference.
fn parse_number_text_general(raw: &str, locale: &Locale) -> Result<Decimal, CoerceError> {
    let bad = || err(format!("not a number: {raw:?}"));
    let mut s: String = raw
        .trim()
        .chars()
        .filter(|c| !matches!(c, '\u{a0}' | '\u{202f}'))
        .collect();
    let mut negative = false;
    if s.starts_with('(') && s.ends_with(')') && s.len() > 2 {
        negative = true;
        s = s[1..s.len() - 1].trim().to_string();
    }
    if let Some(rest) = s.strip_suffix('-') {
        negative = !negative;
        s = rest.trim_end().to_string();
    } else if let Some(rest) = s.strip_prefix('-') {
        negative = !negative;
        s = rest.trim_start().to_string();
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest.trim_start().to_string();
    }
    if s.is_empty() {
        return bad();
    }
    let dec = locale.decimal_separator;
    let mut int_part = String::new();
    let mut frac_part: Option<String> = None;
    let mut last_group = 0usize;
    let mut grouped = false;
    for c in s.chars() {
        if c == dec {
            if frac_part.is_some() {
                return bad();
            }
            frac_part = Some(String::new());
        } else if c.is_ascii_digit() {
            match &mut frac_part {
                Some(f) => f.push(c),
                None => {
                    int_part.push(c);
                    last_group += 1;
                }
            }
        } else if frac_part.is_none()
            && (Some(c) == locale.thousands_separator
                || (c == ' ' && locale.thousands_separator.is_some()))
        {
            // Groups after the first must have exactly three digits.
            if int_part.is_empty() || (grouped && last_group != 3) || (!grouped && last_group > 3) {
                return bad();
            }
            grouped = true;
            last_group = 0;
        } else {
            return bad();
        }
    }
    if (grouped && last_group != 3)
        || (int_part.is_empty() && frac_part.as_deref().is_none_or(str::is_empty))
    {
        return bad();
    }
    let text = match frac_part {
        Some(f) if !f.is_empty() => {
            format!("{}.{f}", if int_part.is_empty() { "0" } else { &int_part })
        }
        Some(_) => return bad(),
        None => int_part,
    };
    let d = Decimal::from_str_exact(&text).or_else(|_| bad())?;
    Ok(if negative { -d } else { d })
}

fn excel_serial(serial: f64) -> Result<NaiveDateTime, CoerceError> {
    // 1900 date system. Excel counts 1900-02-29 (serial 60), which never existed: serials
    // above it are one day ahead of a plain count from 1899-12-31.
    if !(1.0..2_958_466.0).contains(&serial) {
        return err(format!("{serial} is not an Excel date"));
    }
    if (60.0..61.0).contains(&serial) {
        return err("Excel serial 60 is 1900-02-29, which does not exist");
    }
    let base = if serial < 60.0 {
        NaiveDate::from_ymd_opt(1899, 12, 31)
    } else {
        NaiveDate::from_ymd_opt(1899, 12, 30)
    }
    .expect("valid base date")
    .and_hms_opt(0, 0, 0)
    .expect("midnight");
    let days = serial.trunc() as i64;
    let ms = ((serial - serial.trunc()) * 86_400_000.0).round() as i64;
    Ok(base + Duration::days(days) + Duration::milliseconds(ms))
}

fn date_time(cell: &Cell, locale: &Locale) -> Result<NaiveDateTime, CoerceError> {
    match cell {
        Cell::Serial(f) | Cell::Float(f) => excel_serial(*f),
        Cell::Int(i) => excel_serial(*i as f64),
        Cell::Iso(s) | Cell::Text(Cow::Owned(s)) => text_date(s, locale),
        Cell::Text(Cow::Borrowed(s)) => text_date(s, locale),
        _ => err(format!("expected a date, found {}", describe(cell))),
    }
}

/// `%d.%m.%Y`-like formats (day, month and four-digit year, zero-padded, one-character
/// separators) and `%Y-%m-%d`, parsed by hand: chrono's general parser was a tenth of the
/// extract. `None`: not that shape, let chrono decide.
fn simple_date(s: &str, fmt: &str) -> Option<NaiveDate> {
    let (f, b) = (fmt.as_bytes(), s.as_bytes());
    let num = |i: usize, n: usize| -> Option<u32> {
        let mut v = 0u32;
        for &c in b.get(i..i + n)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(c - b'0');
        }
        Some(v)
    };
    match f {
        [b'%', x, s1, b'%', y, s2, b'%', b'Y']
            if b.len() == 10 && b[2] == *s1 && b[5] == *s2 && !s1.is_ascii_alphanumeric() =>
        {
            let (a, c, year) = (num(0, 2)?, num(3, 2)?, num(6, 4)?);
            let (day, month) = match (x, y) {
                (b'd', b'm') => (a, c),
                (b'm', b'd') => (c, a),
                _ => return None,
            };
            NaiveDate::from_ymd_opt(year as i32, month, day)
        }
        b"%Y-%m-%d" if b.len() == 10 && b[4] == b'-' && b[7] == b'-' => {
            NaiveDate::from_ymd_opt(num(0, 4)? as i32, num(5, 2)?, num(8, 2)?)
        }
        _ => None,
    }
}

fn text_date(s: &str, locale: &Locale) -> Result<NaiveDateTime, CoerceError> {
    {
        {
            let s = s.trim();
            let fmts = locale
                .date_formats
                .iter()
                .map(String::as_str)
                .chain(["%Y-%m-%d"]);
            for fmt in fmts {
                if let Some(d) = simple_date(s, fmt) {
                    return Ok(d.and_hms_opt(0, 0, 0).expect("midnight"));
                }
                if let Ok(dt) = NaiveDateTime::parse_from_str(s, fmt) {
                    return Ok(dt);
                }
                if let Ok(d) = NaiveDate::parse_from_str(s, fmt) {
                    return Ok(d.and_hms_opt(0, 0, 0).expect("midnight"));
                }
            }
            for fmt in [
                "%Y-%m-%dT%H:%M:%S%.f",
                "%Y-%m-%d %H:%M:%S%.f",
                "%Y-%m-%dT%H:%M:%S",
                "%Y-%m-%d %H:%M:%S",
            ] {
                if let Ok(dt) = NaiveDateTime::parse_from_str(s, fmt) {
                    return Ok(dt);
                }
            }
            err(format!("not a date: {s:?}"))
        }
    }
}

fn boolean(cell: &Cell) -> Result<bool, CoerceError> {
    match cell {
        Cell::Bool(b) => Ok(*b),
        Cell::Int(0) => Ok(false),
        Cell::Int(1) => Ok(true),
        Cell::Float(f) if *f == 0.0 => Ok(false),
        Cell::Float(f) if *f == 1.0 => Ok(true),
        Cell::Number(d) if d.is_zero() => Ok(false),
        Cell::Number(d) if *d == Decimal::ONE => Ok(true),
        Cell::Text(t) => {
            let t = t.trim();
            let is = |words: &[&str]| words.iter().any(|w| t.eq_ignore_ascii_case(w));
            if is(&["true", "yes", "y", "x", "1", "ja", "j", "wahr"]) {
                Ok(true)
            } else if is(&["false", "no", "n", "0", "nein", "falsch"]) {
                Ok(false)
            } else {
                err(format!("not a boolean: {:?}", t.to_lowercase()))
            }
        }
        _ => err(format!("expected a boolean, found {}", describe(cell))),
    }
}

fn describe(cell: &Cell<'_>) -> String {
    match cell {
        Cell::Empty => "an empty cell".into(),
        Cell::Int(i) => format!("the number {i}"),
        Cell::Float(f) => format!("the number {f}"),
        Cell::Text(t) => format!("the text {t:?}"),
        Cell::Bool(b) => format!("the boolean {b}"),
        Cell::Serial(f) => format!("a date (serial {f})"),
        Cell::Iso(s) => format!("the date {s}"),
        Cell::Error(e) => format!("the error {e}"),
        Cell::Number(d) => format!("the number {d}"),
    }
}

/// Header text as compared with a connector's column names: case- and whitespace-insensitive.
pub fn normalize_header(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

#[cfg(test)]
mod tests;
