//! The one clock of retention decisions (nightly dated names, CVMFS gc):
//! the system's, unless `GRIDSHIP_NOW` sets it. Tests use it to age
//! builds; an operator can use it to see what a gc would do on a given day
//! (with `--dry-run`).
//!
//! Also the one conversion between Unix seconds and UTC calendar time
//! (proleptic Gregorian, Howard Hinnant's algorithms): RFC 3339 written
//! and read, the compact stamps of dated names, and the [`Civil`] fields
//! other formats (Apptainer's labels, X.509 validity) are written from.

use crate::{Error, Result};

/// Unix seconds now, or `GRIDSHIP_NOW` (Unix seconds, or RFC 3339 UTC
/// such as `2026-12-02T02:00:00Z`).
pub fn now() -> Result<i64> {
    match std::env::var("GRIDSHIP_NOW") {
        Ok(v) if !v.trim().is_empty() => parse_time(v.trim()).ok_or_else(|| Error::BadInput {
            input: format!("GRIDSHIP_NOW={v}"),
            place: String::new(),
            reason: "not a time".into(),
            hint: Some("give Unix seconds or RFC 3339 UTC, e.g. 2026-12-02T02:00:00Z".into()),
        }),
        _ => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)),
    }
}

/// Unix seconds, `YYYY-MM-DDTHH:MM:SSZ` or the compact form of dated names
/// (`YYYYMMDDTHHMMSSZ`).
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(t) = s.parse::<i64>() {
        return Some(t);
    }
    let compact: String = s.chars().filter(|c| *c != '-' && *c != ':').collect();
    let b = compact.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = compact.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, sec) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec)
}

/// An RFC 3339 time with any offset and fraction
/// (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, as image configs' `created`)
/// as Unix seconds; the fraction is dropped.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" | "z" => 0,
        r if r.len() == 6 => {
            let sign = if r.starts_with('-') { -1 } else { 1 };
            sign * (r[1..3].parse::<i64>().ok()? * 3600 + r[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    Some(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - offset)
}

/// The compact UTC stamp of dated names: `20261202T020000Z` (a valid tag,
/// sorts by time).
pub fn compact_stamp(t: i64) -> Result<String> {
    Ok(rfc3339_utc(t)?
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect())
}

/// A Unix time as RFC 3339 UTC (`2026-11-22T04:00:00Z`).
pub fn rfc3339_utc(t: i64) -> Result<String> {
    Ok(Civil::from_unix(t)?.rfc3339())
}

/// A Unix time as Go's `time.Time` in UTC shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// 0 = Sunday, as Go's time.Weekday.
    pub weekday: u32,
}

impl Civil {
    /// Years 0000-9999 only: what RFC 3339 can write.
    pub fn from_unix(t: i64) -> Result<Civil> {
        if !(-62_167_219_200..=253_402_300_799).contains(&t) {
            return Err(Error::bad_input(
                "build time",
                format!("{t} (Unix seconds) is outside the years 0000-9999"),
            ));
        }
        Ok(Civil::of(t))
    }

    /// Any Unix time (no range check; for formats that bound it themselves).
    pub fn of(t: i64) -> Civil {
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400) as u32;
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: secs / 3600,
            minute: secs / 60 % 60,
            second: secs % 60,
            // 1970-01-01 was a Thursday.
            weekday: (days + 4).rem_euclid(7) as u32,
        }
    }

    /// `time.RFC3339` of a UTC time.
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// Howard Hinnant's days_from_civil.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        for t in [0, 951_782_400, 1_764_640_800, 1_798_761_599] {
            let s = compact_stamp(t).unwrap();
            assert_eq!(parse_time(&s), Some(t), "{s}");
            let r = rfc3339_utc(t).unwrap();
            assert_eq!(parse_time(&r), Some(t), "{r}");
        }
        assert_eq!(parse_time("20261302T000000Z"), None);
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn civil_time_like_go() {
        let t = Civil::from_unix(0).unwrap();
        assert_eq!(t.rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!((t.weekday, t.day, t.month, t.year), (4, 1, 1, 1970));
        let t = Civil::from_unix(1_709_210_096).unwrap();
        assert_eq!(t.rfc3339(), "2024-02-29T12:34:56Z");
        let t = Civil::from_unix(-1).unwrap();
        assert_eq!(t.rfc3339(), "1969-12-31T23:59:59Z");
        assert_eq!(t.weekday, 3);
        // Go's zero time, and the last second Go writes with four digits.
        let t = Civil::from_unix(-62_135_596_800).unwrap();
        assert_eq!((t.weekday, t.year), (1, 1));
        assert!(Civil::from_unix(253_402_300_800).is_err());
        // 2050 and later: X.509 writes them too.
        assert_eq!(Civil::of(2_556_057_600).rfc3339(), "2050-12-31T00:00:00Z");
    }

    #[test]
    fn created_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-01-01T00:00:00Z"), Some(1704067200));
        assert_eq!(
            parse_rfc3339("2024-01-01T01:00:00.123+01:00"),
            Some(1704067200)
        );
        assert_eq!(parse_rfc3339("garbage"), None);
    }
}
