//! Delimited text (CSV, TSV, `;`- and `|`-separated, SAP's "unconverted" export) as one
//! sheet: decoded once into UTF-8, the delimiter configured or sniffed, quoted fields with
//! embedded delimiters and newlines, an Excel `sep=;` first line honoured. Rows are records
//! (a quoted newline does not start a row), numbered from 0 like a sheet's.

use std::borrow::Cow;

use super::WorkbookError;
use super::detect::{TextEncoding, decode};
use crate::etl::coerce::Cell;

/// Delimiters tried when none is configured, in order of preference on a tie.
pub const CANDIDATES: [u8; 4] = [b',', b';', b'\t', b'|'];

pub struct Delimited {
    text: String,
    /// Where the records start (after a `sep=` line).
    start: usize,
    pub delimiter: u8,
    pub encoding: TextEncoding,
}

impl Delimited {
    pub fn open(
        bytes: Vec<u8>,
        encoding: TextEncoding,
        delimiter: Option<char>,
    ) -> Result<Self, WorkbookError> {
        // Valid UTF-8 (nearly every file) is kept as it is, without a copy.
        let (decoded, bom) = match decode(&bytes, encoding) {
            Cow::Owned(s) => (Some(s), 0),
            Cow::Borrowed(s) => (None, bytes.len() - s.len()),
        };
        let text = match decoded {
            Some(s) => s,
            None => {
                let mut bytes = bytes;
                bytes.drain(..bom);
                String::from_utf8(bytes).map_err(|e| WorkbookError::Corrupt(e.to_string()))?
            }
        };
        let (start, declared) = sep_line(&text);
        let delimiter = match (delimiter, declared) {
            (Some(d), _) => u8::try_from(d)
                .map_err(|_| WorkbookError::Corrupt(format!("delimiter {d:?} is not ASCII")))?,
            (None, Some(d)) => d,
            (None, None) => sniff_delimiter(&text[start..]),
        };
        Ok(Delimited {
            text,
            start,
            delimiter,
            encoding,
        })
    }

    /// Calls `push(row, column, cell)` for every non-empty field; false from `push` stops.
    /// Fields borrow from the decoded text unless they hold an escaped quote (`""`): no
    /// allocation per cell, as the xlsx reader borrows shared strings.
    pub fn for_each_cell<'a>(
        &'a self,
        mut push: impl FnMut(u32, u32, Cell<'a>) -> bool,
    ) -> Result<(), WorkbookError> {
        let text = &self.text[self.start..];
        let b = text.as_bytes();
        let d = self.delimiter;
        // Rows are numbered by the line each record starts on, as an editor shows them (a
        // quoted field may span lines); a `sep=` line counts.
        let mut line = u32::from(self.start > 0);
        let mut fields: Vec<Cow<'a, str>> = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let row = line;
            fields.clear();
            loop {
                let field: Cow<'a, str>;
                if b[i..].first() == Some(&b'"') {
                    let start = i + 1;
                    let mut seg = start;
                    let mut owned: Option<String> = None;
                    let mut j = start;
                    // The closing quote's position; none: unterminated, the rest is the field.
                    let end = loop {
                        match memchr::memchr(b'"', &b[j..]) {
                            None => break b.len(),
                            Some(k) if b.get(j + k + 1) == Some(&b'"') => {
                                let q = j + k;
                                owned
                                    .get_or_insert_with(String::new)
                                    .push_str(&text[seg..=q]);
                                seg = q + 2;
                                j = q + 2;
                            }
                            Some(k) => break j + k,
                        }
                    };
                    i = (end + 1).min(b.len());
                    line += memchr::memchr_iter(b'\n', &b[start..end]).count() as u32;
                    field = match owned {
                        Some(mut o) => {
                            o.push_str(&text[seg..end.max(seg)]);
                            Cow::Owned(o)
                        }
                        None => Cow::Borrowed(&text[start..end]),
                    };
                    // Anything between the closing quote and the delimiter is dropped.
                    i = memchr::memchr2(d, b'\n', &b[i.min(b.len())..]).map_or(b.len(), |n| i + n);
                } else {
                    let end = memchr::memchr2(d, b'\n', &b[i..]).map_or(b.len(), |n| i + n);
                    let mut f = &text[i..end];
                    if end < b.len() && b[end] == b'\n' {
                        f = f.strip_suffix('\r').unwrap_or(f);
                    }
                    field = Cow::Borrowed(f);
                    i = end;
                }
                fields.push(field);
                match b.get(i) {
                    Some(&c) if c == d => i += 1,
                    Some(b'\n') => {
                        i += 1;
                        line += 1;
                        break;
                    }
                    _ => break,
                }
            }
            // Ruler lines of SAP's list output (`|-----|-----|`) hold no data.
            let ruler = fields.iter().all(|f| {
                f.bytes()
                    .all(|c| c == b'-' || c == b' ' || c == b'=' || c == b'\r')
            });
            if !ruler {
                for (col, f) in fields.drain(..).enumerate() {
                    if f.trim().is_empty() {
                        continue;
                    }
                    if !push(row, col as u32, Cell::Text(f)) {
                        return Ok(());
                    }
                }
            }
            if row + 1 >= super::MAX_ROWS {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Excel writes `sep=;` as the first line of a CSV to name its delimiter.
fn sep_line(text: &str) -> (usize, Option<u8>) {
    let first = text.lines().next().unwrap_or("");
    let t = first.trim();
    if let Some(d) = t.strip_prefix("sep=")
        && d.len() == 1
    {
        let end = text.find('\n').map_or(text.len(), |i| i + 1);
        return (end, Some(d.as_bytes()[0]));
    }
    (0, None)
}

/// The delimiter that splits the first lines most consistently: for each candidate, the
/// number of lines (of the first 50) showing its most common non-zero count. Quoted text is
/// ignored, so `"1,5"` does not count a comma.
pub fn sniff_delimiter(text: &str) -> u8 {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(50)
        .collect();
    let mut best = (0usize, 0usize, b',');
    for &d in &CANDIDATES {
        let counts: Vec<usize> = lines.iter().map(|l| count_outside_quotes(l, d)).collect();
        let mut freq: std::collections::BTreeMap<usize, usize> = Default::default();
        for &c in counts.iter().filter(|c| **c > 0) {
            *freq.entry(c).or_default() += 1;
        }
        let Some((&mode, &lines_with_mode)) = freq.iter().max_by_key(|(c, n)| (**n, **c)) else {
            continue;
        };
        if (lines_with_mode, mode) > (best.0, best.1) {
            best = (lines_with_mode, mode, d);
        }
    }
    best.2
}

fn count_outside_quotes(line: &str, d: u8) -> usize {
    let mut quoted = false;
    let mut n = 0;
    for b in line.bytes() {
        if b == b'"' {
            quoted = !quoted;
        } else if b == d && !quoted {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(d: &Delimited) -> Vec<Vec<(u32, String)>> {
        let mut out: Vec<Vec<(u32, String)>> = Vec::new();
        d.for_each_cell(|r, c, cell| {
            let r = r as usize;
            if out.len() <= r {
                out.resize(r + 1, Vec::new());
            }
            let Cell::Text(t) = cell else { unreachable!() };
            out[r].push((c, t.into_owned()));
            true
        })
        .unwrap();
        out
    }

    #[test]
    fn the_delimiter_is_sniffed_past_title_lines_and_decimal_commas() {
        assert_eq!(sniff_delimiter("Title\nA;B;C\n1,5;2,5;x\n3;4;y\n"), b';');
        assert_eq!(sniff_delimiter("A\tB\n\"1\t2\"\t3\n"), b'\t');
        assert_eq!(sniff_delimiter("A|B|C\n1|2|3\n"), b'|');
        assert_eq!(sniff_delimiter("A,B\n1,2\n"), b',');
        assert_eq!(sniff_delimiter("one column\nonly\n"), b',');
    }

    #[test]
    fn quoted_fields_keep_delimiters_and_newlines() {
        let d = Delimited::open(
            b"sep=;\nDoc;Text\n1;\"rent; March\nsecond line\"\n2;\"say \"\"hi\"\"\"\n".to_vec(),
            TextEncoding::Utf8,
            None,
        )
        .unwrap();
        assert_eq!(d.delimiter, b';');
        let r = rows(&d);
        assert_eq!(r[2][1].1, "rent; March\nsecond line", "{r:?}");
        assert_eq!(r[4], vec![(0, "2".into()), (1, "say \"hi\"".into())]);
    }

    /// The splitter gives the csv crate's fields (on data without rulers or blank fields'
    /// positions that differ by design): the crate is the oracle.
    #[test]
    fn fields_are_what_the_csv_crate_reads() {
        let inputs = [
            "a;b;c\r\n1;\"x;y\";3\r\n",
            "h1,h2\n\"multi\nline\",\"say \"\"hi\"\"\"\n,trailing,\n\nafter blank,x\n",
            "K\u{e4}se|Stra\u{df}e|\u{20ac} 5\n\"quoted\"|plain|\"\"\n",
            "no newline at end,1",
        ];
        for (n, input) in inputs.iter().enumerate() {
            let d = Delimited::open(input.as_bytes().to_vec(), TextEncoding::Utf8, None).unwrap();
            let mine: Vec<(u32, String)> = rows(&d)
                .into_iter()
                .flatten()
                .filter(|(_, f)| !f.trim().is_empty())
                .collect();
            let mut theirs = Vec::new();
            let mut r = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .delimiter(d.delimiter)
                .from_reader(input.as_bytes());
            for rec in r.records() {
                for (c, f) in rec.unwrap().iter().enumerate() {
                    if !f.trim().is_empty() {
                        theirs.push((c as u32, f.to_string()));
                    }
                }
            }
            assert_eq!(mine, theirs, "input {n}: {input:?}");
        }
    }

    #[test]
    fn sap_list_rulers_are_not_rows() {
        let d = Delimited::open(
            b"|----------|\n| Doc | Amount |\n|----------|\n| 1 | 5,00 |\n".to_vec(),
            TextEncoding::Utf8,
            None,
        )
        .unwrap();
        let r = rows(&d);
        assert!(r[0].is_empty() && r[2].is_empty());
        assert_eq!(r[1][0], (1, " Doc ".into()));
    }
}
