//! The byte scanner over a worksheet's XML: tags, attributes and text, no general tokenizer.

use std::ops::Range;

use super::*;

/// What the scanner found; ranges index `Source::buf` until the next call.
pub(super) enum Ev {
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

pub(super) struct Scanner {
    pub(super) src: Source,
    /// A `<x/>` was returned as a start: its end comes next.
    pub(super) pending_end: bool,
    pub(super) end_name: Vec<u8>,
}

pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    match needle {
        [b] => memchr::memchr(*b, hay),
        _ => memchr::memmem::find(hay, needle),
    }
}

/// Parses one item at the start of `s`; `None` when `s` holds only part of it.
pub(super) fn item(s: &[u8]) -> Result<Option<(Ev, usize, bool)>, WorkbookError> {
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
    pub(super) fn next(&mut self) -> Result<Ev, WorkbookError> {
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

    pub(super) fn bytes(&self, r: &Range<usize>) -> &[u8] {
        &self.src.buf[r.clone()]
    }

    /// Skips to the end of the element `name` just started (nested same-name elements
    /// included), as quick-xml's `read_to_end` does.
    pub(super) fn skip_to_end(&mut self, name: &[u8]) -> Result<(), WorkbookError> {
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
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

#[inline]
pub(super) fn local(name: &[u8]) -> &[u8] {
    match name.iter().rposition(|&c| c == b':') {
        Some(i) => &name[i + 1..],
        None => name,
    }
}

/// A tag's attributes as (key, raw value) pairs; stops at the first malformed one.
pub(super) struct AttrIter<'s> {
    pub(super) attrs: &'s [u8],
    pub(super) i: usize,
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

pub(super) fn attrs(attrs: &[u8]) -> AttrIter<'_> {
    AttrIter { attrs, i: 0 }
}

/// A raw attribute value by exact key.
pub(super) fn attr<'s>(a: &'s [u8], key: &[u8]) -> Option<&'s [u8]> {
    attrs(a).find(|(k, _)| same(k, key)).map(|(_, v)| v)
}

pub(super) type Attrs3<'s> = (Option<&'s [u8]>, Option<&'s [u8]>, Option<&'s [u8]>);

/// A cell's `r`, `s` and `t` attributes in one pass (raw values, exact keys).
pub(super) fn cell_attrs(a: &[u8]) -> Attrs3<'_> {
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
pub(super) fn row_col(r: &[u8]) -> Result<(u32, Option<u32>), WorkbookError> {
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

pub(super) fn index(v: &[u8]) -> usize {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    v.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0'))
}
