//! The one clock of retention decisions (nightly dated names, CVMFS gc):
//! the system's, unless `GRIDSHIP_NOW` sets it. Tests use it to age
//! builds; an operator can use it to see what a gc would do on a given day
//! (with `--dry-run`).

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

/// The compact UTC stamp of dated names: `20261202T020000Z` (a valid tag,
/// sorts by time).
pub fn compact_stamp(t: i64) -> Result<String> {
    Ok(crate::transform::apptainer::rfc3339_utc(t)?
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect())
}

/// Howard Hinnant's days_from_civil.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
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
            let r = crate::transform::apptainer::rfc3339_utc(t).unwrap();
            assert_eq!(parse_time(&r), Some(t), "{r}");
        }
        assert_eq!(parse_time("20261302T000000Z"), None);
        assert_eq!(parse_time("yesterday"), None);
    }
}
