//! Which blobs a source takes, and for which business unit: the prefix, the `include` globs on
//! the file name, and the `path` template that names the `bu_id`. A key that does not fit is
//! skipped with a reason — never guessed.

use crate::etl::payload::{BlobKey, BuId};

/// Why a blob was not taken (the key in `source_runs.reasons`, and a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    /// Not under the source's prefix.
    OutsidePrefix,
    /// The file name matches none of `include`.
    NotIncluded,
    /// The key does not have the shape of `path`.
    PathMismatch,
    /// The part of the key `path` names as `{bu_id}` is not a valid bu_id.
    InvalidBuId,
    /// Not a key etlq accepts (`..`, control characters, …).
    InvalidKey,
    /// 0 bytes.
    Empty,
    /// Modified within `min_age_ms`: probably still being written; the next listing looks
    /// again.
    TooRecent,
    /// The store or the event gave no etag, which the ledger needs to tell versions apart.
    NoEtag,
    /// An Event Grid event for another container than the blob store's.
    OtherContainer,
    /// An Event Grid event of another type, or a BlobCreated from an API that does not finish
    /// a blob (e.g. `PutBlock`).
    OtherEvent,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::OutsidePrefix => "outside_prefix",
            Skip::NotIncluded => "not_included",
            Skip::PathMismatch => "path_mismatch",
            Skip::InvalidBuId => "invalid_bu_id",
            Skip::InvalidKey => "invalid_key",
            Skip::Empty => "empty",
            Skip::TooRecent => "too_recent",
            Skip::NoEtag => "no_etag",
            Skip::OtherContainer => "other_container",
            Skip::OtherEvent => "other_event",
        }
    }
}

/// One segment of a `path` template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: any one segment.
    Any,
    /// `{file}`: the last segment, any name.
    File,
    /// `pre{bu_id}post`.
    BuId {
        pre: String,
        post: String,
    },
}

/// Where a key's bu_id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BuSource {
    Fixed(BuId),
    Path(Vec<Segment>),
    /// A fixed bu_id with a template that only constrains the shape.
    FixedWithPath(BuId, Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    prefix: String,
    include: Vec<String>,
    bu: BuSource,
}

impl Matcher {
    /// `path` (a template) and/or `bu_id`: at least one names the business unit.
    pub fn new(
        prefix: &str,
        include: &[String],
        path: Option<&str>,
        bu_id: Option<&str>,
    ) -> Result<Matcher, String> {
        let fixed = bu_id.map(BuId::parse).transpose()?;
        let template = path.map(|p| parse_template(p, prefix)).transpose()?;
        let has_bu = template
            .as_ref()
            .is_some_and(|t| t.iter().any(|s| matches!(s, Segment::BuId { .. })));
        let bu = match (fixed, template) {
            (Some(_), Some(_)) if has_bu => {
                return Err("set `bu_id` or a `{bu_id}` in `path`, not both".into());
            }
            (Some(b), Some(t)) => BuSource::FixedWithPath(b, t),
            (Some(b), None) => BuSource::Fixed(b),
            (None, Some(t)) if has_bu => BuSource::Path(t),
            _ => {
                return Err(
                    "needs `bu_id = \"...\"` or a `path` with `{bu_id}` in it (e.g. \"incoming/{bu_id}/{file}\")"
                        .into(),
                );
            }
        };
        for g in include {
            if g.is_empty() || g.contains('/') {
                return Err(format!(
                    "include {g:?}: a pattern on the file name, like \"*.xlsx\""
                ));
            }
        }
        Ok(Matcher {
            prefix: prefix.to_string(),
            include: include.iter().map(|g| g.to_lowercase()).collect(),
            bu,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The checked key and its bu_id, or why the blob is skipped.
    pub fn take(&self, key: &str) -> Result<(BlobKey, BuId), Skip> {
        if !key.starts_with(&self.prefix) {
            return Err(Skip::OutsidePrefix);
        }
        let key = BlobKey::parse(key).map_err(|_| Skip::InvalidKey)?;
        let name = key.as_str().rsplit('/').next().unwrap_or_default();
        if !self.include.is_empty() {
            let lower = name.to_lowercase();
            if !self
                .include
                .iter()
                .any(|g| glob(g.as_bytes(), lower.as_bytes()))
            {
                return Err(Skip::NotIncluded);
            }
        }
        let bu = match &self.bu {
            BuSource::Fixed(b) => b.clone(),
            BuSource::FixedWithPath(b, t) => {
                match_template(t, key.as_str())?;
                b.clone()
            }
            BuSource::Path(t) => match_template(t, key.as_str())?.ok_or(Skip::PathMismatch)?,
        };
        Ok((key, bu))
    }
}

fn parse_template(path: &str, prefix: &str) -> Result<Vec<Segment>, String> {
    let bad = |m: &str| Err(format!("path {path:?}: {m}"));
    if path.is_empty() || path.starts_with('/') {
        return bad("expected a relative template like \"incoming/{bu_id}/{file}\"");
    }
    let parts: Vec<&str> = path.split('/').collect();
    let mut out = Vec::with_capacity(parts.len());
    let mut bu_seen = false;
    for (i, p) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let seg = if *p == "*" {
            Segment::Any
        } else if *p == "{file}" {
            if !last {
                return bad("{file} must be the last segment");
            }
            Segment::File
        } else if let Some(start) = p.find("{bu_id}") {
            if bu_seen {
                return bad("{bu_id} appears twice");
            }
            bu_seen = true;
            let (pre, post) = (&p[..start], &p[start + "{bu_id}".len()..]);
            Segment::BuId {
                pre: pre.into(),
                post: post.into(),
            }
        } else if p.contains('{') || p.contains('}') {
            return bad("the only placeholders are {bu_id} and {file}, and * for any segment");
        } else if p.is_empty() {
            return bad("empty segment");
        } else {
            Segment::Literal((*p).into())
        };
        out.push(seg);
    }
    // The template's literal start must lie inside the prefix (or the prefix inside it), or
    // nothing listed could ever match.
    let literal: String = out
        .iter()
        .map_while(|s| match s {
            Segment::Literal(l) => Some(format!("{l}/")),
            _ => None,
        })
        .collect();
    if !(literal.starts_with(prefix) || prefix.starts_with(&literal)) {
        return bad(&format!("no key under prefix {prefix:?} can match it"));
    }
    Ok(out)
}

/// `Ok(Some(bu))` when the template names one, `Ok(None)` when it only matched the shape.
fn match_template(t: &[Segment], key: &str) -> Result<Option<BuId>, Skip> {
    let parts: Vec<&str> = key.split('/').collect();
    if parts.len() != t.len() {
        return Err(Skip::PathMismatch);
    }
    let mut bu = None;
    for (seg, part) in t.iter().zip(parts) {
        match seg {
            Segment::Literal(l) if l == part => {}
            Segment::Literal(_) => return Err(Skip::PathMismatch),
            Segment::Any | Segment::File => {}
            Segment::BuId { pre, post } => {
                let inner = part
                    .strip_prefix(pre.as_str())
                    .and_then(|r| r.strip_suffix(post.as_str()))
                    .ok_or(Skip::PathMismatch)?;
                bu = Some(BuId::parse(inner).map_err(|_| Skip::InvalidBuId)?);
            }
        }
    }
    Ok(bu)
}

/// `*` any run, `?` any one character; bytes, so no pattern can panic on a char boundary.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc() -> Vec<String> {
        ["*.xlsx", "*.xls"].map(String::from).to_vec()
    }

    #[test]
    fn the_bu_id_comes_from_the_path_and_misfits_are_skipped_with_a_reason() {
        let m = Matcher::new("incoming/", &inc(), Some("incoming/{bu_id}/{file}"), None).unwrap();
        let (k, b) = m.take("incoming/BU-1000/gl.XLSX").unwrap();
        assert_eq!(
            (k.as_str(), b.as_str()),
            ("incoming/BU-1000/gl.XLSX", "BU-1000")
        );
        assert_eq!(m.take("incoming/gl.xlsx"), Err(Skip::PathMismatch));
        assert_eq!(m.take("incoming/a/b/gl.xlsx"), Err(Skip::PathMismatch));
        assert_eq!(m.take("incoming/BU 1/gl.xlsx"), Err(Skip::InvalidBuId));
        assert_eq!(m.take("incoming/BU-1/notes.txt"), Err(Skip::NotIncluded));
        assert_eq!(m.take("other/BU-1/gl.xlsx"), Err(Skip::OutsidePrefix));
        assert_eq!(m.take("incoming/../x.xlsx"), Err(Skip::InvalidKey));
    }

    #[test]
    fn fixed_bu_ids_affixes_and_wildcards() {
        let m = Matcher::new("in/", &[], None, Some("BU-7")).unwrap();
        assert_eq!(m.take("in/a/b/c.bin").unwrap().1.as_str(), "BU-7");
        let m = Matcher::new("in/", &inc(), Some("in/*/GL_{bu_id}.xlsx"), None).unwrap();
        assert_eq!(m.take("in/2026/GL_BU-9.xlsx").unwrap().1.as_str(), "BU-9");
        assert_eq!(m.take("in/2026/TB_BU-9.xlsx"), Err(Skip::PathMismatch));
        let m = Matcher::new("in/", &inc(), Some("in/{file}"), Some("BU-1")).unwrap();
        assert_eq!(m.take("in/x/y.xlsx"), Err(Skip::PathMismatch));
        assert!(m.take("in/y.xlsx").is_ok());
    }

    #[test]
    fn bad_templates_are_refused() {
        let e =
            |p: &str, b: Option<&str>| Matcher::new("incoming/", &inc(), Some(p), b).unwrap_err();
        assert!(e("incoming/{file}/x", None).contains("last segment"));
        assert!(e("incoming/{bu}/{file}", None).contains("placeholders"));
        assert!(e("elsewhere/{bu_id}/{file}", None).contains("prefix"));
        assert!(e("incoming/{bu_id}/{file}", Some("BU-1")).contains("not both"));
        assert!(e("incoming/{file}", None).contains("needs"));
        assert!(Matcher::new("incoming/", &["a/*.xlsx".into()], None, Some("B")).is_err());
    }

    #[test]
    fn globs() {
        assert!(glob(b"*.xlsx", b"a.xlsx"));
        assert!(glob(b"*.xlsx", b".xlsx"));
        assert!(!glob(b"*.xlsx", b"a.xlsx.tmp"));
        assert!(glob(b"gl_??.x*", b"gl_01.xlsb"));
        assert!(glob(b"*a*b*", b"xxaxxbxx"));
        assert!(!glob(b"*a*b", b"xxaxxbxx"));
    }
}
