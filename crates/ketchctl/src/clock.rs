//! Wall-clock timestamps in the forms etcdctl's loggers print (local time).

use std::time::{SystemTime, UNIX_EPOCH};

/// Local broken-down time of now, with the microseconds and the UTC offset
/// in seconds.
struct Local {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    micros: u32,
    offset_seconds: i64,
}

fn now_local() -> Local {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(now.as_secs()).unwrap_or(0);
    let micros = now.subsec_micros();
    // SAFETY: `localtime_r` only writes the `tm` we own; `time_t` is i64 here.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let t: libc::time_t = secs as libc::time_t;
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return from_unix_utc(secs, micros);
    }
    Local {
        year: i64::from(tm.tm_year) + 1900,
        month: (tm.tm_mon + 1) as u32,
        day: tm.tm_mday as u32,
        hour: tm.tm_hour as u32,
        minute: tm.tm_min as u32,
        second: tm.tm_sec as u32,
        micros,
        offset_seconds: tm.tm_gmtoff,
    }
}

/// UTC civil time of a Unix timestamp (Howard Hinnant's `civil_from_days`).
fn from_unix_utc(secs: i64, micros: u32) -> Local {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Local {
        year,
        month,
        day,
        hour: (rem / 3600) as u32,
        minute: ((rem / 60) % 60) as u32,
        second: (rem % 60) as u32,
        micros,
        offset_seconds: 0,
    }
}

/// zap's ISO 8601 form: `2026-11-27T22:35:48.065Z` (or `+0100` off UTC).
pub fn iso8601_utc_millis() -> String {
    let t = now_local();
    let zone = if t.offset_seconds == 0 {
        "Z".to_string()
    } else {
        let sign = if t.offset_seconds < 0 { '-' } else { '+' };
        let off = t.offset_seconds.abs();
        format!("{sign}{:02}{:02}", off / 3600, (off / 60) % 60)
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}{zone}",
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
        t.micros / 1000
    )
}

/// capnslog's form: `2026-11-27 22:35:32.096646`.
pub fn capnslog() -> String {
    let t = now_local();
    format!("{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}", t.year, t.month, t.day, t.hour, t.minute, t.second, t.micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_from_unix_time() {
        let t = from_unix_utc(1_669_588_532, 96_646);
        assert_eq!((t.year, t.month, t.day, t.hour, t.minute, t.second), (2022, 11, 27, 22, 35, 32));
        let t = from_unix_utc(0, 0);
        assert_eq!((t.year, t.month, t.day), (1970, 1, 1));
    }
}
