//! What a scenario runs: named shell checks, who runs them, and what came back.

use std::fmt;
use std::time::Duration;

use thiserror::Error;

/// Why a check cannot be registered.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CheckError {
    #[error("check name {0:?} is not usable: use 1-64 characters from [A-Za-z0-9._-]")]
    BadName(String),
    #[error("check name {0:?} is registered twice in this scenario: give each check its own name")]
    Duplicate(String),
    #[error("check {0:?} has a zero timeout: give it the time its slowest honest run needs")]
    ZeroTimeout(String),
}

/// The identity a check's command runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAs {
    /// uid 0 (in the KVM test host; in direct mode only when the tests run as root).
    Root,
    /// The unprivileged user that owns /dev/kvm access: `paddock` (uid 1000, group kvm) in the test
    /// host; in direct mode the current user, or uid 1000 with /dev/kvm's group when running as root.
    User,
    /// An unprivileged user without access to /dev/kvm (uid 1001, no supplementary groups).
    UserWithoutKvm,
}

impl fmt::Display for RunAs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunAs::Root => "root",
            RunAs::User => "user",
            RunAs::UserWithoutKvm => "user-without-kvm",
        })
    }
}

/// One shell command of a scenario. It runs under `sh` with `paddock` and `paddock-bench` first on
/// PATH, `$GUEST` naming the directory of the default guest (`vmlinuz`, `vmlinux`,
/// `initramfs.cpio.gz`) and `$FILES` the directory of the scenario's data files
/// ([`super::Scenario::file`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub command: String,
    pub run_as: RunAs,
    pub timeout: Duration,
}

impl Check {
    pub fn new(
        name: &str,
        run_as: RunAs,
        timeout: Duration,
        command: &str,
    ) -> Result<Self, CheckError> {
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !name_ok {
            return Err(CheckError::BadName(name.to_string()));
        }
        if timeout.is_zero() {
            return Err(CheckError::ZeroTimeout(name.to_string()));
        }
        Ok(Check {
            name: name.to_string(),
            command: command.to_string(),
            run_as,
            timeout,
        })
    }

    /// The timeout in whole seconds, rounded up, as the scenario script enforces it.
    pub fn timeout_secs(&self) -> u64 {
        self.timeout.as_secs() + u64::from(self.timeout.subsec_nanos() > 0)
    }
}

/// What one check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub name: String,
    pub command: String,
    pub run_as: RunAs,
    /// Exit status of the command (128+N when killed by signal N; 137 when the timeout killed it).
    /// -1 when the check did not run (see `not_run`).
    pub status: i32,
    /// The scenario script killed the command because its timeout passed.
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    /// Run time measured where the command ran (L1's or the host's /proc/uptime, 10 ms steps).
    pub elapsed: Duration,
    /// Time between the begin and end markers as the host saw them arrive, when both were seen
    /// while following (not when a log was parsed after the fact).
    pub observed: Option<Duration>,
    /// Why the check could not run in this mode; never silently: the test sees status -1.
    pub not_run: Option<String>,
}

impl CheckResult {
    /// The last line of stderr that is not empty, trimmed (the "one line naming the problem").
    pub fn stderr_last_line(&self) -> &str {
        self.stderr
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
    }

    /// Lines of stderr that are not empty.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "check {} (as {}): status {}{}, {:.2} s",
            self.name,
            self.run_as,
            self.status,
            if self.timed_out { " (TIMED OUT)" } else { "" },
            self.elapsed.as_secs_f64()
        )?;
        if let Some(why) = &self.not_run {
            writeln!(f, "  NOT RUN: {why}")?;
        }
        writeln!(f, "  command: {}", self.command)?;
        writeln!(f, "  --- stdout ---")?;
        for l in self.stdout.lines() {
            writeln!(f, "  | {l}")?;
        }
        writeln!(f, "  --- stderr ---")?;
        for l in self.stderr.lines() {
            writeln!(f, "  | {l}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_restricted_to_marker_safe_characters() {
        let t = Duration::from_secs(1);
        assert!(Check::new("bzimage-1cpu.nproc_ok", RunAs::User, t, "true").is_ok());
        for bad in ["", "has space", "a|b", "x\ny", &"a".repeat(65)] {
            assert_eq!(
                Check::new(bad, RunAs::User, t, "true"),
                Err(CheckError::BadName(bad.to_string()))
            );
        }
        assert_eq!(
            Check::new("z", RunAs::Root, Duration::ZERO, "true"),
            Err(CheckError::ZeroTimeout("z".into()))
        );
        let c = Check::new("r", RunAs::Root, Duration::from_millis(1500), "true").unwrap();
        assert_eq!(c.timeout_secs(), 2);
    }
}
