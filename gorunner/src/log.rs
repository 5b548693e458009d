//! go-runner's own messages, in the shape of Go's standard `log` package
//! (`YYYY/MM/DD HH:MM:SS message`) on stderr, never in the log file.
//!
//! The timestamp is UTC: Go prints local time, which in a container without
//! a time zone database (distroless, upstream's image) is UTC as well.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes one message to stderr with the timestamp prefix.
pub fn print(message: &str) {
    // The wall clock printed, not a decision: nothing to inject.
    #[allow(clippy::disallowed_methods)]
    let now = SystemTime::now();
    let line = format!("{} {message}\n", timestamp(now));
    // A closed stderr must not stop the child from being run or reaped.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `2006/01/02 15:04:05` in UTC.
pub fn timestamp(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}/{m:02}/{d:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_in_gos_layout() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(timestamp(at(0)), "1970/01/01 00:00:00");
        assert_eq!(timestamp(at(951_782_400)), "2000/02/29 00:00:00");
        assert_eq!(timestamp(at(1_776_099_553)), "2026/04/13 16:59:13");
    }
}
