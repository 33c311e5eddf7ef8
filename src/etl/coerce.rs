//! Turns workbook cells into typed values the way finance exports need: exact decimals,
//! locale-formatted numbers held as text (`1.234,56-`, `(1,234.56)`), Excel serial dates and
//! dates held as text (`31.12.2025`).

use std::borrow::Cow;
use std::str::FromStr;

use chrono::{Duration, NaiveDate, NaiveDateTime};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    String,
    Integer,
    Decimal,
    Date,
    Datetime,
    Bool,
}

/// How numbers and dates held as text are written in an export.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Locale {
    pub decimal_separator: char,
    /// `None` accepts no grouping characters at all.
    pub thousands_separator: Option<char>,
    /// chrono formats tried in order for dates held as text; ISO `%Y-%m-%d` is always tried last.
    pub date_formats: Vec<String>,
}

impl Default for Locale {
    fn default() -> Self {
        Locale {
            decimal_separator: '.',
            thousands_separator: Some(','),
            date_formats: Vec::new(),
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
        (_, ColumnType::String) => Ok(Value::String(text_of(cell))),
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
mod tests {
    use super::*;

    fn de() -> Locale {
        Locale {
            decimal_separator: ',',
            thousands_separator: Some('.'),
            date_formats: vec!["%d.%m.%Y".into()],
        }
    }
    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    #[test]
    fn numbers_held_as_text_in_both_locales() {
        let en = Locale::default();
        assert_eq!(parse_number_text("1,234.56", &en).unwrap(), d("1234.56"));
        assert_eq!(parse_number_text("(1,234.56)", &en).unwrap(), d("-1234.56"));
        assert_eq!(parse_number_text("-0.5", &en).unwrap(), d("-0.5"));
        assert_eq!(parse_number_text("+7", &en).unwrap(), d("7"));
        assert_eq!(parse_number_text(".5", &en).unwrap(), d("0.5"));
        assert_eq!(
            parse_number_text("1.234,56-", &de()).unwrap(),
            d("-1234.56")
        );
        assert_eq!(
            parse_number_text("1.234.567,00", &de()).unwrap(),
            d("1234567.00")
        );
        assert_eq!(parse_number_text("1 234,56", &de()).unwrap(), d("1234.56"));
        assert_eq!(parse_number_text("\u{a0}12,5 ", &de()).unwrap(), d("12.5"));
        for bad in [
            "",
            "-",
            "1,23.4",
            "12,34,567.1",
            "1.2.3",
            "abc",
            "1,234.56.7",
            "()",
            "1e5",
            "12,",
        ] {
            assert!(
                parse_number_text(bad, &en).is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert!(
            parse_number_text("1,234.56", &de()).is_err(),
            "en format in a de export"
        );
    }

    /// The fast path either declines or agrees with the general parser: every string of up
    /// to 4 characters over the characters numbers are made of, then 200,000 longer ones
    /// drawn at random (fixed seed), in three locales.
    #[test]
    fn the_fast_number_parser_agrees_with_the_general_one() {
        const ALPHABET: &[u8] = b"0123456789.,- ()+";
        let no_grouping = Locale {
            thousands_separator: None,
            ..Locale::default()
        };
        let locales = [Locale::default(), de(), no_grouping];
        let fast_numbers = std::cell::Cell::new(0usize);
        let check = |s: &str| {
            for l in &locales {
                if let Some(fast) = parse_ascii_number(s, l) {
                    let general = parse_number_text_general(s, l);
                    match (&fast, &general) {
                        (Ok(a), Ok(b)) => {
                            assert!(
                                a == b && a.scale() == b.scale(),
                                "{s:?}: fast {a} vs general {b}"
                            );
                            fast_numbers.set(fast_numbers.get() + 1);
                        }
                        (Err(_), Err(_)) => {}
                        _ => panic!("{s:?}: fast {fast:?} vs general {general:?}"),
                    }
                }
            }
        };
        let mut s = String::new();
        let mut checked = 0;
        for len in 0..=4u32 {
            for mut n in 0..ALPHABET.len().pow(len) {
                s.clear();
                for _ in 0..len {
                    s.push(ALPHABET[n % ALPHABET.len()] as char);
                    n /= ALPHABET.len();
                }
                check(&s);
                checked += 1;
            }
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200_000 {
            s.clear();
            let len = 5 + (next() % 40) as usize;
            for _ in 0..len {
                // Mostly digits and separators, the shapes real exports have.
                let r = next() % 100;
                let c = match r {
                    0..=69 => b'0' + (next() % 10) as u8,
                    _ => ALPHABET[10 + (next() % 7) as usize],
                };
                s.push(c as char);
            }
            check(&s);
            checked += 1;
        }
        // Well-formed numbers too (random text rarely is one): grouped or not, with or
        // without a fraction, in each sign style, up to 40 digits (past the fast path's 38).
        for _ in 0..50_000 {
            let (sep, dec) = [(',', '.'), ('.', ','), (' ', ',')][(next() % 3) as usize];
            let int_len = 1 + (next() % 30) as usize;
            let digits: Vec<char> = (0..int_len)
                .map(|_| (b'0' + (next() % 10) as u8) as char)
                .collect();
            let grouped = next() % 2 == 0;
            s.clear();
            for (i, c) in digits.iter().enumerate() {
                if grouped && i > 0 && (int_len - i).is_multiple_of(3) {
                    s.push(sep);
                }
                s.push(*c);
            }
            if next() % 2 == 0 {
                s.push(dec);
                for _ in 0..(next() % 10) {
                    s.push((b'0' + (next() % 10) as u8) as char);
                }
            }
            let number = std::mem::take(&mut s);
            s = match next() % 4 {
                0 => format!("-{number}"),
                1 => format!("{number}-"),
                2 => format!("({number})"),
                _ => number,
            };
            check(&s);
            checked += 1;
        }
        assert!(checked > 330_000);
        // The comparison is not vacuous: the fast path parsed a good share itself.
        assert!(fast_numbers.get() > 20_000, "{}", fast_numbers.get());
    }

    /// The cents fast path gives the text and decimal Display's text gives, for every float
    /// class: integers, cents, tenths of cents, tiny and huge magnitudes, random bit patterns.
    #[test]
    fn the_cents_fast_path_is_display_text() {
        let en = Locale::default();
        let mut fast = 0;
        let mut check = |f: f64| {
            let s = format!("{f}");
            let display = s.strip_suffix(".0").map(str::to_owned).unwrap_or(s);
            assert_eq!(float_text(f), display, "{f:e}");
            let via_text = Decimal::from_str(&format!("{f}"))
                .or_else(|_| Decimal::from_scientific(&format!("{f:e}")));
            let got = decimal(&Cell::Float(f), &en);
            match (via_text, got) {
                (Ok(a), Ok(b)) => assert!(
                    a == b
                        && a.scale() == b.scale()
                        && a.is_sign_negative() == b.is_sign_negative(),
                    "{f:e}: {a} vs {b}"
                ),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{f:e}: {a:?} vs {b:?}"),
            }
            if cents(f).is_some() {
                fast += 1;
            }
        };
        for f in [
            0.0,
            -0.0,
            0.1,
            1e15,
            1e16,
            1e17,
            1e21,
            1e22,
            1e-5,
            1e-7,
            5e-324,
            f64::MAX,
            f64::MIN_POSITIVE,
            123456789012345680000.0,
            0.30000000000000004,
        ] {
            check(f);
            check(-f);
        }
        for i in -100_000i64..100_000 {
            check(i as f64);
            check(i as f64 / 100.0);
            check(i as f64 / 1000.0);
            check(i as f64 * 1234.5678);
            check(i as f64 * 99_999_999.99);
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..300_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let f = f64::from_bits(seed);
            if f.is_finite() {
                check(f);
            }
        }
        assert!(fast > 300_000, "the fast path was taken {fast} times");
    }

    #[test]
    fn floats_become_the_exact_decimal_excel_shows() {
        let en = Locale::default();
        let v = coerce(&Cell::Float(1234.56), ColumnType::Decimal, &en).unwrap();
        assert_eq!(v, Value::Decimal(d("1234.56")));
        let v = coerce(&Cell::Float(0.1 + 0.2), ColumnType::Decimal, &en).unwrap();
        assert_eq!(
            v,
            Value::Decimal(d("0.30000000000000004")),
            "no silent rounding either"
        );
        assert_eq!(
            coerce(&Cell::Float(400000.0), ColumnType::String, &en).unwrap(),
            Value::String("400000".into())
        );
        assert_eq!(
            coerce(&Cell::Float(42.0), ColumnType::Integer, &en).unwrap(),
            Value::Integer(42)
        );
        assert!(coerce(&Cell::Float(42.5), ColumnType::Integer, &en).is_err());
        let json = serde_json::to_string(&Value::Decimal(d("-1234.50"))).unwrap();
        assert_eq!(json, "\"-1234.50\"");
    }

    #[test]
    fn excel_serials_and_text_dates() {
        let date = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        let en = Locale::default();
        assert_eq!(
            coerce(&Cell::Serial(45657.0), ColumnType::Date, &en).unwrap(),
            Value::Date(date(2024, 12, 31))
        );
        assert_eq!(
            coerce(&Cell::Serial(1.0), ColumnType::Date, &en).unwrap(),
            Value::Date(date(1900, 1, 1))
        );
        assert_eq!(
            coerce(&Cell::Serial(61.0), ColumnType::Date, &en).unwrap(),
            Value::Date(date(1900, 3, 1))
        );
        assert!(coerce(&Cell::Serial(60.0), ColumnType::Date, &en).is_err());
        let noon = date(2024, 12, 31).and_hms_opt(12, 0, 0).unwrap();
        assert_eq!(
            coerce(&Cell::Serial(45657.5), ColumnType::Datetime, &en).unwrap(),
            Value::DateTime(noon)
        );
        assert_eq!(
            coerce(&Cell::Text("31.12.2025".into()), ColumnType::Date, &de()).unwrap(),
            Value::Date(date(2025, 12, 31))
        );
        assert_eq!(
            coerce(&Cell::Text("2025-12-31".into()), ColumnType::Date, &de()).unwrap(),
            Value::Date(date(2025, 12, 31))
        );
        assert!(coerce(&Cell::Text("31.02.2025".into()), ColumnType::Date, &de()).is_err());
        assert!(coerce(&Cell::Text("tomorrow".into()), ColumnType::Date, &de()).is_err());
        assert_eq!(
            coerce(
                &Cell::Iso("2025-01-02T03:04:05".into()),
                ColumnType::Datetime,
                &en
            )
            .unwrap(),
            Value::DateTime(date(2025, 1, 2).and_hms_opt(3, 4, 5).unwrap())
        );
    }

    #[test]
    fn blanks_errors_and_booleans() {
        let en = Locale::default();
        assert_eq!(
            coerce(&Cell::Empty, ColumnType::Decimal, &en).unwrap(),
            Value::Null
        );
        assert_eq!(
            coerce(&Cell::Text("   ".into()), ColumnType::Date, &en).unwrap(),
            Value::Null
        );
        let e = coerce(&Cell::Error("#N/A".into()), ColumnType::Decimal, &en).unwrap_err();
        assert!(e.0.contains("#N/A"));
        assert_eq!(
            coerce(&Cell::Text("X".into()), ColumnType::Bool, &en).unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            coerce(&Cell::Int(0), ColumnType::Bool, &en).unwrap(),
            Value::Bool(false)
        );
        assert!(coerce(&Cell::Text("maybe".into()), ColumnType::Bool, &en).is_err());
        let e = coerce(&Cell::Bool(true), ColumnType::Decimal, &en).unwrap_err();
        assert!(e.0.contains("boolean"), "{}", e.0);
    }

    #[test]
    fn headers_match_case_and_whitespace_insensitively() {
        assert_eq!(normalize_header("  Posting \n Date "), "posting date");
        assert_eq!(normalize_header("AMOUNT"), normalize_header("amount"));
    }
}
