//! Where a run's logs live: `target/testhost/logs/<scenario>-<UTC time>/`, removed after a run whose
//! report is dropped without a panic, kept (and their path printed) otherwise.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// `YYYYmmdd-HHMMSS` in UTC for `secs` since the epoch.
pub fn utc_stamp(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let tod = secs % 86_400;
    // Days since 1970-01-01 to a civil date (proleptic Gregorian), by 400-year eras.
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
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        tod / 3600,
        tod / 60 % 60,
        tod % 60
    )
}

/// A run's log directory.
#[derive(Debug)]
pub struct LogDir {
    pub path: PathBuf,
    keep: bool,
}

impl LogDir {
    /// Creates a fresh directory for `scenario` under `base`.
    pub fn create(base: &Path, scenario: &str) -> io::Result<Self> {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let stamp = utc_stamp(secs);
        let mut path = base.join(format!("{scenario}-{stamp}"));
        let mut n = 1;
        while path.exists() {
            n += 1;
            path = base.join(format!("{scenario}-{stamp}-{n}"));
        }
        fs::create_dir_all(&path)?;
        let keep = std::env::var("PADDOCK_KEEP_LOGS").as_deref() == Ok("1");
        Ok(LogDir { path, keep })
    }

    /// Keeps the directory whatever happens (a failed run).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    pub fn attempt(&self, n: u32) -> io::Result<PathBuf> {
        let p = self.path.join(format!("attempt-{n}"));
        fs::create_dir_all(&p)?;
        Ok(p)
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        if self.keep || std::thread::panicking() {
            eprintln!("testhost: logs kept in {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_civil_utc() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
        assert_eq!(utc_stamp(1_764_190_861), "20251126-210101");
    }
}
