//! Go's formatting and parsing, as etcdctl (a Go program) uses them: output
//! must match etcdctl byte for byte, so strings are quoted as Go's `%q`
//! quotes them, numbers are parsed (and refused) with `strconv`'s messages,
//! durations read and printed as `time.Duration` does, and so on.

use std::fmt::Write as _;
use std::time::Duration;

/// Go's `strconv.Quote` (`%q` of a string): double quotes, Go escapes,
/// printable characters kept, invalid UTF-8 bytes as `\x..`.
pub fn quote(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            quote_char(&mut out, c, '"');
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out.push('"');
    out
}

fn quote_char(out: &mut String, c: char, quote: char) {
    match c {
        '\x07' => out.push_str("\\a"),
        '\x08' => out.push_str("\\b"),
        '\x0c' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\x0b' => out.push_str("\\v"),
        '\\' => out.push_str("\\\\"),
        c if c == quote => {
            out.push('\\');
            out.push(c);
        }
        c if is_print(c) => out.push(c),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if (c as u32) < 0x10000 => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\U{:08x}", c as u32);
        }
    }
}

/// An approximation of Go's `unicode.IsPrint`: letters, marks, numbers,
/// punctuation, symbols and the ASCII space. Controls, format characters,
/// separators other than U+0020, private use and surrogates are not.
pub fn is_print(c: char) -> bool {
    let u = c as u32;
    if u < 0x20 || (0x7f..0xa0).contains(&u) {
        return false;
    }
    if c == ' ' {
        return true;
    }
    if c.is_whitespace() {
        // U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000 ...
        return false;
    }
    !matches!(u,
        0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x180e | 0x200b..=0x200f | 0x202a..=0x202e
        | 0x2060..=0x206f | 0xfeff | 0xfff9..=0xfffb | 0xe000..=0xf8ff | 0xf0000..=0x10ffff
        | 0xfdd0..=0xfdef | 0xfffe | 0xffff)
}

/// Go's `%v` of a `[]string`: `[a b c]`.
pub fn string_slice(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// etcdctl's `--hex` form of bytes: `\x66\x6f\x6f`.
pub fn hex_escaped(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 4);
    for b in bytes {
        let _ = write!(out, "\\x{b:02x}");
    }
    out
}

/// Standard base64 with padding (Go's `encoding/json` form of `[]byte`).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextets = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
        for (i, s) in sextets.iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[*s as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Go's `encoding/json` string encoding (HTML-safe, as `json.Marshal`):
/// `"`, `\\`, controls, `<`, `>`, `&`, U+2028 and U+2029 escaped; invalid
/// UTF-8 becomes U+FFFD.
pub fn json_string(s: &str) -> String {
    json_string_with(s, true)
}

/// Like [`json_string`] without the HTML escapes (zap's log encoder).
pub fn json_string_plain(s: &str) -> String {
    json_string_with(s, false)
}

fn json_string_with(s: &str, html: bool) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' if html => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Which `strconv` function failed, for its error message.
#[derive(Clone, Copy)]
enum ParseFn {
    Int,
    Uint,
}

impl ParseFn {
    fn name(self) -> &'static str {
        match self {
            ParseFn::Int => "ParseInt",
            ParseFn::Uint => "ParseUint",
        }
    }
}

fn syntax_error(f: ParseFn, s: &str) -> String {
    format!("strconv.{}: parsing {}: invalid syntax", f.name(), quote(s.as_bytes()))
}

fn range_error(f: ParseFn, s: &str) -> String {
    format!("strconv.{}: parsing {}: value out of range", f.name(), quote(s.as_bytes()))
}

/// Go's `strconv.ParseUint(s, base, 64)`; base 0 means "from the prefix"
/// (`0x`, `0o`, `0b`, a leading `0`), with `_` separators allowed.
fn parse_uint_digits(s: &str, base: u32, f: ParseFn, original: &str) -> Result<u64, String> {
    if s.is_empty() {
        return Err(syntax_error(f, original));
    }
    let (digits, base, underscores) = if base == 0 {
        let lower = s.to_ascii_lowercase();
        if lower.len() >= 3 && lower.starts_with("0x") {
            (&s[2..], 16, true)
        } else if lower.len() >= 3 && lower.starts_with("0o") {
            (&s[2..], 8, true)
        } else if lower.len() >= 3 && lower.starts_with("0b") {
            (&s[2..], 2, true)
        } else if s.len() > 1 && s.starts_with('0') {
            (&s[1..], 8, true)
        } else {
            (s, 10, true)
        }
    } else {
        (s, base, false)
    };
    let mut value: u64 = 0;
    let mut overflow = false;
    let mut last_underscore = true;
    for c in digits.chars() {
        if c == '_' && underscores {
            if last_underscore {
                return Err(syntax_error(f, original));
            }
            last_underscore = true;
            continue;
        }
        last_underscore = false;
        let Some(d) = c.to_digit(base) else {
            return Err(syntax_error(f, original));
        };
        match value.checked_mul(u64::from(base)).and_then(|v| v.checked_add(u64::from(d))) {
            Some(v) => value = v,
            None => overflow = true,
        }
    }
    if last_underscore && digits.contains('_') {
        return Err(syntax_error(f, original));
    }
    if overflow {
        return Err(range_error(f, original));
    }
    Ok(value)
}

/// Go's `strconv.ParseInt(s, base, 64)` with its error message.
pub fn parse_int(s: &str, base: u32) -> Result<i64, String> {
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let magnitude = parse_uint_digits(rest, base, ParseFn::Int, s).map_err(|e| {
        // ParseUint's range error, re-worded for ParseInt.
        if e.ends_with("value out of range") { range_error(ParseFn::Int, s) } else { e }
    })?;
    if negative {
        if magnitude > 1 << 63 {
            return Err(range_error(ParseFn::Int, s));
        }
        Ok((magnitude as i64).wrapping_neg())
    } else {
        i64::try_from(magnitude).map_err(|_| range_error(ParseFn::Int, s))
    }
}

/// Go's `strconv.ParseUint(s, base, 64)` with its error message.
pub fn parse_uint(s: &str, base: u32) -> Result<u64, String> {
    parse_uint_digits(s, base, ParseFn::Uint, s)
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("strconv.ParseBool: parsing {}: invalid syntax", quote(s.as_bytes()))),
    }
}

/// Go's `time.ParseDuration`. Negative durations are refused here (no
/// etcdctl flag takes one meaningfully); they parse to zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = || format!("time: invalid duration {}", quote(s.as_bytes()));
    let mut rest = s;
    let mut negative = false;
    if let Some(r) = rest.strip_prefix('-') {
        negative = true;
        rest = r;
    } else if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let frac_len = r.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &r[..frac_len];
            rest = &r[frac_len..];
            if int_part.is_empty() && frac_part.is_empty() {
                return Err(invalid());
            }
        } else if int_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        if unit.is_empty() {
            return Err(format!("time: missing unit in duration {}", quote(s.as_bytes())));
        }
        let unit_ns: f64 = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    quote(unit.as_bytes()),
                    quote(s.as_bytes())
                ));
            }
        };
        let number: f64 = format!("{}.{}", if int_part.is_empty() { "0" } else { int_part }, frac_part)
            .trim_end_matches('.')
            .parse()
            .map_err(|_| invalid())?;
        total_ns += number * unit_ns;
    }
    if total_ns > 9.223_372_036_854_775e18 {
        return Err(invalid());
    }
    if negative {
        return Ok(Duration::ZERO);
    }
    Ok(Duration::from_nanos(total_ns.round() as u64))
}

/// Go's `time.Duration.String()`: `1.5s`, `2m0s`, `1.444798ms`, `0s`.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".to_string();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", fraction(ns, 1_000));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", fraction(ns, 1_000_000));
    }
    let hours = ns / 3_600_000_000_000;
    let minutes = (ns / 60_000_000_000) % 60;
    let seconds = fraction(ns % 60_000_000_000, 1_000_000_000);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// `value / unit` with the fraction's trailing zeros dropped (`1.5`, `2`).
fn fraction(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let rem = value % unit;
    if rem == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{rem:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// go-humanize's `Bytes` (SI units): `20 kB`, `1.2 MB`, `9 B`.
pub fn humanize_bytes(size: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if size < 10 {
        return format!("{size} B");
    }
    let size_f = size as f64;
    let exponent = (size_f.ln() / 1000f64.ln()).floor();
    let exponent_index = (exponent as usize).min(UNITS.len() - 1);
    let value = (size_f / 1000f64.powi(exponent_index as i32) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[exponent_index])
    } else {
        format!("{value:.0} {}", UNITS[exponent_index])
    }
}

/// Go's `%x` of a `uint64` right-aligned in 16 columns (`%16x`).
pub fn hex16(value: u64) -> String {
    format!("{value:>16x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_go() {
        assert_eq!(quote(b"k1"), r#""k1""#);
        assert_eq!(quote(b"a\"b\\c\n\t\x01"), r#""a\"b\\c\n\t\x01""#);
        assert_eq!(quote("ключ".as_bytes()), "\"ключ\"");
        assert_eq!(quote(b"\xff"), r#""\xff""#);
        assert_eq!(quote("\u{a0}".as_bytes()), r#""\u00a0""#);
    }

    #[test]
    fn parses_integers_like_strconv() {
        assert_eq!(parse_int("12", 10), Ok(12));
        assert_eq!(parse_int("-1", 10), Ok(-1));
        assert_eq!(parse_int("0x10", 0), Ok(16));
        assert_eq!(parse_int("010", 0), Ok(8));
        assert_eq!(parse_int("1f", 16), Ok(31));
        assert_eq!(parse_int("x", 10), Err(r#"strconv.ParseInt: parsing "x": invalid syntax"#.to_string()));
        assert_eq!(parse_int("", 10), Err(r#"strconv.ParseInt: parsing "": invalid syntax"#.to_string()));
        assert_eq!(
            parse_int("99999999999999999999", 10),
            Err(r#"strconv.ParseInt: parsing "99999999999999999999": value out of range"#.to_string())
        );
        assert_eq!(parse_int("-9223372036854775808", 10), Ok(i64::MIN));
        assert_eq!(parse_uint("-1", 16), Err(r#"strconv.ParseUint: parsing "-1": invalid syntax"#.to_string()));
        assert_eq!(parse_uint("58a88bf978398f80", 16), Ok(0x58a8_8bf9_7839_8f80));
    }

    #[test]
    fn durations_parse_and_print_like_go() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("xyz"), Err(r#"time: invalid duration "xyz""#.to_string()));
        assert_eq!(parse_duration("5"), Err(r#"time: missing unit in duration "5""#.to_string()));
        assert_eq!(parse_duration("5x"), Err(r#"time: unknown unit "x" in duration "5x""#.to_string()));
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_nanos(1_444_798)), "1.444798ms");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_duration(Duration::from_nanos(1500)), "1.5µs");
    }

    #[test]
    fn humanizes_bytes_like_go_humanize() {
        assert_eq!(humanize_bytes(20480), "20 kB");
        assert_eq!(humanize_bytes(9), "9 B");
        assert_eq!(humanize_bytes(1_234_567), "1.2 MB");
        assert_eq!(humanize_bytes(25_000), "25 kB");
    }

    #[test]
    fn base64_and_json_strings() {
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"k1"), "azE=");
        assert_eq!(base64(b"x"), "eA==");
        assert_eq!(json_string("a<b>&\"\n"), r#""a\u003cb\u003e\u0026\"\n""#);
        assert_eq!(json_string_plain("a<b"), r#""a<b""#);
    }
}
