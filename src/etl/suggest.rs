//! `etlq connectors suggest FILE`: a connector TOML for the header a file shows, with types
//! guessed from the first rows below it. The key is left to the user (which columns identify
//! a row is a business decision); the output says so.

use std::collections::BTreeSet;

use super::coerce::{Cell, as_text};
use super::connector::SheetRef;
use super::workbook::{TextOptions, WorkbookError, open_sheet};

/// Rows searched for the header, and rows below it sampled for types.
const HEADER_ROWS: usize = 20;
const SAMPLE_ROWS: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guess {
    Integer,
    Decimal,
    Date,
    Datetime,
    Bool,
    String,
}

impl Guess {
    fn name(self) -> &'static str {
        match self {
            Guess::Integer => "integer",
            Guess::Decimal => "decimal",
            Guess::Date => "date",
            Guess::Datetime => "datetime",
            Guess::Bool => "bool",
            Guess::String => "string",
        }
    }
}

/// What one text cell looks like.
#[derive(Default)]
struct TextShape {
    comma_decimal: bool,
    date_format: Option<&'static str>,
}

fn classify(cell: &Cell<'_>, shape: &mut TextShape, places: &mut u32) -> Guess {
    match cell {
        Cell::Int(_) => Guess::Integer,
        Cell::Float(f) if f.fract() == 0.0 => Guess::Integer,
        Cell::Float(_) | Cell::Number(_) => {
            let t = as_text(cell);
            *places = (*places).max(t.split('.').nth(1).map_or(0, |f| f.len() as u32));
            Guess::Decimal
        }
        Cell::Serial(f) if f.fract() == 0.0 => Guess::Date,
        Cell::Serial(_) => Guess::Datetime,
        Cell::Iso(s) if s.len() <= 10 => Guess::Date,
        Cell::Iso(_) => Guess::Datetime,
        Cell::Bool(_) => Guess::Bool,
        Cell::Text(t) => text_guess(t.trim(), shape, places),
        Cell::Empty | Cell::Error(_) => Guess::String,
    }
}

fn text_guess(t: &str, shape: &mut TextShape, places: &mut u32) -> Guess {
    let b = t.as_bytes();
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    if b.len() == 10
        && digits(&b[0..2])
        && b[2] == b'.'
        && digits(&b[3..5])
        && b[5] == b'.'
        && digits(&b[6..])
    {
        shape.date_format = Some("%d.%m.%Y");
        return Guess::Date;
    }
    if b.len() == 10
        && digits(&b[0..2])
        && b[2] == b'/'
        && digits(&b[3..5])
        && b[5] == b'/'
        && digits(&b[6..])
    {
        shape.date_format = Some("%m/%d/%Y");
        return Guess::Date;
    }
    if b.len() == 10
        && digits(&b[0..4])
        && b[4] == b'-'
        && digits(&b[5..7])
        && b[7] == b'-'
        && digits(&b[8..])
    {
        return Guess::Date;
    }
    if b.len() >= 19 && digits(&b[0..4]) && b[4] == b'-' && (b[10] == b' ' || b[10] == b'T') {
        return Guess::Datetime;
    }
    // Account and document numbers with leading zeros are identifiers, not numbers.
    if digits(b.strip_prefix(b"-").unwrap_or(b)) {
        return if b.len() > 1 && b[0] == b'0' {
            Guess::String
        } else {
            Guess::Integer
        };
    }
    let core = t
        .trim_start_matches(['-', '('])
        .trim_end_matches(['-', ')']);
    if !core.is_empty()
        && core
            .bytes()
            .all(|c| c.is_ascii_digit() || c == b'.' || c == b',' || c == b' ')
        && core.bytes().any(|c| c.is_ascii_digit())
    {
        // The last separator followed by one to three digits other than a group of three.
        let last = core.rfind(['.', ',']);
        if let Some(i) = last {
            let tail = &core[i + 1..];
            let sep = core.as_bytes()[i];
            let grouped_thousands =
                tail.len() == 3 && core[..i].contains(if sep == b'.' { '.' } else { ',' });
            if !grouped_thousands {
                if sep == b',' {
                    shape.comma_decimal = true;
                }
                *places = (*places).max(tail.len() as u32);
            }
        }
        return Guess::Decimal;
    }
    if ["true", "false", "yes", "no", "ja", "nein"].contains(&t.to_ascii_lowercase().as_str()) {
        return Guess::Bool;
    }
    Guess::String
}

/// Combines the guesses of a column's cells: integers widen to decimals, anything mixed is text.
fn combine(a: Option<Guess>, b: Guess) -> Guess {
    match (a, b) {
        (None, g) => g,
        (Some(x), y) if x == y => x,
        (Some(Guess::Integer), Guess::Decimal) | (Some(Guess::Decimal), Guess::Integer) => {
            Guess::Decimal
        }
        (Some(Guess::Date), Guess::Datetime) | (Some(Guess::Datetime), Guess::Date) => {
            Guess::Datetime
        }
        _ => Guess::String,
    }
}

fn snake(header: &str) -> String {
    let mut out = String::new();
    for c in header.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    let out = out.trim_end_matches('_').to_string();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        format!("column_{out}")
    } else {
        out
    }
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The connector TOML for `bytes`, to be named `name`.
pub fn suggest(
    bytes: Vec<u8>,
    name: &str,
    sheet: &SheetRef,
    max_inflated_bytes: u64,
    file_label: &str,
) -> Result<String, WorkbookError> {
    let mut reader = open_sheet(bytes, sheet, max_inflated_bytes, &TextOptions::default())?;
    let info = reader.format_info();
    let sheet_name = reader.name.clone();
    let rows = reader.dense_rows(HEADER_ROWS + SAMPLE_ROWS)?;
    // The header: the row with the most text cells (the earliest of equals).
    let texts = |r: &Vec<Cell<'_>>| {
        r.iter()
            .filter(|c| matches!(c, Cell::Text(t) if !t.trim().is_empty()))
            .count()
    };
    let header_row = (0..rows.len().min(HEADER_ROWS))
        .max_by_key(|&i| (texts(&rows[i]), std::cmp::Reverse(i)))
        .filter(|&i| texts(&rows[i]) > 0)
        .ok_or_else(|| {
            WorkbookError::Corrupt("no header row found (no text in the first rows)".into())
        })?;
    let header = &rows[header_row];
    let body = &rows[header_row + 1..];
    let mut shape = TextShape::default();
    let mut lines = Vec::new();
    let mut names = BTreeSet::new();
    for (col, cell) in header.iter().enumerate() {
        let h = as_text(cell);
        if h.is_empty() {
            continue;
        }
        let mut guess = None;
        let mut places = 0;
        let mut filled = 0;
        for r in body {
            let c = r.get(col).unwrap_or(&Cell::Empty);
            if c.is_blank() {
                continue;
            }
            filled += 1;
            guess = Some(combine(guess, classify(c, &mut shape, &mut places)));
        }
        let ty = guess.unwrap_or(Guess::String);
        let mut field = snake(&h);
        while !names.insert(field.clone()) {
            field.push('_');
        }
        let mut line = format!(
            "  {{ name = {}, header = {}, type = \"{}\"",
            quoted(&field),
            quoted(&h),
            ty.name()
        );
        if ty == Guess::Decimal && places > 0 {
            line.push_str(&format!(", scale = {places}"));
        }
        if filled == body.len() && filled > 0 {
            line.push_str(", required = true");
        }
        line.push_str(" },");
        lines.push(line);
    }
    let mut out = format!(
        "# Suggested by `etlq connectors suggest` from {file_label} ({}{}, header row {}).\n\
         # Choose the key: add `key = true` to the column(s) that identify a row; the config\n\
         # refuses a connector without one. Types were guessed from the first {} rows.\n\
         [connectors.{}]\n",
        info.format,
        info.encoding
            .as_ref()
            .map(|e| format!(", {e}"))
            .unwrap_or_default(),
        header_row + 1,
        body.len(),
        name
    );
    match info.format.as_str() {
        "csv" | "html" => {
            out.push_str(&format!("format = \"{}\"\n", info.format));
            if let Some(d) = &info.delimiter {
                out.push_str(&format!("delimiter = \"{d}\"\n"));
            }
        }
        _ => out.push_str(&format!("sheet = {}\n", quoted(&sheet_name))),
    }
    out.push_str(&format!("header = {}\n", header_row + 1));
    let mut locale = Vec::new();
    if shape.comma_decimal {
        locale.push("decimal_separator = \",\", thousands_separator = \".\"".to_string());
    }
    if let Some(f) = shape.date_format {
        locale.push(format!("date_formats = [\"{f}\"]"));
    }
    if !locale.is_empty() {
        out.push_str(&format!("locale = {{ {} }}\n", locale.join(", ")));
    }
    out.push_str("columns = [\n");
    out.push_str(&lines.join("\n"));
    out.push_str("\n]\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etl::connector::{Connector, ConnectorSpec};

    #[test]
    fn a_semicolon_csv_gets_a_connector_that_reads_it_once_a_key_is_chosen() {
        let csv = "G/L line items\n\nDocument Number;Posting Date;Amount in LC;Text;Account\n\
                   100001;31.12.2025;1.234,56-;rent;00471100\n100002;30.12.2025;99,5;;00471100\n";
        let toml_text = suggest(
            csv.as_bytes().to_vec(),
            "gl_csv",
            &SheetRef::Index(0),
            1 << 20,
            "gl.csv",
        )
        .unwrap();
        assert!(toml_text.contains("delimiter = \";\""), "{toml_text}");
        assert!(toml_text.contains("header = 3"), "{toml_text}");
        let doc: toml::Table = toml::from_str(&toml_text).unwrap();
        let mut spec: toml::Table = doc["connectors"]["gl_csv"].as_table().unwrap().clone();
        let cols = spec["columns"].as_array_mut().unwrap();
        let types: Vec<&str> = cols.iter().map(|c| c["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["integer", "date", "decimal", "string", "string"]);
        assert_eq!(cols[2]["scale"].as_integer(), Some(2));
        assert_eq!(cols[3].get("required"), None, "a blank cell: not required");
        cols[0]
            .as_table_mut()
            .unwrap()
            .insert("key".into(), true.into());
        let spec: ConnectorSpec = toml::Value::Table(spec).try_into().unwrap();
        Connector::new("gl_csv", spec).unwrap();
    }
}
