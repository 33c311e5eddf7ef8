//! What a file is, by its content and never by its name: ERP GUIs save HTML tables and
//! tab-separated text under `.xls`, and a workbook may arrive named `.csv`. Files that are
//! none of the readable formats are named ("a PDF document") rather than called corrupt.

use std::borrow::Cow;

use super::WorkbookError;

pub use crate::configuration::connector::{SourceFormat, TextEncoding};

impl TextEncoding {
    pub fn label(self) -> &'static str {
        match self {
            TextEncoding::Auto => "auto",
            TextEncoding::Utf8 => "utf-8",
            TextEncoding::Utf16Le => "utf-16le",
            TextEncoding::Utf16Be => "utf-16be",
            TextEncoding::Windows1252 => "windows-1252",
        }
    }
}

/// What a file was found to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// A zip package or a CFB (OLE) container: a workbook reader decides which.
    Workbook,
    Delimited(TextEncoding),
    Html(TextEncoding),
}

impl Detected {
    pub fn format(&self) -> &'static str {
        match self {
            Detected::Workbook => "workbook",
            Detected::Delimited(_) => "csv",
            Detected::Html(_) => "html",
        }
    }
    pub fn encoding(&self) -> Option<TextEncoding> {
        match self {
            Detected::Workbook => None,
            Detected::Delimited(e) | Detected::Html(e) => Some(*e),
        }
    }
}

pub(super) const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
pub(super) const CFB_MAGIC: &[u8] = &[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];

/// Binary formats people upload by mistake, by their first bytes.
const KNOWN: &[(&[u8], &str)] = &[
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xFF\xD8\xFF", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1F\x8B", "a gzip archive"),
    (b"7z\xBC\xAF\x27\x1C", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7FELF", "an executable program"),
    (b"MZ", "a Windows executable"),
    (b"{\\rtf", "an RTF document"),
    (b"PK\x05\x06", "an empty zip archive"),
];

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
const UTF16LE_BOM: &[u8] = b"\xFF\xFE";
const UTF16BE_BOM: &[u8] = b"\xFE\xFF";

/// What `bytes` (the whole file, or its first bytes for a cheap check) is. `format` narrows
/// the choice: `Csv` reads any text as delimited, `Workbook` accepts only workbooks.
pub fn detect(
    bytes: &[u8],
    format: SourceFormat,
    encoding: TextEncoding,
) -> Result<Detected, WorkbookError> {
    if bytes.is_empty() {
        return Err(WorkbookError::Empty);
    }
    if bytes.starts_with(ZIP_MAGIC) || bytes.starts_with(CFB_MAGIC) {
        return match format {
            SourceFormat::Csv | SourceFormat::Html => Err(unsupported(
                "a workbook, but the connector reads text (format)",
            )),
            _ => Ok(Detected::Workbook),
        };
    }
    if let Some((_, what)) = KNOWN.iter().find(|(magic, _)| bytes.starts_with(magic)) {
        return Err(unsupported(what));
    }
    let encoding = match encoding {
        TextEncoding::Auto => sniff_encoding(bytes)?,
        e => e,
    };
    if format == SourceFormat::Workbook {
        return Err(unsupported(
            "text, but the connector reads only workbooks (format = \"workbook\")",
        ));
    }
    if format == SourceFormat::Csv {
        return Ok(Detected::Delimited(encoding));
    }
    let head = decode(&bytes[..bytes.len().min(64 * 1024)], encoding);
    let start = head.trim_start_matches(['\u{FEFF}', ' ', '\t', '\r', '\n']);
    let lower: String = start.chars().take(4096).collect::<String>().to_lowercase();
    if lower.starts_with('<') || format == SourceFormat::Html {
        if has_table(bytes, encoding) {
            return Ok(Detected::Html(encoding));
        }
        if lower.starts_with("<?xml") {
            return Err(unsupported(
                if lower.contains("urn:schemas-microsoft-com:office:spreadsheet") {
                    "an Excel 2003 XML spreadsheet; open it in Excel and save it as .xlsx"
                } else {
                    "an XML document"
                },
            ));
        }
        if lower.contains("<html") || lower.starts_with("<!doctype") || lower.contains("<body") {
            return Err(unsupported("an HTML page without a table"));
        }
        if format == SourceFormat::Html {
            return Err(unsupported("not an HTML table"));
        }
    }
    Ok(Detected::Delimited(encoding))
}

fn unsupported(what: &str) -> WorkbookError {
    WorkbookError::Unsupported(what.to_string())
}

/// Whether the document holds a `<table` tag anywhere (case-insensitive).
fn has_table(bytes: &[u8], encoding: TextEncoding) -> bool {
    match encoding {
        TextEncoding::Utf16Le | TextEncoding::Utf16Be => decode(bytes, encoding)
            .to_ascii_lowercase()
            .contains("<table"),
        _ => bytes
            .windows(6)
            .any(|w| w[0] == b'<' && w[1..].eq_ignore_ascii_case(b"table")),
    }
}

/// A byte-order mark, else UTF-8 when valid (a multi-byte character cut at the end of a head
/// is fine), else Windows-1252. NUL bytes without a BOM mean a binary file.
fn sniff_encoding(bytes: &[u8]) -> Result<TextEncoding, WorkbookError> {
    if bytes.starts_with(UTF8_BOM) {
        return Ok(TextEncoding::Utf8);
    }
    if bytes.starts_with(UTF16LE_BOM) {
        return Ok(TextEncoding::Utf16Le);
    }
    if bytes.starts_with(UTF16BE_BOM) {
        return Ok(TextEncoding::Utf16Be);
    }
    let head = &bytes[..bytes.len().min(64 * 1024)];
    if head.contains(&0) {
        return Err(unsupported("a binary file of unknown type"));
    }
    match std::str::from_utf8(bytes) {
        Ok(_) => Ok(TextEncoding::Utf8),
        Err(e) if e.error_len().is_none() && e.valid_up_to() + 4 > bytes.len() => {
            Ok(TextEncoding::Utf8)
        }
        Err(_) => Ok(TextEncoding::Windows1252),
    }
}

/// The text of `bytes` in `encoding`, without its byte-order mark. Invalid sequences become
/// U+FFFD rather than failing the file (the affected cells then fail their own typing).
pub fn decode(bytes: &[u8], encoding: TextEncoding) -> Cow<'_, str> {
    match encoding {
        TextEncoding::Auto | TextEncoding::Utf8 => {
            let b = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
            String::from_utf8_lossy(b)
        }
        TextEncoding::Utf16Le => {
            let b = bytes.strip_prefix(UTF16LE_BOM).unwrap_or(bytes);
            encoding_rs::UTF_16LE.decode_without_bom_handling(b).0
        }
        TextEncoding::Utf16Be => {
            let b = bytes.strip_prefix(UTF16BE_BOM).unwrap_or(bytes);
            encoding_rs::UTF_16BE.decode_without_bom_handling(b).0
        }
        TextEncoding::Windows1252 => {
            encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(bytes)
                .0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto(b: &[u8]) -> Result<Detected, WorkbookError> {
        detect(b, SourceFormat::Auto, TextEncoding::Auto)
    }

    #[test]
    fn files_are_told_apart_by_content() {
        assert_eq!(auto(b"PK\x03\x04rest").unwrap(), Detected::Workbook);
        assert_eq!(
            auto(b"a;b\n1;2\n").unwrap(),
            Detected::Delimited(TextEncoding::Utf8)
        );
        assert_eq!(
            auto(b"Konto;Betrag\n4711;1.234,56\xE4\n").unwrap(),
            Detected::Delimited(TextEncoding::Windows1252)
        );
        let utf16: Vec<u8> = UTF16LE_BOM
            .iter()
            .copied()
            .chain("a\tb\n".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert_eq!(
            auto(&utf16).unwrap(),
            Detected::Delimited(TextEncoding::Utf16Le)
        );
        assert_eq!(
            auto(b"<html><body><TABLE><tr><td>1</td></tr></TABLE></body></html>").unwrap(),
            Detected::Html(TextEncoding::Utf8)
        );
    }

    #[test]
    fn what_cannot_be_read_is_named() {
        let said = |b: &[u8]| auto(b).unwrap_err().to_string();
        assert!(said(b"%PDF-1.7\n...").contains("a PDF document"));
        assert!(
            said(b"<!DOCTYPE html><html><p>Login</p></html>")
                .contains("an HTML page without a table")
        );
        assert!(said(b"<?xml version=\"1.0\"?><Workbook xmlns=\"urn:schemas-microsoft-com:office:spreadsheet\">").contains("Excel 2003 XML"));
        assert!(said(b"\x00\x01\x02binary").contains("binary file"));
        assert_eq!(auto(b"").unwrap_err(), WorkbookError::Empty);
        assert!(
            detect(b"a,b\n", SourceFormat::Workbook, TextEncoding::Auto)
                .unwrap_err()
                .to_string()
                .contains("only workbooks")
        );
    }

    #[test]
    fn every_encoding_decodes_without_its_mark() {
        assert_eq!(
            decode(b"\xEF\xBB\xBFK\xC3\xA4se", TextEncoding::Utf8),
            "Käse"
        );
        assert_eq!(decode(b"K\xE4se \x80", TextEncoding::Windows1252), "Käse €");
        let le: Vec<u8> = UTF16LE_BOM
            .iter()
            .copied()
            .chain("Käse".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert_eq!(decode(&le, TextEncoding::Utf16Le), "Käse");
    }
}
