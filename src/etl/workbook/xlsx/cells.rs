//! Cells as calamine's `XlsxCellReader` makes them: shared strings, inline strings, numbers,
//! booleans, errors, dates by number format.

use std::borrow::Cow;

use super::*;

pub(super) struct CellReader<'a> {
    pub(super) strings: &'a [String],
    pub(super) formats: &'a [Format],
    pub(super) value: String,
    pub(super) name: Vec<u8>,
}

impl<'a> CellReader<'a> {
    pub(super) fn run(
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
    pub(super) fn cell(
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

    pub(super) fn value_of(
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

    pub(super) fn read_v(
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
    pub(super) fn inline_string(
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
