//! Small shared helpers.

use std::path::Path;

/// Writes `bytes` to `path` through a sibling temp file and a rename, so a reader never sees a
/// half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS` (civil-from-days, proleptic Gregorian).
pub fn utc_now_string() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    utc_string(secs)
}

/// `secs` since the Unix epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn utc_string(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days→civil algorithm: eras of 400 years start on March 1st.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The commit this binary was built from (`git rev-parse --short HEAD` at build time, with
/// `-dirty` when the tree had changes), or `unknown` outside a git checkout.
pub fn build_commit() -> &'static str {
    env!("CADA_GIT_COMMIT")
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates_match_known_instants() {
        assert_eq!(super::utc_string(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc_string(951_782_400), "2000-02-29 00:00:00");
        // 2026-12-01 08:18:41 UTC
        assert_eq!(super::utc_string(1_796_113_121), "2026-12-01 08:18:41");
    }
}
