//! Go's formatting and parsing of the values etcd's benchmark prints and
//! takes, so that our report reads byte for byte like etcd's: `%g` of a
//! float64, `time.Duration.String()`, `time.ParseDuration`, and
//! `go-humanize`'s `Bytes`.

use std::time::Duration;

/// How report numbers are printed: etcd's `%4.4f` by default, `%g` (the
/// shortest representation) with `--precise`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// `%4.4f`.
    Fixed4,
    /// `%g`.
    Shortest,
}

impl Precision {
    /// `value` formatted with this precision (etcd's `r.precision` verb).
    pub fn format(self, value: f64) -> String {
        match self {
            Precision::Fixed4 => format!("{value:4.4}"),
            Precision::Shortest => format_g(value),
        }
    }
}

/// Go's `fmt.Sprintf("%g", v)` (and `%v`) for a float64: the shortest
/// decimal that reads back as `v`, in `%e` form (`1.5e-05`, `1e+06`) when
/// the decimal exponent is below -4 or at least 6, else plain (`0.0123`).
pub fn format_g(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    // Rust's `{:e}` also prints the shortest round-tripping digits.
    let sci = format!("{:e}", v.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if v < 0.0 { "-" } else { "" };
    if !(-4..6).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{dot}e{exp_sign}{:02}", exp.abs());
    }
    // Position of the decimal point after the first digit count `point`.
    let point = exp + 1;
    let body = if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}", "0".repeat(point as usize - digits.len()))
    } else {
        let (int, frac) = digits.split_at(point as usize);
        format!("{int}.{frac}")
    };
    format!("{sign}{body}")
}

/// Go's `time.Duration.String()`: `0s`, `850ns`, `1.5µs`, `12.345ms`,
/// `2.5s`, `1m30s`, `2h0m0s`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", fraction(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", fraction(nanos, 1_000_000));
    }
    let total_secs = nanos / 1_000_000_000;
    let sub = nanos % 1_000_000_000;
    let (hours, minutes, secs) = (total_secs / 3600, (total_secs / 60) % 60, total_secs % 60);
    let secs = fraction(secs * 1_000_000_000 + sub, 1_000_000_000);
    match (hours, minutes) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

/// `value / unit` with the remainder as a decimal fraction without
/// trailing zeros, as Go prints durations.
fn fraction(value: u128, unit: u128) -> String {
    let (int, rem) = (value / unit, value % unit);
    if rem == 0 {
        return int.to_string();
    }
    let width = unit.ilog10() as usize;
    let frac = format!("{rem:0width$}");
    format!("{int}.{}", frac.trim_end_matches('0'))
}

/// Go's `time.ParseDuration`: a sequence of decimal numbers with units
/// (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), e.g. `300ms`, `1.5h`, `2h45m`;
/// a bare `0` is zero. Negative durations are refused (no flag here takes
/// one).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?} (examples: 500ms, 5s, 1m30s)");
    let s = text.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if number_len == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += number * nanos_per_unit;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(Duration::from_nanos(total as u64))
}

/// `go-humanize`'s `Bytes`: SI units (`82 B`, `1.2 MB`, `25 MB`).
pub fn humanize_bytes(n: u64) -> String {
    const SIZES: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let e = ((n as f64).ln() / 1000f64.ln()).floor();
    let suffix = SIZES[(e as usize).min(SIZES.len() - 1)];
    let value = ((n as f64) / 1000f64.powf(e) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 { format!("{value:.1} {suffix}") } else { format!("{value:.0} {suffix}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g_matches_go() {
        // Expected values are Go's fmt.Sprintf("%g", v).
        for (v, want) in [
            (0.0123456789, "0.0123456789"),
            (8089.97, "8089.97"),
            (0.0001, "0.0001"),
            (0.00001234, "1.234e-05"),
            (1e6, "1e+06"),
            (123456.7, "123456.7"),
            (1234567.0, "1.234567e+06"),
            (10.0, "10"),
            (99.9, "99.9"),
            (100.0, "100"),
            (-2.5, "-2.5"),
            (0.0, "0"),
        ] {
            assert_eq!(format_g(v), want, "{v}");
        }
    }

    #[test]
    fn fixed_matches_go() {
        assert_eq!(Precision::Fixed4.format(0.0012345), "0.0012");
        assert_eq!(Precision::Fixed4.format(8089.97), "8089.9700");
    }

    #[test]
    fn durations_match_go() {
        for (d, want) in [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(850), "850ns"),
            (Duration::from_nanos(1500), "1.5µs"),
            (Duration::from_micros(12_345), "12.345ms"),
            (Duration::from_millis(2500), "2.5s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(7200), "2h0m0s"),
            (Duration::from_millis(3_723_500), "1h2m3.5s"),
        ] {
            assert_eq!(format_duration(d), want);
        }
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2us"), Ok(Duration::from_micros(2)));
        for bad in ["", "5", "s", "-1s", "1x", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn humanizes_like_go() {
        assert_eq!(humanize_bytes(5), "5 B");
        assert_eq!(humanize_bytes(82), "82 B");
        assert_eq!(humanize_bytes(1_234), "1.2 kB");
        assert_eq!(humanize_bytes(25_000_000), "25 MB");
    }
}
