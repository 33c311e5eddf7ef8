//! Typing cells: numbers held as text in every locale form, Excel serial dates, the fast
//! paths held equal to the general ones.

use super::*;

fn de() -> Locale {
    Locale {
        decimal_separator: ',',
        thousands_separator: Some('.'),
        date_formats: vec!["%d.%m.%Y".into()],
    }
}
fn d(s: &str) -> Decimal {
    Decimal::from_str_exact(s).unwrap()
}

#[test]
fn numbers_held_as_text_in_both_locales() {
    let en = Locale::default();
    assert_eq!(parse_number_text("1,234.56", &en).unwrap(), d("1234.56"));
    assert_eq!(parse_number_text("(1,234.56)", &en).unwrap(), d("-1234.56"));
    assert_eq!(parse_number_text("-0.5", &en).unwrap(), d("-0.5"));
    assert_eq!(parse_number_text("+7", &en).unwrap(), d("7"));
    assert_eq!(parse_number_text(".5", &en).unwrap(), d("0.5"));
    assert_eq!(
        parse_number_text("1.234,56-", &de()).unwrap(),
        d("-1234.56")
    );
    assert_eq!(
        parse_number_text("1.234.567,00", &de()).unwrap(),
        d("1234567.00")
    );
    assert_eq!(parse_number_text("1 234,56", &de()).unwrap(), d("1234.56"));
    assert_eq!(parse_number_text("\u{a0}12,5 ", &de()).unwrap(), d("12.5"));
    for bad in [
        "",
        "-",
        "1,23.4",
        "12,34,567.1",
        "1.2.3",
        "abc",
        "1,234.56.7",
        "()",
        "1e5",
        "12,",
    ] {
        assert!(
            parse_number_text(bad, &en).is_err(),
            "{bad:?} should be rejected"
        );
    }
    assert!(
        parse_number_text("1,234.56", &de()).is_err(),
        "en format in a de export"
    );
}

/// The fast path either declines or agrees with the general parser: every string of up
/// to 4 characters over the characters numbers are made of, then 200,000 longer ones
/// drawn at random (fixed seed), in three locales.
#[test]
fn the_fast_number_parser_agrees_with_the_general_one() {
    const ALPHABET: &[u8] = b"0123456789.,- ()+";
    let no_grouping = Locale {
        thousands_separator: None,
        ..Locale::default()
    };
    let locales = [Locale::default(), de(), no_grouping];
    let fast_numbers = std::cell::Cell::new(0usize);
    let check = |s: &str| {
        for l in &locales {
            if let Some(fast) = parse_ascii_number(s, l) {
                let general = parse_number_text_general(s, l);
                match (&fast, &general) {
                    (Ok(a), Ok(b)) => {
                        assert!(
                            a == b && a.scale() == b.scale(),
                            "{s:?}: fast {a} vs general {b}"
                        );
                        fast_numbers.set(fast_numbers.get() + 1);
                    }
                    (Err(_), Err(_)) => {}
                    _ => panic!("{s:?}: fast {fast:?} vs general {general:?}"),
                }
            }
        }
    };
    let mut s = String::new();
    let mut checked = 0;
    for len in 0..=4u32 {
        for mut n in 0..ALPHABET.len().pow(len) {
            s.clear();
            for _ in 0..len {
                s.push(ALPHABET[n % ALPHABET.len()] as char);
                n /= ALPHABET.len();
            }
            check(&s);
            checked += 1;
        }
    }
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..200_000 {
        s.clear();
        let len = 5 + (next() % 40) as usize;
        for _ in 0..len {
            // Mostly digits and separators, the shapes real exports have.
            let r = next() % 100;
            let c = match r {
                0..=69 => b'0' + (next() % 10) as u8,
                _ => ALPHABET[10 + (next() % 7) as usize],
            };
            s.push(c as char);
        }
        check(&s);
        checked += 1;
    }
    // Well-formed numbers too (random text rarely is one): grouped or not, with or
    // without a fraction, in each sign style, up to 40 digits (past the fast path's 38).
    for _ in 0..50_000 {
        let (sep, dec) = [(',', '.'), ('.', ','), (' ', ',')][(next() % 3) as usize];
        let int_len = 1 + (next() % 30) as usize;
        let digits: Vec<char> = (0..int_len)
            .map(|_| (b'0' + (next() % 10) as u8) as char)
            .collect();
        let grouped = next() % 2 == 0;
        s.clear();
        for (i, c) in digits.iter().enumerate() {
            if grouped && i > 0 && (int_len - i).is_multiple_of(3) {
                s.push(sep);
            }
            s.push(*c);
        }
        if next() % 2 == 0 {
            s.push(dec);
            for _ in 0..(next() % 10) {
                s.push((b'0' + (next() % 10) as u8) as char);
            }
        }
        let number = std::mem::take(&mut s);
        s = match next() % 4 {
            0 => format!("-{number}"),
            1 => format!("{number}-"),
            2 => format!("({number})"),
            _ => number,
        };
        check(&s);
        checked += 1;
    }
    assert!(checked > 330_000);
    // The comparison is not vacuous: the fast path parsed a good share itself.
    assert!(fast_numbers.get() > 20_000, "{}", fast_numbers.get());
}

/// The cents fast path gives the text and decimal Display's text gives, for every float
/// class: integers, cents, tenths of cents, tiny and huge magnitudes, random bit patterns.
#[test]
fn the_cents_fast_path_is_display_text() {
    let en = Locale::default();
    let mut fast = 0;
    let mut check = |f: f64| {
        let s = format!("{f}");
        let display = s.strip_suffix(".0").map(str::to_owned).unwrap_or(s);
        assert_eq!(float_text(f), display, "{f:e}");
        let via_text = Decimal::from_str(&format!("{f}"))
            .or_else(|_| Decimal::from_scientific(&format!("{f:e}")));
        let got = decimal(&Cell::Float(f), &en);
        match (via_text, got) {
            (Ok(a), Ok(b)) => assert!(
                a == b && a.scale() == b.scale() && a.is_sign_negative() == b.is_sign_negative(),
                "{f:e}: {a} vs {b}"
            ),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("{f:e}: {a:?} vs {b:?}"),
        }
        if cents(f).is_some() {
            fast += 1;
        }
    };
    for f in [
        0.0,
        -0.0,
        0.1,
        1e15,
        1e16,
        1e17,
        1e21,
        1e22,
        1e-5,
        1e-7,
        5e-324,
        f64::MAX,
        f64::MIN_POSITIVE,
        123456789012345680000.0,
        0.30000000000000004,
    ] {
        check(f);
        check(-f);
    }
    for i in -100_000i64..100_000 {
        check(i as f64);
        check(i as f64 / 100.0);
        check(i as f64 / 1000.0);
        check(i as f64 * 1234.5678);
        check(i as f64 * 99_999_999.99);
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..300_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let f = f64::from_bits(seed);
        if f.is_finite() {
            check(f);
        }
    }
    assert!(fast > 300_000, "the fast path was taken {fast} times");
}

#[test]
fn floats_become_the_exact_decimal_excel_shows() {
    let en = Locale::default();
    let v = coerce(&Cell::Float(1234.56), ColumnType::Decimal, &en).unwrap();
    assert_eq!(v, Value::Decimal(d("1234.56")));
    let v = coerce(&Cell::Float(0.1 + 0.2), ColumnType::Decimal, &en).unwrap();
    assert_eq!(
        v,
        Value::Decimal(d("0.30000000000000004")),
        "no silent rounding either"
    );
    assert_eq!(
        coerce(&Cell::Float(400000.0), ColumnType::String, &en).unwrap(),
        Value::String("400000".into())
    );
    assert_eq!(
        coerce(&Cell::Float(42.0), ColumnType::Integer, &en).unwrap(),
        Value::Integer(42)
    );
    assert!(coerce(&Cell::Float(42.5), ColumnType::Integer, &en).is_err());
    let json = serde_json::to_string(&Value::Decimal(d("-1234.50"))).unwrap();
    assert_eq!(json, "\"-1234.50\"");
}

#[test]
fn excel_serials_and_text_dates() {
    let date = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
    let en = Locale::default();
    assert_eq!(
        coerce(&Cell::Serial(45657.0), ColumnType::Date, &en).unwrap(),
        Value::Date(date(2024, 12, 31))
    );
    assert_eq!(
        coerce(&Cell::Serial(1.0), ColumnType::Date, &en).unwrap(),
        Value::Date(date(1900, 1, 1))
    );
    assert_eq!(
        coerce(&Cell::Serial(61.0), ColumnType::Date, &en).unwrap(),
        Value::Date(date(1900, 3, 1))
    );
    assert!(coerce(&Cell::Serial(60.0), ColumnType::Date, &en).is_err());
    let noon = date(2024, 12, 31).and_hms_opt(12, 0, 0).unwrap();
    assert_eq!(
        coerce(&Cell::Serial(45657.5), ColumnType::Datetime, &en).unwrap(),
        Value::DateTime(noon)
    );
    assert_eq!(
        coerce(&Cell::Text("31.12.2025".into()), ColumnType::Date, &de()).unwrap(),
        Value::Date(date(2025, 12, 31))
    );
    assert_eq!(
        coerce(&Cell::Text("2025-12-31".into()), ColumnType::Date, &de()).unwrap(),
        Value::Date(date(2025, 12, 31))
    );
    assert!(coerce(&Cell::Text("31.02.2025".into()), ColumnType::Date, &de()).is_err());
    assert!(coerce(&Cell::Text("tomorrow".into()), ColumnType::Date, &de()).is_err());
    assert_eq!(
        coerce(
            &Cell::Iso("2025-01-02T03:04:05".into()),
            ColumnType::Datetime,
            &en
        )
        .unwrap(),
        Value::DateTime(date(2025, 1, 2).and_hms_opt(3, 4, 5).unwrap())
    );
}

#[test]
fn blanks_errors_and_booleans() {
    let en = Locale::default();
    assert_eq!(
        coerce(&Cell::Empty, ColumnType::Decimal, &en).unwrap(),
        Value::Null
    );
    assert_eq!(
        coerce(&Cell::Text("   ".into()), ColumnType::Date, &en).unwrap(),
        Value::Null
    );
    let e = coerce(&Cell::Error("#N/A".into()), ColumnType::Decimal, &en).unwrap_err();
    assert!(e.0.contains("#N/A"));
    assert_eq!(
        coerce(&Cell::Text("X".into()), ColumnType::Bool, &en).unwrap(),
        Value::Bool(true)
    );
    assert_eq!(
        coerce(&Cell::Int(0), ColumnType::Bool, &en).unwrap(),
        Value::Bool(false)
    );
    assert!(coerce(&Cell::Text("maybe".into()), ColumnType::Bool, &en).is_err());
    let e = coerce(&Cell::Bool(true), ColumnType::Decimal, &en).unwrap_err();
    assert!(e.0.contains("boolean"), "{}", e.0);
}

#[test]
fn headers_match_case_and_whitespace_insensitively() {
    assert_eq!(normalize_header("  Posting \n Date "), "posting date");
    assert_eq!(normalize_header("AMOUNT"), normalize_header("amount"));
}

#[test]
fn a_nul_in_text_is_stored_as_a_replacement_character() {
    let l = Locale::default();
    assert_eq!(
        coerce(&Cell::Text("Miete\0März".into()), ColumnType::String, &l),
        Ok(Value::String("Miete\u{FFFD}März".into()))
    );
    assert_eq!(
        coerce(&Cell::Text("plain".into()), ColumnType::String, &l),
        Ok(Value::String(std::borrow::Cow::Borrowed("plain")))
    );
}
