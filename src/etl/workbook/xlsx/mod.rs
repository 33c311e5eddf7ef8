//! Our own streaming reader for xlsx worksheets (ADR 0010): the sheet's XML is inflated on a
//! thread of its own and scanned on the caller's by a small byte scanner, not a general XML
//! tokenizer — the two were the extract's critical path. Cells mean exactly what calamine's
//! `XlsxCellReader` makes of them (same shared strings, number formats, date detection,
//! escapes); calamine stays the reader for workbooks whose layout this one does not open, and
//! `tests::same_cells_as_calamine` compares the two on every workbook the tests have.
//!
//! The workbook's small parts (relationships, workbook, shared strings, styles) are read with
//! quick-xml configured as calamine configures it, following calamine's rules.

//!
//! Seams: `package.rs` (the small parts: relationships, workbook, shared strings, styles),
//! `inflate.rs` (the inflating thread and the window the scanner reads), `scanner.rs` (the
//! byte scanner over the sheet XML), `cells.rs` (cells as calamine reads them), `tests.rs`.

mod cells;
mod inflate;
mod package;
mod scanner;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io::{BufReader, Cursor};
use std::sync::mpsc;

use quick_xml::events::Event;

use super::{Cell, WorkbookError};

use cells::*;
use inflate::*;
use package::*;
use scanner::*;

/// Inflated bytes handed from the inflating thread to the scanner at a time.
pub(super) const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the two threads.
pub(super) const CHUNKS_AHEAD: usize = 4;

pub(super) fn corrupt(e: impl std::fmt::Display) -> WorkbookError {
    WorkbookError::Corrupt(e.to_string())
}

/// How a cell's number format makes calamine read its number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Format {
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

pub(super) type XmlReader<'a, 'z> =
    quick_xml::Reader<BufReader<zip::read::ZipFile<'a, Cursor<&'z [u8]>>>>;

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
