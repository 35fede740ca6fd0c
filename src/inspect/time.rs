//! Human-readable times for operators: every `at_ms` (milliseconds since the
//! Unix epoch, UTC) that `wal-inspect` prints gets an RFC 3339 time and an
//! age next to it. The JSON keeps `at_ms` as it is and gains `at` and `age`
//! fields; nothing is renamed.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Milliseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `ms` since the epoch as an RFC 3339 UTC time with milliseconds,
/// e.g. `2026-12-02T04:36:10.123Z`.
///
/// ```
/// use agentwal::inspect::time::rfc3339;
/// assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
/// assert_eq!(rfc3339(1_764_650_170_123), "2025-12-02T04:36:10.123Z");
/// ```
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian;
/// Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// How long before `now_ms` the time `ms` was, in at most two units:
/// `45s ago`, `3m 12s ago`, `2h 5m ago`, `3d 4h ago`; `in the future` when
/// the recorded clock is ahead of this one.
///
/// ```
/// use agentwal::inspect::time::age;
/// assert_eq!(age(1_000, 1_000), "0s ago");
/// assert_eq!(age(0, 192_000), "3m 12s ago");
/// assert_eq!(age(0, 90_000_000), "1d 1h ago");
/// assert_eq!(age(5_000, 1_000), "4s in the future (clock skew?)");
/// ```
pub fn age(ms: u64, now_ms: u64) -> String {
    if ms > now_ms {
        return format!("{} in the future (clock skew?)", span((ms - now_ms) / 1000));
    }
    format!("{} ago", span((now_ms - ms) / 1000))
}

fn span(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `rfc3339 (age)`, the form the text tables print.
pub fn human(ms: u64, now_ms: u64) -> String {
    format!("{} ({})", rfc3339(ms), age(ms, now_ms))
}

/// Adds `at` (RFC 3339) and `age` next to every `at_ms` in `v`, and
/// `<x>_at` / `<x>_age` next to every `<x>_at_ms`, recursively. The
/// original fields are left untouched.
pub fn annotate(v: &mut Value, now_ms: u64) {
    match v {
        Value::Object(map) => {
            let stamps: Vec<(String, u64)> = map
                .iter()
                .filter_map(|(k, val)| {
                    let prefix = k.strip_suffix("at_ms")?;
                    (prefix.is_empty() || prefix.ends_with('_'))
                        .then_some(())
                        .and_then(|()| val.as_u64())
                        .map(|ms| (prefix.to_string(), ms))
                })
                .collect();
            for val in map.values_mut() {
                annotate(val, now_ms);
            }
            for (prefix, ms) in stamps {
                let at = format!("{prefix}at");
                let age_key = format!("{prefix}age");
                if !map.contains_key(&at) {
                    map.insert(at, Value::String(rfc3339(ms)));
                }
                if !map.contains_key(&age_key) {
                    map.insert(age_key, Value::String(age(ms, now_ms)));
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                annotate(item, now_ms);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_cross_leap_years_and_centuries() {
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
        assert_eq!(rfc3339(1_709_164_800_000), "2024-02-29T00:00:00.000Z");
    }

    #[test]
    fn annotate_adds_next_to_every_timestamp_and_renames_nothing() {
        let mut v = serde_json::json!({
            "type": "commit", "at_ms": 0,
            "nested": [{"enqueued_at_ms": 60_000, "format_ms": 5}],
            "at": "kept"
        });
        annotate(&mut v, 120_000);
        assert_eq!(v["at_ms"], 0);
        assert_eq!(v["at"], "kept", "an existing field is never overwritten");
        assert_eq!(v["age"], "2m 0s ago");
        assert_eq!(v["nested"][0]["enqueued_at"], "1970-01-01T00:01:00.000Z");
        assert_eq!(v["nested"][0]["enqueued_age"], "1m 0s ago");
        assert!(v["nested"][0].get("format").is_none(), "only *at_ms fields");
    }
}
