//! The package's small parts, read with quick-xml as calamine reads them: relationships,
//! the workbook, shared strings (Excel escapes undone), number formats (date detection).

use std::borrow::Cow;
use std::io::{BufReader, Cursor};

use quick_xml::events::{BytesStart, Event};

use super::*;

/// A part of the package, or `None` when it is absent. A part present only under another
/// spelling (calamine matches names case-insensitively) makes the caller fall back.
pub(super) fn part<'a, 'z>(
    zip: &'a mut zip::ZipArchive<Cursor<&'z [u8]>>,
    path: &str,
) -> Result<Option<XmlReader<'a, 'z>>, WorkbookError> {
    match zip.by_name(path) {
        Ok(f) => {
            let mut r = quick_xml::Reader::from_reader(BufReader::new(f));
            let config = r.config_mut();
            config.check_end_names = false;
            config.trim_text(false);
            config.check_comments = false;
            config.expand_empty_elements = true;
            Ok(Some(r))
        }
        Err(zip::result::ZipError::FileNotFound) => Ok(None),
        Err(e) => Err(corrupt(e)),
    }
}

/// Calls `f` for every element named `local` (start or empty) of the part at `path`; false
/// when the package has no such part.
pub(super) fn each_element(
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>,
    path: &str,
    local: &str,
    mut f: impl FnMut(&BytesStart) -> Result<(), WorkbookError>,
) -> Result<bool, WorkbookError> {
    let Some(mut xml) = part(zip, path)? else {
        return Ok(false);
    };
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match xml.read_event_into(&mut buf).map_err(corrupt)? {
            Event::Start(e) if e.local_name().as_ref() == local => f(&e)?,
            Event::Eof => return Ok(true),
            _ => {}
        }
    }
}

/// An attribute's raw (not unescaped) value.
pub(super) fn raw_attr_str(e: &BytesStart, key: &str) -> Result<Option<String>, WorkbookError> {
    for a in e.attributes().with_checks(false) {
        let a = a.map_err(corrupt)?;
        if a.key.as_ref() == key {
            return Ok(Some(a.value.into_owned()));
        }
    }
    Ok(None)
}

pub(super) fn decode_attr(v: &str) -> Result<String, WorkbookError> {
    Ok(quick_xml::escape::unescape(v)
        .map_err(corrupt)?
        .into_owned())
}

/// Excel escapes a character as `_xHHHH_` (a UTF-16 unit; `_x005F_` escapes the underscore).
pub(super) fn unescape_excel(s: &str) -> Cow<'_, str> {
    pub(super) fn unit_at(s: &str, i: usize) -> Option<u16> {
        let b = s.as_bytes().get(i..i + 7)?;
        if b[0] != b'_' || b[1] != b'x' || b[6] != b'_' {
            return None;
        }
        let hex = std::str::from_utf8(&b[2..6]).ok()?;
        if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        u16::from_str_radix(hex, 16).ok()
    }
    pub(super) fn find(s: &str, mut from: usize) -> Option<(usize, u16)> {
        while let Some(off) = s[from..].find('_') {
            let i = from + off;
            if let Some(u) = unit_at(s, i) {
                return Some((i, u));
            }
            from = i + 1;
        }
        None
    }
    let Some((mut i, mut unit)) = find(s, 0) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    loop {
        out.push_str(&s[copied..i]);
        i += 7;
        match unit {
            0xD800..=0xDBFF => match unit_at(s, i) {
                Some(low @ 0xDC00..=0xDFFF) => {
                    let cp =
                        0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                    out.push(char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER));
                    i += 7;
                }
                _ => out.push(char::REPLACEMENT_CHARACTER),
            },
            0xDC00..=0xDFFF => out.push(char::REPLACEMENT_CHARACTER),
            _ => out.push(char::from_u32(u32::from(unit)).unwrap_or(char::REPLACEMENT_CHARACTER)),
        }
        copied = i;
        match find(s, i) {
            Some(next) => (i, unit) = next,
            None => break,
        }
    }
    out.push_str(&s[copied..]);
    Cow::Owned(out)
}

/// An entity reference's text (`amp`, `#x41`, …).
pub(super) fn push_entity(name: &[u8], out: &mut String) -> Result<(), WorkbookError> {
    let name = std::str::from_utf8(name).map_err(corrupt)?;
    let text = match name {
        "lt" => "<",
        "gt" => ">",
        "amp" => "&",
        "apos" => "'",
        "quot" => "\"",
        _ => {
            let code = if let Some(hex) = name.strip_prefix("#x") {
                u32::from_str_radix(hex, 16).ok()
            } else if let Some(dec) = name.strip_prefix('#') {
                dec.parse().ok()
            } else {
                None
            };
            match code.and_then(char::from_u32) {
                Some(c) if c != '\0' => {
                    out.push(c);
                    return Ok(());
                }
                _ => return Err(corrupt(format!("unrecognized entity &{name};"))),
            }
        }
    };
    out.push_str(text);
    Ok(())
}

/// XML 1.0 end-of-line handling: CRLF and lone CR become LF.
pub(super) fn push_xml10(bytes: &[u8], out: &mut String) -> Result<(), WorkbookError> {
    let s = std::str::from_utf8(bytes).map_err(corrupt)?;
    if !s.contains('\r') {
        out.push_str(s);
        return Ok(());
    }
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' {
            if chars.peek() == Some(&'\n') {
                chars.next();
            }
            out.push('\n');
        } else {
            out.push(c);
        }
    }
    Ok(())
}

/// The `<t>` text of a shared string or inline string, as calamine assembles it: rich-text
/// runs concatenated, phonetic runs (`rPh`) skipped, ASCII whitespace trimmed unless
/// `xml:space="preserve"`, Excel escapes undone.
pub(super) fn finish_t(value: &str, preserve: bool) -> String {
    if preserve {
        unescape_excel(value).into_owned()
    } else {
        unescape_excel(value.trim_matches([' ', '\t', '\r', '\n'])).into_owned()
    }
}

pub(super) fn read_si(xml: &mut XmlReader<'_, '_>, closing: &str) -> Result<String, WorkbookError> {
    let mut buf = Vec::new();
    let mut rich: Option<String> = None;
    let mut phonetic = false;
    loop {
        buf.clear();
        match xml.read_event_into(&mut buf).map_err(corrupt)? {
            Event::Start(e) if e.local_name().as_ref() == "r" && rich.is_none() => {
                rich = Some(String::new());
            }
            Event::Start(e) if e.local_name().as_ref() == "rPh" => phonetic = true,
            Event::End(e) if e.name().as_ref() == closing => return Ok(rich.unwrap_or_default()),
            Event::End(e) if e.local_name().as_ref() == "rPh" => phonetic = false,
            Event::Start(e) if e.local_name().as_ref() == "t" && !phonetic => {
                let preserve = raw_attr_str(&e, "xml:space")?.is_some_and(|v| v == "preserve");
                let name = e.name().as_ref().to_string();
                let mut value = String::new();
                let mut tbuf = Vec::new();
                loop {
                    tbuf.clear();
                    match xml.read_event_into(&mut tbuf).map_err(corrupt)? {
                        Event::Text(t) => value.push_str(&t.xml10_content()),
                        Event::CData(t) => value.push_str(&t.xml10_content()),
                        Event::GeneralRef(r) => push_entity(r.as_bytes(), &mut value)?,
                        Event::End(end) if end.name().as_ref() == name => break,
                        Event::Eof => return Err(corrupt("unexpected end of a shared string")),
                        _ => {}
                    }
                }
                let value = finish_t(&value, preserve);
                match &mut rich {
                    Some(s) => s.push_str(&value),
                    None => rich = Some(value),
                }
            }
            Event::Eof => return Err(corrupt("unexpected end of the shared strings")),
            _ => {}
        }
    }
}

pub(super) fn builtin_format(id: &str) -> Format {
    match id {
        "14" | "15" | "16" | "17" | "18" | "19" | "20" | "21" | "22" | "45" | "47" | "27"
        | "28" | "29" | "30" | "31" | "32" | "33" | "34" | "35" | "36" | "50" | "51" | "52"
        | "53" | "54" | "55" | "56" | "57" | "58" => Format::DateTime,
        "46" => Format::TimeDelta,
        _ => Format::Other,
    }
}

/// Whether a custom number format shows a date/time or a duration (calamine's rules: the
/// first section only; quoted, escaped and bracketed text ignored; `[h]`-style elapsed time
/// is a duration).
pub(super) fn custom_format(format: &str) -> Format {
    let mut escaped = false;
    let mut quoted = false;
    let mut brackets = 0u8;
    let mut prev = ' ';
    let mut hms = false;
    let mut ap = false;
    for c in format.chars() {
        match (c, escaped, quoted, ap, brackets) {
            (_, true, ..) => escaped = false,
            ('_' | '\\' | '*', ..) => escaped = true,
            ('"', _, true, _, _) => quoted = false,
            (_, _, true, _, _) => {}
            ('"', ..) => quoted = true,
            (';', ..) => return Format::Other,
            ('[', ..) => brackets += 1,
            (']', .., 1) if hms => return Format::TimeDelta,
            (']', ..) => brackets = brackets.saturating_sub(1),
            ('a' | 'A', _, _, false, 0) => ap = true,
            ('p' | 'm' | '/' | 'P' | 'M', _, _, true, 0) => return Format::DateTime,
            ('d' | 'm' | 'h' | 'y' | 's' | 'D' | 'M' | 'H' | 'Y' | 'S', _, _, false, 0) => {
                return Format::DateTime;
            }
            _ => {
                if !(hms && c.eq_ignore_ascii_case(&prev)) {
                    hms = prev == '[' && matches!(c, 'm' | 'h' | 's' | 'M' | 'H' | 'S');
                }
            }
        }
        prev = c;
    }
    Format::Other
}
