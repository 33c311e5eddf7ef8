//! Our own streaming reader for xlsx worksheets (ADR 0010): the sheet's XML is inflated on a
//! thread of its own and scanned on the caller's by a small byte scanner, not a general XML
//! tokenizer — the two were the extract's critical path. Cells mean exactly what calamine's
//! `XlsxCellReader` makes of them (same shared strings, number formats, date detection,
//! escapes); calamine stays the reader for workbooks whose layout this one does not open, and
//! `tests::same_cells_as_calamine` compares the two on every workbook the tests have.
//!
//! The workbook's small parts (relationships, workbook, shared strings, styles) are read with
//! quick-xml configured as calamine configures it, following calamine's rules.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{BufReader, Cursor, Read};
use std::ops::Range;
use std::sync::mpsc;

use quick_xml::events::{BytesStart, Event};

use super::{Cell, WorkbookError};

/// Inflated bytes handed from the inflating thread to the scanner at a time.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the two threads.
const CHUNKS_AHEAD: usize = 4;

fn corrupt(e: impl std::fmt::Display) -> WorkbookError {
    WorkbookError::Corrupt(e.to_string())
}

/// How a cell's number format makes calamine read its number.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Other,
    DateTime,
    TimeDelta,
}

/// An xlsx workbook opened for streaming: its sheets, shared strings and number formats.
pub struct FastXlsx {
    bytes: Vec<u8>,
    /// (name, part path) in workbook order.
    sheets: Vec<(String, String)>,
    strings: Vec<String>,
    /// Per cell style (`s`): the style's number format, as calamine classifies it.
    formats: Vec<Format>,
}

type XmlReader<'a, 'z> = quick_xml::Reader<BufReader<zip::read::ZipFile<'a, Cursor<&'z [u8]>>>>;

/// A part of the package, or `None` when it is absent. A part present only under another
/// spelling (calamine matches names case-insensitively) makes the caller fall back.
fn part<'a, 'z>(
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
fn each_element(
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
fn raw_attr_str(e: &BytesStart, key: &str) -> Result<Option<String>, WorkbookError> {
    for a in e.attributes().with_checks(false) {
        let a = a.map_err(corrupt)?;
        if a.key.as_ref() == key {
            return Ok(Some(a.value.into_owned()));
        }
    }
    Ok(None)
}

fn decode_attr(v: &str) -> Result<String, WorkbookError> {
    Ok(quick_xml::escape::unescape(v)
        .map_err(corrupt)?
        .into_owned())
}

/// Excel escapes a character as `_xHHHH_` (a UTF-16 unit; `_x005F_` escapes the underscore).
fn unescape_excel(s: &str) -> Cow<'_, str> {
    fn unit_at(s: &str, i: usize) -> Option<u16> {
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
    fn find(s: &str, mut from: usize) -> Option<(usize, u16)> {
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
fn push_entity(name: &[u8], out: &mut String) -> Result<(), WorkbookError> {
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
fn push_xml10(bytes: &[u8], out: &mut String) -> Result<(), WorkbookError> {
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
fn finish_t(value: &str, preserve: bool) -> String {
    if preserve {
        unescape_excel(value).into_owned()
    } else {
        unescape_excel(value.trim_matches([' ', '\t', '\r', '\n'])).into_owned()
    }
}

fn read_si(xml: &mut XmlReader<'_, '_>, closing: &str) -> Result<String, WorkbookError> {
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

fn builtin_format(id: &str) -> Format {
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
fn custom_format(format: &str) -> Format {
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

impl FastXlsx {
    /// Opens the package, or hands the bytes back when its layout is one this reader leaves to
    /// calamine (no officeDocument relationship, parts under other spellings, sheet parts that
    /// are missing).
    pub fn open(bytes: Vec<u8>) -> Result<Result<FastXlsx, Vec<u8>>, WorkbookError> {
        match Self::metadata(&bytes)? {
            Some((sheets, strings, formats)) => Ok(Ok(FastXlsx {
                bytes,
                sheets,
                strings,
                formats,
            })),
            None => Ok(Err(bytes)),
        }
    }

    #[allow(clippy::type_complexity)]
    fn metadata(
        bytes: &[u8],
    ) -> Result<Option<(Vec<(String, String)>, Vec<String>, Vec<Format>)>, WorkbookError> {
        let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(corrupt)?;
        let names: Vec<String> = zip
            .file_names()
            .filter_map(|n| n.ok().map(|n| n.into_owned()))
            .collect();
        // calamine finds parts case-insensitively and with backslashes: leave such packages
        // to it.
        let exact = |path: &str| names.iter().any(|n| n == path);
        let other_spelling = |path: &str| {
            !exact(path)
                && names
                    .iter()
                    .any(|n| n.replace('\\', "/").eq_ignore_ascii_case(path))
        };

        // The workbook part, from the package relationships.
        let mut target = None;
        each_element(&mut zip, "_rels/.rels", "Relationship", |e| {
            let typ = raw_attr_str(e, "Type")?.unwrap_or_default();
            if typ.ends_with("/relationships/officeDocument")
                && let Some(t) = raw_attr_str(e, "Target")?
            {
                target = Some(decode_attr(&t)?);
            }
            Ok(())
        })?;
        let Some(target) = target else {
            return Ok(None);
        };
        let (dir, name) = match target.rfind('/') {
            Some(i) => target.split_at(i + 1),
            None => ("", target.as_str()),
        };
        let xl = dir.strip_prefix('/').unwrap_or(dir).to_string();
        let workbook_name = if name.is_empty() {
            "workbook.xml"
        } else {
            name
        };
        let workbook_path = format!("{xl}{workbook_name}");
        let rels_path = format!("{xl}_rels/{workbook_name}.rels");
        let strings_path = format!("{xl}sharedStrings.xml");
        let styles_path = format!("{xl}styles.xml");
        if [&workbook_path, &rels_path, &strings_path, &styles_path]
            .iter()
            .any(|p| other_spelling(p))
            || !exact(&workbook_path)
            || !exact(&rels_path)
        {
            return Ok(None);
        }

        // Relationship id → target.
        let mut rels = HashMap::new();
        each_element(&mut zip, &rels_path, "Relationship", |e| {
            if let Some(id) = raw_attr_str(e, "Id")? {
                rels.insert(id, raw_attr_str(e, "Target")?.unwrap_or_default());
            }
            Ok(())
        })?;

        // Sheets in order; a sheet whose part is not where its relationship says goes to
        // calamine with the rest of the package.
        let mut sheets = Vec::new();
        let mut all_found = true;
        each_element(&mut zip, &workbook_path, "sheet", |e| {
            let mut name = String::new();
            let mut rel = None;
            for a in e.attributes().with_checks(false) {
                let a = a.map_err(corrupt)?;
                let key = a.key.as_ref();
                if key == "name" {
                    name = decode_attr(&a.value)?;
                } else if key == "id" || key.ends_with(":id") {
                    rel = Some(a.value.into_owned());
                }
            }
            let path = match rel.and_then(|r| rels.get(&r)) {
                Some(target) => match target.strip_prefix('/') {
                    Some(abs) => abs.to_string(),
                    None => format!("{xl}{target}"),
                },
                None => String::new(),
            };
            all_found &= exact(&path);
            sheets.push((name, path));
            Ok(())
        })?;
        if !all_found {
            return Ok(None);
        }

        // Shared strings.
        let mut strings = Vec::new();
        if let Some(mut xml) = part(&mut zip, &strings_path)? {
            let mut buf = Vec::new();
            let mut in_sst = false;
            loop {
                buf.clear();
                match xml.read_event_into(&mut buf).map_err(corrupt)? {
                    Event::Start(e) if !in_sst && e.local_name().as_ref() == "sst" => {
                        in_sst = true;
                    }
                    Event::Start(e) if in_sst && e.local_name().as_ref() == "si" => {
                        let name = e.name().as_ref().to_string();
                        strings.push(read_si(&mut xml, &name)?);
                    }
                    Event::End(e) if in_sst && e.local_name().as_ref() == "sst" => break,
                    Event::Eof => return Err(corrupt("unexpected end of the shared strings")),
                    _ => {}
                }
            }
        }

        // Number formats per cell style.
        let mut formats = Vec::new();
        if let Some(mut xml) = part(&mut zip, &styles_path)? {
            let mut custom: HashMap<String, String> = HashMap::new();
            let mut buf = Vec::new();
            let mut section = "";
            loop {
                buf.clear();
                match xml.read_event_into(&mut buf).map_err(corrupt)? {
                    Event::Start(e) => match e.local_name().as_ref() {
                        "numFmts" => section = "numFmts",
                        "cellXfs" => section = "cellXfs",
                        "numFmt" if section == "numFmts" => {
                            if let (Some(id), Some(code)) = (
                                raw_attr_str(&e, "numFmtId")?,
                                raw_attr_str(&e, "formatCode")?,
                            ) {
                                custom.insert(id, decode_attr(&code)?);
                            }
                        }
                        "xf" if section == "cellXfs" => {
                            formats.push(match raw_attr_str(&e, "numFmtId")? {
                                None => Format::Other,
                                Some(id) => match custom.get(&id) {
                                    Some(code) => custom_format(code),
                                    None => builtin_format(&id),
                                },
                            });
                        }
                        _ => {}
                    },
                    Event::End(e) if matches!(e.local_name().as_ref(), "numFmts" | "cellXfs") => {
                        section = "";
                    }
                    Event::Eof => break,
                    _ => {}
                }
            }
        }
        Ok(Some((sheets, strings, formats)))
    }

    pub fn sheet_names(&self) -> Vec<String> {
        self.sheets.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Calls `push(row, col, cell)` for each cell of sheet `name` in document order (empty
    /// ones too); stops when `push` returns false. Shared strings are borrowed.
    pub fn for_each_cell<'a>(
        &'a self,
        name: &str,
        mut push: impl FnMut(u32, u32, Cell<'a>) -> bool,
    ) -> Result<(), WorkbookError> {
        let path = self
            .sheets
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .ok_or_else(|| corrupt(format!("sheet {name:?} has no part")))?;
        let (tx, rx) = mpsc::sync_channel::<Result<Vec<u8>, String>>(CHUNKS_AHEAD);
        let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
        let bytes = self.bytes.as_slice();
        std::thread::scope(|scope| {
            scope.spawn(move || inflate(bytes, &path, tx, back_rx));
            let mut scan = Scanner {
                src: Source {
                    rx,
                    back: back_tx,
                    buf: Vec::with_capacity(CHUNK * 2),
                    pos: 0,
                    done: false,
                },
                pending_end: false,
                end_name: Vec::new(),
            };
            let cells = CellReader {
                strings: &self.strings,
                formats: &self.formats,
                value: String::new(),
                name: Vec::new(),
            };
            let result = cells.run(&mut scan, &mut push);
            // Unblocks the inflating thread if it is waiting to send.
            drop(scan);
            result
        })
    }
}

/// The inflating thread: sends the part's bytes in chunks, then closes the channel.
fn inflate(
    bytes: &[u8],
    path: &str,
    tx: mpsc::SyncSender<Result<Vec<u8>, String>>,
    back: mpsc::Receiver<Vec<u8>>,
) {
    let mut zip = match zip::ZipArchive::new(Cursor::new(bytes)) {
        Ok(z) => z,
        Err(e) => {
            let _ = tx.send(Err(e.to_string()));
            return;
        }
    };
    let mut file = match zip.by_name(path) {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.send(Err(e.to_string()));
            return;
        }
    };
    loop {
        let mut buf = back
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        buf.clear();
        match (&mut file).take(CHUNK as u64).read_to_end(&mut buf) {
            Ok(0) => return,
            Ok(_) => {
                if tx.send(Ok(buf)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        }
    }
}

/// The inflated XML, one contiguous window over the chunks received so far.
struct Source {
    rx: mpsc::Receiver<Result<Vec<u8>, String>>,
    back: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Source {
    /// Appends the next chunk (dropping what was consumed); false at the end of the part.
    fn more(&mut self) -> Result<bool, WorkbookError> {
        if self.done {
            return Ok(false);
        }
        match self.rx.recv() {
            Ok(Ok(chunk)) => {
                self.buf.drain(..self.pos);
                self.pos = 0;
                self.buf.extend_from_slice(&chunk);
                let _ = self.back.send(chunk);
                Ok(true)
            }
            Ok(Err(e)) => Err(corrupt(e)),
            Err(_) => {
                self.done = true;
                Ok(false)
            }
        }
    }
}

/// What the scanner found; ranges index `Source::buf` until the next call.
enum Ev {
    Start {
        name: Range<usize>,
        attrs: Range<usize>,
    },
    End {
        name: Range<usize>,
    },
    /// An element's end synthesised for `<x/>` (its name is in `Scanner::end_name`).
    EmptyEnd,
    Text(Range<usize>),
    CData(Range<usize>),
    Ref(Range<usize>),
    Eof,
}

struct Scanner {
    src: Source,
    /// A `<x/>` was returned as a start: its end comes next.
    pending_end: bool,
    end_name: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    match needle {
        [b] => memchr::memchr(*b, hay),
        _ => memchr::memmem::find(hay, needle),
    }
}

/// Parses one item at the start of `s`; `None` when `s` holds only part of it.
fn item(s: &[u8]) -> Result<Option<(Ev, usize, bool)>, WorkbookError> {
    let bad = |what: &str| corrupt(format!("malformed XML in the worksheet: {what}"));
    if s[0] == b'&' {
        return Ok(find(s, b";").map(|i| (Ev::Ref(1..i), i + 1, false)));
    }
    if s[0] != b'<' {
        let end = memchr::memchr2(b'<', b'&', s);
        return Ok(end.map(|i| (Ev::Text(0..i), i, false)));
    }
    if s.len() < 2 {
        return Ok(None);
    }
    match s[1] {
        b'/' => {
            let Some(gt) = find(s, b">") else {
                return Ok(None);
            };
            let name_end = s[2..gt]
                .iter()
                .position(|c| c.is_ascii_whitespace())
                .map_or(gt, |i| 2 + i);
            Ok(Some((Ev::End { name: 2..name_end }, gt + 1, false)))
        }
        b'?' => Ok(find(s, b"?>").map(|i| (Ev::Text(0..0), i + 2, false))),
        b'!' => {
            if s.starts_with(b"<!--") {
                Ok(find(&s[4..], b"-->").map(|i| (Ev::Text(0..0), 4 + i + 3, false)))
            } else if s.starts_with(b"<![CDATA[") {
                Ok(find(&s[9..], b"]]>").map(|i| (Ev::CData(9..9 + i), 9 + i + 3, false)))
            } else if s.len() < 9 {
                Ok(None)
            } else {
                Ok(find(s, b">").map(|i| (Ev::Text(0..0), i + 1, false)))
            }
        }
        _ => {
            // A start tag: the name, then attributes (values may hold '>' or '/').
            let mut i = 1;
            while i < s.len() && !s[i].is_ascii_whitespace() && s[i] != b'>' && s[i] != b'/' {
                i += 1;
            }
            let name = 1..i;
            if name.is_empty() {
                return Err(bad("a tag without a name"));
            }
            let attrs_start = i;
            loop {
                if i >= s.len() {
                    return Ok(None);
                }
                match s[i] {
                    b'>' => {
                        return Ok(Some((
                            Ev::Start {
                                name,
                                attrs: attrs_start..i,
                            },
                            i + 1,
                            false,
                        )));
                    }
                    b'/' => {
                        if i + 1 >= s.len() {
                            return Ok(None);
                        }
                        if s[i + 1] != b'>' {
                            return Err(bad("'/' inside a tag"));
                        }
                        return Ok(Some((
                            Ev::Start {
                                name,
                                attrs: attrs_start..i,
                            },
                            i + 2,
                            true,
                        )));
                    }
                    b'"' | b'\'' => {
                        let q = s[i];
                        match memchr::memchr(q, &s[i + 1..]) {
                            Some(j) => i += j + 2,
                            None => return Ok(None),
                        }
                    }
                    _ => i += 1,
                }
            }
        }
    }
}

impl Scanner {
    fn next(&mut self) -> Result<Ev, WorkbookError> {
        if std::mem::take(&mut self.pending_end) {
            return Ok(Ev::EmptyEnd);
        }
        loop {
            let s = &self.src.buf[self.src.pos..];
            if !s.is_empty()
                && let Some((ev, len, empty)) = item(s)?
            {
                let base = self.src.pos;
                self.src.pos += len;
                let shift = |r: Range<usize>| base + r.start..base + r.end;
                return Ok(match ev {
                    Ev::Start { name, attrs } => {
                        if empty {
                            self.end_name.clear();
                            self.end_name
                                .extend_from_slice(&self.src.buf[shift(name.clone())]);
                            self.pending_end = true;
                        }
                        Ev::Start {
                            name: shift(name),
                            attrs: shift(attrs),
                        }
                    }
                    Ev::End { name } => Ev::End { name: shift(name) },
                    // Comments, processing instructions, declarations.
                    Ev::Text(r) if r.is_empty() => continue,
                    Ev::Text(r) => Ev::Text(shift(r)),
                    Ev::CData(r) => Ev::CData(shift(r)),
                    Ev::Ref(r) => Ev::Ref(shift(r)),
                    other => other,
                });
            }
            if !self.src.more()? {
                let rest = self.src.buf.len() - self.src.pos;
                if rest == 0 {
                    return Ok(Ev::Eof);
                }
                // Trailing text without a following tag.
                if self.src.buf[self.src.pos] != b'<' && self.src.buf[self.src.pos] != b'&' {
                    let r = self.src.pos..self.src.buf.len();
                    self.src.pos = self.src.buf.len();
                    return Ok(Ev::Text(r));
                }
                return Err(corrupt("the worksheet XML ends inside a tag"));
            }
        }
    }

    fn bytes(&self, r: &Range<usize>) -> &[u8] {
        &self.src.buf[r.clone()]
    }

    /// Skips to the end of the element `name` just started (nested same-name elements
    /// included), as quick-xml's `read_to_end` does.
    fn skip_to_end(&mut self, name: &[u8]) -> Result<(), WorkbookError> {
        let mut depth = 0usize;
        loop {
            match self.next()? {
                Ev::Start { name: n, .. } if same(self.bytes(&n), name) => depth += 1,
                Ev::End { name: n } if same(self.bytes(&n), name) => {
                    if depth == 0 {
                        return Ok(());
                    }
                    depth -= 1;
                }
                Ev::EmptyEnd if same(&self.end_name, name) => {
                    if depth == 0 {
                        return Ok(());
                    }
                    depth -= 1;
                }
                Ev::Eof => return Err(corrupt("the worksheet XML ends inside an element")),
                _ => {}
            }
        }
    }
}

/// Byte-slice equality for the short names compared per cell (no call into memcmp).
#[inline(always)]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

#[inline]
fn local(name: &[u8]) -> &[u8] {
    match name.iter().rposition(|&c| c == b':') {
        Some(i) => &name[i + 1..],
        None => name,
    }
}

/// A tag's attributes as (key, raw value) pairs; stops at the first malformed one.
struct AttrIter<'s> {
    attrs: &'s [u8],
    i: usize,
}

impl<'s> Iterator for AttrIter<'s> {
    type Item = (&'s [u8], &'s [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let (a, n) = (self.attrs, self.attrs.len());
        let mut i = self.i;
        while i < n && a[i].is_ascii_whitespace() {
            i += 1;
        }
        let k0 = i;
        while i < n && a[i] != b'=' && !a[i].is_ascii_whitespace() {
            i += 1;
        }
        let k1 = i;
        while i < n && a[i] != b'=' {
            i += 1;
        }
        i += 1;
        while i < n && a[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= n || (a[i] != b'"' && a[i] != b'\'') {
            self.i = n;
            return None;
        }
        let v0 = i + 1;
        let Some(len) = memchr::memchr(a[i], &a[v0..]) else {
            self.i = n;
            return None;
        };
        self.i = v0 + len + 1;
        Some((&a[k0..k1], &a[v0..v0 + len]))
    }
}

fn attrs(attrs: &[u8]) -> AttrIter<'_> {
    AttrIter { attrs, i: 0 }
}

/// A raw attribute value by exact key.
fn attr<'s>(a: &'s [u8], key: &[u8]) -> Option<&'s [u8]> {
    attrs(a).find(|(k, _)| same(k, key)).map(|(_, v)| v)
}

type Attrs3<'s> = (Option<&'s [u8]>, Option<&'s [u8]>, Option<&'s [u8]>);

/// A cell's `r`, `s` and `t` attributes in one pass (raw values, exact keys).
fn cell_attrs(a: &[u8]) -> Attrs3<'_> {
    let (mut r, mut s, mut t) = (None, None, None);
    for (k, v) in attrs(a) {
        match k {
            b"r" => r = Some(v),
            b"s" => s = Some(v),
            b"t" => t = Some(v),
            _ => {}
        }
    }
    (r, s, t)
}

/// `A1` → (row, col), 0-based; a reference without a row is an error, without a column
/// gives `None` for it.
fn row_col(r: &[u8]) -> Result<(u32, Option<u32>), WorkbookError> {
    let bad = || {
        corrupt(format!(
            "bad cell reference {:?}",
            String::from_utf8_lossy(r)
        ))
    };
    let (mut col, mut row) = (0u32, 0u32);
    let mut i = 0;
    while i < r.len() {
        match r[i] {
            c @ b'A'..=b'Z' => {
                col = col
                    .saturating_mul(26)
                    .saturating_add(u32::from(c - b'A') + 1)
            }
            c @ b'a'..=b'z' => {
                col = col
                    .saturating_mul(26)
                    .saturating_add(u32::from(c - b'a') + 1)
            }
            b'0'..=b'9' => break,
            _ => return Err(bad()),
        }
        i += 1;
    }
    while i < r.len() {
        match r[i] {
            c @ b'0'..=b'9' => row = row.saturating_mul(10).saturating_add(u32::from(c - b'0')),
            _ => return Err(bad()),
        }
        i += 1;
    }
    let row = row.checked_sub(1).ok_or_else(bad)?;
    Ok((row, col.checked_sub(1)))
}

fn index(v: &[u8]) -> usize {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    v.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0'))
}

struct CellReader<'a> {
    strings: &'a [String],
    formats: &'a [Format],
    value: String,
    name: Vec<u8>,
}

impl<'a> CellReader<'a> {
    fn run(
        mut self,
        scan: &mut Scanner,
        push: &mut impl FnMut(u32, u32, Cell<'a>) -> bool,
    ) -> Result<(), WorkbookError> {
        // To <sheetData>.
        loop {
            match scan.next()? {
                Ev::Start { name, .. } if local(scan.bytes(&name)) == b"sheetData" => break,
                Ev::Eof => return Err(corrupt("the worksheet has no sheetData")),
                _ => {}
            }
        }
        let (mut row, mut col) = (0u32, 0u32);
        loop {
            match scan.next()? {
                Ev::Start { name, attrs } => {
                    let n = local(scan.bytes(&name));
                    if same(n, b"row") {
                        if let Some(r) = attr(scan.bytes(&attrs), b"r") {
                            row = row_col(r)?.0;
                        }
                    } else if same(n, b"c") {
                        let (r_attr, s_attr, t_attr) = cell_attrs(scan.bytes(&attrs));
                        let pos = match r_attr {
                            Some(r) => {
                                let (r, c) = row_col(r)?;
                                let c =
                                    c.ok_or_else(|| corrupt("a cell reference without a column"))?;
                                col = c;
                                (r, c)
                            }
                            None => (row, col),
                        };
                        let style = s_attr.map(index);
                        // The type, copied out of the window (the scan moves on).
                        let mut typ_buf = [0u8; 16];
                        let typ = match t_attr {
                            Some(t) if t.len() <= typ_buf.len() => {
                                typ_buf[..t.len()].copy_from_slice(t);
                                Some(&typ_buf[..t.len()])
                            }
                            // No type calamine knows is this long.
                            Some(_) => Some(&b"?"[..]),
                            None => None,
                        };
                        let cell = self.cell(scan, style, typ)?;
                        col += 1;
                        if !push(pos.0, pos.1, cell) {
                            return Ok(());
                        }
                    }
                }
                Ev::End { name } => {
                    let n = local(scan.bytes(&name));
                    if same(n, b"row") {
                        row += 1;
                        col = 0;
                    } else if n == b"sheetData" {
                        return Ok(());
                    }
                }
                Ev::EmptyEnd => {
                    let n = local(&scan.end_name);
                    if n == b"row" {
                        row += 1;
                        col = 0;
                    } else if n == b"sheetData" {
                        return Ok(());
                    }
                }
                Ev::Eof => return Err(corrupt("the worksheet XML ends before </sheetData>")),
                _ => {}
            }
        }
    }

    /// The rest of a `<c>` element: its value, the last of its `v`/`is`/`f` children.
    fn cell(
        &mut self,
        scan: &mut Scanner,
        style: Option<usize>,
        typ: Option<&[u8]>,
    ) -> Result<Cell<'a>, WorkbookError> {
        let mut value = Cell::Empty;
        loop {
            match scan.next()? {
                Ev::Start { name, .. } => {
                    self.name.clear();
                    self.name.extend_from_slice(scan.bytes(&name));
                    value = self.value_of(scan, style, typ)?;
                }
                Ev::End { name } if same(local(scan.bytes(&name)), b"c") => return Ok(value),
                Ev::EmptyEnd if local(&scan.end_name) == b"c" => return Ok(value),
                Ev::Eof => return Err(corrupt("the worksheet XML ends inside a cell")),
                _ => {}
            }
        }
    }

    fn value_of(
        &mut self,
        scan: &mut Scanner,
        style: Option<usize>,
        typ: Option<&[u8]>,
    ) -> Result<Cell<'a>, WorkbookError> {
        let name = std::mem::take(&mut self.name);
        let result = match local(&name) {
            b"is" => self
                .inline_string(scan, &name)
                .map(|s| Cell::Text(Cow::Owned(s))),
            b"v" if matches!(typ, Some(b"inlineStr" | b"is")) => {
                scan.skip_to_end(&name).map(|()| Cell::Empty)
            }
            b"v" if matches!(typ, None | Some(b"n" | b"s" | b"b" | b"e")) => match scan.next()? {
                Ev::Text(r) => {
                    let v = std::str::from_utf8(scan.bytes(&r)).map_err(corrupt)?;
                    let cell = self.read_v(v, style, typ)?;
                    scan.skip_to_end(&name)?;
                    Ok(cell)
                }
                Ev::End { name: n } if same(scan.bytes(&n), &name) => Ok(Cell::Empty),
                Ev::EmptyEnd if scan.end_name == name => Ok(Cell::Empty),
                Ev::Eof => Err(corrupt("the worksheet XML ends inside a value")),
                _ => scan.skip_to_end(&name).map(|()| Cell::Empty),
            },
            b"v" => {
                let mut text = std::mem::take(&mut self.value);
                text.clear();
                let collected = loop {
                    match scan.next()? {
                        Ev::Text(r) => push_xml10(scan.bytes(&r), &mut text)?,
                        Ev::Ref(r) => push_entity(scan.bytes(&r), &mut text)?,
                        Ev::End { name: n } if same(scan.bytes(&n), &name) => break Ok(()),
                        Ev::EmptyEnd if scan.end_name == name => break Ok(()),
                        Ev::Eof => break Err(corrupt("the worksheet XML ends inside a value")),
                        _ => {}
                    }
                };
                let cell = collected.and_then(|()| self.read_v(&text, style, typ));
                self.value = text;
                cell
            }
            b"f" => scan.skip_to_end(&name).map(|()| Cell::Empty),
            _ => Err(corrupt(
                "unexpected element in a cell (expected v, f or is)",
            )),
        };
        self.name = name;
        result
    }

    fn read_v(
        &self,
        v: &str,
        style: Option<usize>,
        typ: Option<&[u8]>,
    ) -> Result<Cell<'a>, WorkbookError> {
        match typ {
            Some(b"s") => {
                if v.is_empty() {
                    return Ok(Cell::Empty);
                }
                self.strings
                    .get(index(v.as_bytes()))
                    .map(|s| Cell::Text(Cow::Borrowed(s.as_str())))
                    .ok_or_else(|| corrupt("Cell string index not found in shared strings table"))
            }
            Some(b"b") => {
                let t = v.trim();
                if t.is_empty() {
                    Ok(Cell::Empty)
                } else if t == "0" || t.eq_ignore_ascii_case("false") {
                    Ok(Cell::Bool(false))
                } else if t == "1" || t.eq_ignore_ascii_case("true") {
                    Ok(Cell::Bool(true))
                } else {
                    Err(corrupt(format!("unrecognized boolean cell value {v:?}")))
                }
            }
            Some(b"d") => Ok(Cell::Iso(v.to_string())),
            Some(b"e") => v
                .parse::<calamine::CellErrorType>()
                .map(|e| Cell::Error(e.to_string()))
                .map_err(corrupt),
            Some(b"str") => Ok(Cell::Text(Cow::Owned(unescape_excel(v).into_owned()))),
            Some(b"n") | None => {
                if v.is_empty() {
                    return Ok(Cell::Empty);
                }
                match fast_float2::parse::<f64, _>(v.as_bytes()) {
                    Ok(n) => {
                        let format = match style {
                            Some(id) => self.formats.get(id).copied(),
                            None => Some(Format::Other),
                        };
                        Ok(match format {
                            Some(Format::DateTime) => Cell::Serial(n),
                            _ => Cell::Float(n),
                        })
                    }
                    Err(_) if typ.is_none() => Ok(Cell::Text(Cow::Owned(v.to_string()))),
                    Err(_) => Err(corrupt(format!("not a number: {v:?}"))),
                }
            }
            Some(t) => Err(corrupt(format!(
                "unknown cell type t={:?}",
                String::from_utf8_lossy(t)
            ))),
        }
    }

    /// An inline string (`<is>`), assembled as a shared string is.
    fn inline_string(
        &mut self,
        scan: &mut Scanner,
        closing: &[u8],
    ) -> Result<String, WorkbookError> {
        let mut rich: Option<String> = None;
        let mut phonetic = false;
        loop {
            match scan.next()? {
                Ev::Start { name, attrs } => {
                    let n = local(scan.bytes(&name)).to_vec();
                    if n == b"r" && rich.is_none() {
                        rich = Some(String::new());
                    } else if n == b"rPh" {
                        phonetic = true;
                    } else if n == b"t" && !phonetic {
                        let preserve = attr(scan.bytes(&attrs), b"xml:space") == Some(b"preserve");
                        let tname = scan.bytes(&name).to_vec();
                        let mut value = String::new();
                        loop {
                            match scan.next()? {
                                Ev::Text(r) | Ev::CData(r) => {
                                    push_xml10(scan.bytes(&r), &mut value)?
                                }
                                Ev::Ref(r) => push_entity(scan.bytes(&r), &mut value)?,
                                Ev::End { name: e } if scan.bytes(&e) == tname.as_slice() => break,
                                Ev::EmptyEnd if scan.end_name == tname => break,
                                Ev::Eof => {
                                    return Err(corrupt("the worksheet XML ends inside a string"));
                                }
                                _ => {}
                            }
                        }
                        let value = finish_t(&value, preserve);
                        match &mut rich {
                            Some(s) => s.push_str(&value),
                            None => rich = Some(value),
                        }
                    }
                }
                Ev::End { name } => {
                    let full = scan.bytes(&name);
                    if full == closing {
                        return Ok(rich.unwrap_or_default());
                    }
                    if local(full) == b"rPh" {
                        phonetic = false;
                    }
                }
                Ev::EmptyEnd => {
                    if scan.end_name == closing {
                        return Ok(rich.unwrap_or_default());
                    }
                    if local(&scan.end_name) == b"rPh" {
                        phonetic = false;
                    }
                }
                Ev::Eof => return Err(corrupt("the worksheet XML ends inside a string")),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use calamine::Reader;
    use rust_xlsxwriter::{ExcelDateTime, Format as XFormat, Formula, Workbook};

    use super::*;

    /// Per sheet: its name and its cells (row, column, value), or the error reading them.
    type Sheets = Vec<(String, Result<Vec<(u32, u32, Cell<'static>)>, String>)>;

    /// Every cell of every sheet as calamine's cell reader gives it.
    fn calamine_cells(bytes: &[u8]) -> Sheets {
        let mut x = calamine::Xlsx::new(Cursor::new(bytes.to_vec())).unwrap();
        let names = x.sheet_names();
        names
            .into_iter()
            .map(|name| {
                let mut out = Vec::new();
                let result = (|| {
                    let mut cells = x.worksheet_cells_reader(&name).map_err(|e| e.to_string())?;
                    while let Some(c) = cells.next_cell().map_err(|e| e.to_string())? {
                        let (r, col) = c.get_position();
                        out.push((r, col, super::super::cell_ref(c.get_value()).into_owned()));
                    }
                    Ok(())
                })();
                (name, result.map(|()| out))
            })
            .collect()
    }

    fn fast_cells(bytes: &[u8]) -> Sheets {
        let fast = match FastXlsx::open(bytes.to_vec()).unwrap() {
            Ok(f) => f,
            Err(_) => panic!("the fast reader declined this workbook"),
        };
        fast.sheet_names()
            .into_iter()
            .map(|name| {
                let mut out = Vec::new();
                let result = fast.for_each_cell(&name, |r, c, cell| {
                    out.push((r, c, cell.into_owned()));
                    true
                });
                (name, result.map(|()| out).map_err(|e| e.to_string()))
            })
            .collect()
    }

    /// Same sheets, same cells in the same order with the same values (floats compared by
    /// bits); where calamine fails on a sheet, so must we.
    fn assert_same(bytes: &[u8], what: &str) {
        let (want, got) = (calamine_cells(bytes), fast_cells(bytes));
        assert_eq!(
            want.iter().map(|s| &s.0).collect::<Vec<_>>(),
            got.iter().map(|s| &s.0).collect::<Vec<_>>(),
            "{what}: sheet names"
        );
        for ((name, w), (_, g)) in want.iter().zip(&got) {
            match (w, g) {
                (Ok(w), Ok(g)) => {
                    assert_eq!(w.len(), g.len(), "{what}/{name}: cell count");
                    for (a, b) in w.iter().zip(g) {
                        assert_eq!(format!("{a:?}"), format!("{b:?}"), "{what}/{name}");
                    }
                }
                (Err(_), Err(_)) => {}
                _ => panic!("{what}/{name}: calamine {w:?}, ours {g:?}"),
            }
        }
    }

    fn typed_workbook() -> Vec<u8> {
        let mut wb = Workbook::new();
        let ws = wb.add_worksheet();
        ws.set_name("Types").unwrap();
        let formats = [
            "dd.mm.yyyy",
            "yyyy-mm-dd hh:mm:ss",
            "[h]:mm:ss",
            "0.00",
            "#,##0.00;[Red](#,##0.00)",
            "\"day\" 0",
            "[$-407]dddd, d. mmmm yyyy",
            "mm:ss",
            "h:mm AM/PM",
            "0%",
            "@",
        ];
        for (r, f) in formats.iter().enumerate() {
            let fmt = XFormat::new().set_num_format(*f);
            ws.write_number_with_format(r as u32, 0, 45000.25 + r as f64, &fmt)
                .unwrap();
            ws.write_datetime_with_format(
                r as u32,
                1,
                ExcelDateTime::from_ymd(2025, 1 + r as u8, 28).unwrap(),
                &fmt,
            )
            .unwrap();
        }
        let strings = [
            "plain",
            "  padded  ",
            "line\r\nbreak",
            "tab\tin",
            "lit _x000D_ escape",
            "Miete März – ü ß € 😀",
            "<tag> & \"quotes\" 'apos'",
            "",
            "1.234,56-",
        ];
        for (r, s) in strings.iter().enumerate() {
            ws.write_string(r as u32, 2, *s).unwrap();
            // The same text again: a shared string used twice.
            ws.write_string(r as u32, 3, *s).unwrap();
        }
        ws.write_boolean(0, 4, true).unwrap();
        ws.write_boolean(1, 4, false).unwrap();
        ws.write_formula(2, 4, Formula::new("=1+1").set_result("2"))
            .unwrap();
        ws.write_formula(3, 4, Formula::new("=\"a\"&\"b\"").set_result("ab"))
            .unwrap();
        ws.write_number(4, 4, -0.0).unwrap();
        ws.write_number(5, 4, 1e-300).unwrap();
        ws.write_number(6, 4, 123456789012345.0).unwrap();
        ws.write_blank(7, 4, &XFormat::new().set_bold()).unwrap();
        ws.write_string(1000, 16383, "far corner").unwrap();
        let bold = XFormat::new().set_bold();
        let italic = XFormat::new().set_italic();
        ws.write_rich_string(8, 4, &[(&bold, "rich "), (&italic, " text ")])
            .unwrap();
        let ws = wb.add_worksheet();
        ws.set_name("Second & <Sheet>").unwrap();
        ws.write_string(0, 0, "second").unwrap();
        wb.save_to_buffer().unwrap()
    }

    /// A package written by hand: the XML shapes a generator may use and rust_xlsxwriter does
    /// not (inline and phonetic strings, prefixes, comments, CDATA, cells without references,
    /// self-closing rows and cells, typed values calamine reads specially).
    fn handmade(sheet_data: &str, shared: &str) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut zip = zip::ZipWriter::new(Cursor::new(&mut out));
            let opts = zip::write::SimpleFileOptions::default();
            let mut put = |name: &str, body: &str| {
                zip.start_file(name, opts).unwrap();
                zip.write_all(body.as_bytes()).unwrap();
            };
            put(
                "[Content_Types].xml",
                r#"<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>"#,
            );
            put(
                "_rels/.rels",
                r#"<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>"#,
            );
            put(
                "xl/_rels/workbook.xml.rels",
                r#"<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/><Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="/xl/worksheets/sheet2.xml"/></Relationships>"#,
            );
            put(
                "xl/workbook.xml",
                r#"<?xml version="1.0"?><workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><sheets><sheet name="Hand" sheetId="1" r:id="rId1"/><sheet name="Two" sheetId="2" r:id="rId2"/></sheets></workbook>"#,
            );
            put(
                "xl/styles.xml",
                r#"<?xml version="1.0"?><styleSheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><numFmts count="2"><numFmt numFmtId="164" formatCode="dd/mm/yyyy"/><numFmt numFmtId="165" formatCode="&quot;Q&quot;0"/></numFmts><cellStyleXfs count="1"><xf numFmtId="14"/></cellStyleXfs><cellXfs count="5"><xf numFmtId="0"/><xf numFmtId="164"/><xf numFmtId="165"/><xf numFmtId="46"><alignment horizontal="left"/></xf><xf/></cellXfs></styleSheet>"#,
            );
            put(
                "xl/sharedStrings.xml",
                &format!(
                    r#"<?xml version="1.0"?><sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">{shared}</sst>"#
                ),
            );
            put(
                "xl/worksheets/sheet1.xml",
                &format!(
                    r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><dimension ref="A1:H20"/><sheetData>{sheet_data}</sheetData></worksheet>"#
                ),
            );
            put(
                "xl/worksheets/sheet2.xml",
                r#"<x:worksheet xmlns:x="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><x:sheetData><x:row r="2"><x:c r="B2" t="s"><x:v>1</x:v></x:c><x:c><x:v>7</x:v></x:c></x:row></x:sheetData></x:worksheet>"#,
            );
            zip.finish().unwrap();
        }
        out
    }

    const SHARED: &str = r#"<si><t>first</t></si><si><t xml:space="preserve">  kept  </t></si><si><r><rPr><b/></rPr><t>rich </t></r><r><t xml:space="preserve"> runs</t></r><rPh sb="0" eb="1"><t>ふりがな</t></rPh></si><si><t>&lt;&amp;&#x41;&#66;</t></si><si><t>cr&#13;
lf _x005F_x0041_ _xD83D__xDE00_</t></si><si/><si><t><![CDATA[in <cdata>]]></t></si>"#;

    const SHEET: &str = r#"
<row r="1" spans="1:8">
  <c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c><c r="C1" t="s"><v>2</v></c>
  <c r="D1" t="s"><v>3</v></c><c r="E1" t="s"><v>4</v></c><c r="F1" t="s"><v>5</v></c>
  <c r="G1" t="s"><v>6</v></c><c r="H1" t="s"><v></v></c>
</row>
<row r="3"><c t="inlineStr"><is><t> inline </t></is></c><c t="inlineStr"><is><r><t>a</t></r><r><t xml:space="preserve"> b </t></r><rPh><t>x</t></rPh></is></c>
  <c t="str"><f>A1&amp;"x"</f><v>a &amp; b&#10;c_x000D_</v></c><c t="b"><v>1</v></c><c t="b"><v>false</v></c>
  <c t="e"><v>#N/A</v></c><c t="e"><v>#DIV/0!</v></c><c t="d"><v>2025-12-31T00:00:00</v></c></row>
<row r="4"><c r="A4" s="1"><v>45657</v></c><c r="B4" s="2"><v>3</v></c><c r="C4" s="3"><v>1.5</v></c><c r="D4" s="4"><v>2</v></c>
  <c r="E4" s="99"><v>4</v></c><c r="F4"><v>not a number</v></c><c r="G4" s="1"/><c r="H4"><v/></c></row>
<row r="6"/>
<row><c><v>1e3</v></c><c r = 'B7' s = "0"><!-- a comment --><v>2.50</v></c><c r="C7" t="n"><v>-0</v></c></row>
<row r="8"><c r="A8"><f t="shared" si="0"/><v>8</v></c><c r="D8" t="s" weird="a>b/c"><v>0</v></c></row>
"#;

    #[test]
    fn same_cells_as_calamine() {
        assert_same(&typed_workbook(), "rust_xlsxwriter workbook");
        let typed = fast_cells(&typed_workbook());
        assert!(
            typed
                .iter()
                .all(|s| s.1.as_ref().is_ok_and(|c| !c.is_empty()))
        );
        assert_same(&handmade(SHEET, SHARED), "handmade package");
        // The comparison covers what it should: every kind of cell was read.
        let cells = fast_cells(&handmade(SHEET, SHARED));
        let hand = cells[0].1.as_ref().unwrap();
        let kinds: std::collections::BTreeSet<&str> = hand
            .iter()
            .map(|(_, _, c)| match c {
                Cell::Empty => "empty",
                Cell::Int(_) => "int",
                Cell::Float(_) => "float",
                Cell::Text(_) => "text",
                Cell::Bool(_) => "bool",
                Cell::Serial(_) => "serial",
                Cell::Iso(_) => "iso",
                Cell::Error(_) => "error",
                Cell::Number(_) => "number",
            })
            .collect();
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            ["bool", "empty", "error", "float", "iso", "serial", "text"]
        );
        assert_eq!(hand.len(), 29, "{hand:?}");
        assert!(
            hand.contains(&(0, 2, Cell::Text("rich runs".into()))),
            "{hand:?}"
        );
        assert_eq!(cells[1].1.as_ref().unwrap().len(), 2, "prefixed elements");
        // A sheet element calamine refuses is refused here too.
        let bad = handmade(r#"<row r="1"><c r="A1" t="q"><v>1</v></c></row>"#, SHARED);
        assert_same(&bad, "unknown cell type");
        assert!(fast_cells(&bad)[0].1.is_err());
        let bad = handmade(r#"<row r="1"><c r="A1"><extLst/></c></row>"#, SHARED);
        assert_same(&bad, "an unexpected element in a cell");
        let bad = handmade(r#"<row r="1"><c r="A1" t="s"><v>99</v></c></row>"#, SHARED);
        assert_same(&bad, "shared string index out of range");
        let bad = handmade(r#"<row r="1"><c r="A1" t="n"><v>x</v></c></row>"#, SHARED);
        assert_same(&bad, "a typed number that is not one");
    }

    #[test]
    fn chunk_boundaries_anywhere_give_the_same_cells() {
        // Many rows: the sheet spans several inflated chunks, so items straddle boundaries.
        let mut rows = String::new();
        for r in 1..=20_000 {
            rows.push_str(&format!(
                r#"<row r="{r}"><c r="A{r}" t="s"><v>{}</v></c><c r="B{r}"><v>{r}.25</v></c><c r="C{r}" t="inlineStr"><is><t>row &amp; {r}</t></is></c></row>"#,
                r % 7
            ));
        }
        let book = handmade(&rows, SHARED);
        assert_same(&book, "20,000 rows");
        assert_eq!(fast_cells(&book)[0].1.as_ref().unwrap().len(), 60_000);
    }

    #[test]
    fn layouts_it_does_not_handle_are_left_to_calamine() {
        // The officeDocument relationship is missing.
        let mut out = Vec::new();
        {
            let mut zip = zip::ZipWriter::new(Cursor::new(&mut out));
            let opts = zip::write::SimpleFileOptions::default();
            zip.start_file("xl/workbook.xml", opts).unwrap();
            zip.write_all(b"<workbook/>").unwrap();
            zip.finish().unwrap();
        }
        assert!(FastXlsx::open(out).unwrap().is_err());
    }

    #[test]
    fn excel_escapes_and_formats() {
        assert_eq!(unescape_excel("a_x000D_b"), "a\rb");
        assert_eq!(unescape_excel("_x005F_x000D_"), "_x000D_");
        assert_eq!(unescape_excel("_xD83D__xDE00_"), "😀");
        assert_eq!(unescape_excel("_xD83D_"), "\u{FFFD}");
        assert_eq!(unescape_excel("_x00zz_"), "_x00zz_");
        assert_eq!(custom_format("dd.mm.yyyy"), Format::DateTime);
        assert_eq!(custom_format("[h]:mm:ss"), Format::TimeDelta);
        assert_eq!(custom_format("\"day\" 0"), Format::Other);
        assert_eq!(custom_format("0.00;[Red]-0.00"), Format::Other);
        assert_eq!(custom_format("[$-407]d. mmmm"), Format::DateTime);
        assert_eq!(builtin_format("22"), Format::DateTime);
        assert_eq!(builtin_format("46"), Format::TimeDelta);
        assert_eq!(builtin_format("4"), Format::Other);
    }
}
