//! The reader against calamine on every workbook the tests make.

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
