//! KVM test host harness: runs named shell checks against real Linux guests, either inside an L1
//! Linux booted under QEMU TCG (where this host's /dev/kvm cannot boot Linux) or directly on a
//! hardware-backed /dev/kvm. All checks of a [`Scenario`] share one L1 boot. See docs/testing.md.
//!
//! ```no_run
//! use std::time::Duration;
//! use paddock_tests::testhost::{RunAs, Scenario};
//! let mut s = Scenario::new("demo");
//! s.check("nproc", RunAs::User, Duration::from_secs(300),
//!         r#"paddock run --kernel "$GUEST/vmlinuz" --initramfs "$GUEST/initramfs.cpio.gz" --cpus 2 --memory 512M -- nproc"#);
//! if let Some(report) = s.run().expect("scenario") {
//!     let r = report.check("nproc");
//!     assert_eq!(r.status, 0, "{r}");
//! }
//! ```

pub mod check;
pub mod follow;
pub mod image;
pub mod logs;
pub mod markers;
pub mod mode;
pub mod qemu;
pub mod script;
pub mod verdict;

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

pub use check::{Check, CheckError, CheckResult, RunAs};
pub use follow::Limits;
pub use markers::L1Ready;
pub use mode::{Choice, Mode, ModeError};
pub use verdict::Verdict;

use follow::{ChildGuard, Ending, Followed};
use image::{ImageError, PayloadSpec};
use logs::LogDir;
use qemu::{L1Boot, QemuError};
use script::UserSwitch;

#[derive(Debug, Error)]
pub enum TestHostError {
    #[error("scenario {scenario}: {source}")]
    Check {
        scenario: String,
        #[source]
        source: CheckError,
    },
    #[error(transparent)]
    Mode(#[from] ModeError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("L1 STALL, not a Paddock failure: the KVM test host stalled or its kernel panicked on {attempts} fresh boots ({why}); these are the known failures of L1 under QEMU TCG: rerun the test. Logs: {logs}")]
    L1Stalled {
        attempts: u32,
        why: String,
        logs: PathBuf,
    },
    #[error("scenario {scenario} ({mode} mode) failed: {why}\n{context}Logs: {logs}")]
    Run {
        scenario: String,
        mode: Mode,
        why: String,
        context: String,
        logs: PathBuf,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TestHostError + 'a {
    move |source| TestHostError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A set of named checks that run in order, in one L1 boot (or directly on this host).
#[derive(Debug, Clone)]
pub struct Scenario {
    name: String,
    checks: Vec<Check>,
    bad_check: Option<CheckError>,
    limits: Limits,
    paddock: Option<PathBuf>,
    paddock_bench: Option<PathBuf>,
    extra_binaries: Vec<PathBuf>,
    extra_files: Vec<PathBuf>,
    l1_cpus: u32,
    l1_memory_mib: u32,
    /// cpio archives added to L1's initramfs after the base (e.g. the QEMU layer for peers).
    layers: Vec<PathBuf>,
}

impl Scenario {
    /// `name` names the log directory; use the test's name.
    pub fn new(name: &str) -> Self {
        Scenario {
            name: name.to_string(),
            checks: Vec::new(),
            bad_check: None,
            limits: Limits::default(),
            paddock: None,
            paddock_bench: None,
            extra_binaries: Vec::new(),
            extra_files: Vec::new(),
            l1_cpus: 2,
            l1_memory_mib: 4096,
            layers: Vec::new(),
        }
    }

    /// Adds a cpio archive to L1's initramfs, after the base and before the payload (for example
    /// resources/testhost/build-qemu-layer.sh's QEMU for benchmark peers). Not used when the
    /// scenario runs directly on a hardware-backed /dev/kvm.
    pub fn extra_layer(&mut self, cpio: &Path) -> &mut Self {
        self.layers.push(cpio.to_path_buf());
        self
    }

    /// Registers a check. A bad name, a duplicate or a zero timeout is reported by [`Scenario::run`].
    pub fn check(
        &mut self,
        name: &str,
        run_as: RunAs,
        timeout: Duration,
        command: &str,
    ) -> &mut Self {
        let res = Check::new(name, run_as, timeout, command).and_then(|c| {
            if self.checks.iter().any(|o| o.name == c.name) {
                Err(CheckError::Duplicate(c.name))
            } else {
                Ok(c)
            }
        });
        match res {
            Ok(c) => self.checks.push(c),
            Err(e) => {
                self.bad_check.get_or_insert(e);
            }
        }
        self
    }

    /// [`Scenario::check`] as the unprivileged user with /dev/kvm access.
    pub fn check_as_user(&mut self, name: &str, timeout: Duration, command: &str) -> &mut Self {
        self.check(name, RunAs::User, timeout, command)
    }

    /// [`Scenario::check`] as root.
    pub fn check_as_root(&mut self, name: &str, timeout: Duration, command: &str) -> &mut Self {
        self.check(name, RunAs::Root, timeout, command)
    }

    /// Replaces the default deadlines.
    pub fn limits(&mut self, limits: Limits) -> &mut Self {
        self.limits = limits;
        self
    }

    /// The `paddock` binary to test (default: `workspace::paddock_bin()`).
    pub fn paddock_bin(&mut self, path: &Path) -> &mut Self {
        self.paddock = Some(path.to_path_buf());
        self
    }

    /// The `paddock-bench` binary (default: next to `paddock`).
    pub fn paddock_bench_bin(&mut self, path: &Path) -> &mut Self {
        self.paddock_bench = Some(path.to_path_buf());
        self
    }

    /// Another program the checks run (e.g. virtiofsd): on PATH beside `paddock`, with the shared
    /// libraries it needs that L1 lacks.
    pub fn binary(&mut self, path: &Path) -> &mut Self {
        self.extra_binaries.push(path.to_path_buf());
        self
    }

    /// A data file the checks read (a tarball, ...): in `$FILES` under its own name.
    pub fn file(&mut self, path: &Path) -> &mut Self {
        self.extra_files.push(path.to_path_buf());
        self
    }

    /// L1's vCPUs and memory (default 2 and 4096 MiB).
    pub fn l1_size(&mut self, cpus: u32, memory_mib: u32) -> &mut Self {
        self.l1_cpus = cpus;
        self.l1_memory_mib = memory_mib;
        self
    }

    /// Runs every check. `Ok(None)`: no mode is possible and PADDOCK_SKIP_LINUX_TESTS=1 (the reason
    /// is printed). Errors name what failed and where the logs are; an L1 stall is its own error.
    pub fn run(&self) -> Result<Option<Report>, TestHostError> {
        if let Some(e) = &self.bad_check {
            return Err(TestHostError::Check {
                scenario: self.name.clone(),
                source: e.clone(),
            });
        }
        let (mode, why) = match mode::choose(&mode::HostFacts::gather())? {
            Choice::Skip { why } => {
                eprintln!(
                    "testhost: SKIPPED scenario {} (PADDOCK_SKIP_LINUX_TESTS=1): {why}",
                    self.name
                );
                return Ok(None);
            }
            Choice::Run { mode, why } => (mode, why),
        };
        eprintln!("testhost: scenario {}: {mode} mode: {why}", self.name);
        let repo = crate::workspace::root();
        let work = repo.join("target/testhost");
        let mut logs = LogDir::create(&work.join("logs"), &self.name)
            .map_err(io_err("cannot create", &work))?;
        let res = self.run_in(mode, &why, &repo, &work, &logs);
        if res.is_err() {
            logs.keep();
        }
        let mut report = res?;
        report.logs = Some(logs);
        Ok(Some(report))
    }

    fn paddock_bins(&self) -> (PathBuf, PathBuf) {
        let paddock = self
            .paddock
            .clone()
            .unwrap_or_else(crate::workspace::paddock_bin);
        let bench = self
            .paddock_bench
            .clone()
            .unwrap_or_else(|| paddock.with_file_name("paddock-bench"));
        (paddock, bench)
    }

    fn payload(
        &self,
        repo: &Path,
        work: &Path,
        switch: &UserSwitch,
    ) -> Result<PayloadSpec, TestHostError> {
        let guest_dir = image::guest(repo, work)?;
        let (paddock, paddock_bench) = self.paddock_bins();
        let mut files = vec![(
            "run.sh".to_string(),
            script::run_script(&self.name, &self.checks, switch),
        )];
        for c in &self.checks {
            files.push((
                format!("checks/{}", script::check_file_name(c)),
                script::check_file(c),
            ));
        }
        Ok(PayloadSpec {
            paddock,
            paddock_bench,
            guest_dir,
            scenario_files: files,
            extra_binaries: self.extra_binaries.clone(),
            extra_libs: Vec::new(),
            extra_files: self.extra_files.clone(),
        })
    }

    fn run_in(
        &self,
        mode: Mode,
        why: &str,
        repo: &Path,
        work: &Path,
        logs: &LogDir,
    ) -> Result<Report, TestHostError> {
        let started = Instant::now();
        let switch = match mode {
            Mode::TestHost => UserSwitch::test_host(),
            Mode::Direct => direct_switch(),
        };
        let spec = self.payload(repo, work, &switch)?;
        // Keep the generated scenario with the logs: it is what a human reruns by hand.
        let saved = logs.path.join("scenario");
        for (name, text) in &spec.scenario_files {
            let p = saved.join(name);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
            }
            fs::write(&p, text).map_err(io_err("cannot write", &p))?;
        }
        let mut report = Report {
            scenario: self.name.clone(),
            mode,
            mode_reason: why.to_string(),
            l1: None,
            l1_ready_after: None,
            l1_build: None,
            attempts: 0,
            results: Vec::new(),
            total: Duration::ZERO,
            logs: None,
        };
        let followed = match mode {
            Mode::Direct => {
                report.attempts = 1;
                self.run_direct(&spec, logs)?
            }
            Mode::TestHost => self.run_test_host(&spec, repo, work, logs, &mut report)?,
        };
        self.collect(followed, mode, logs, &mut report)?;
        report.total = started.elapsed();
        eprint!("{}", report.timings());
        Ok(report)
    }

    fn run_direct(&self, spec: &PayloadSpec, logs: &LogDir) -> Result<Followed, TestHostError> {
        // Under the system temp dir so that uid 1000 can traverse to it when the tests run as root.
        let stage = tempfile::Builder::new()
            .prefix("paddock-direct-")
            .tempdir()
            .map_err(io_err(
                "cannot create a staging directory in",
                &std::env::temp_dir(),
            ))?;
        image::stage(spec, stage.path())?;
        let attempt = logs
            .attempt(1)
            .map_err(io_err("cannot create", &logs.path))?;
        let results = attempt.join("results.log");
        let out = fs::File::create(&results).map_err(io_err("cannot create", &results))?;
        let err = out.try_clone().map_err(io_err("cannot reopen", &results))?;
        let child = Command::new("sh")
            .arg(stage.path().join("scenario/run.sh"))
            .env("PADDOCK_ROOT", stage.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io_err(
                "cannot run sh for",
                &stage.path().join("scenario/run.sh"),
            ))?;
        let mut guard = ChildGuard::new(child, "the scenario script");
        Ok(follow::follow(
            &mut guard,
            &results,
            None,
            &self.checks,
            &self.limits,
            false,
        ))
    }

    fn run_test_host(
        &self,
        spec: &PayloadSpec,
        repo: &Path,
        work: &Path,
        logs: &LogDir,
        report: &mut Report,
    ) -> Result<Followed, TestHostError> {
        let base = image::l1_base(repo, work)?;
        report.l1_build = Some(base.build_time);
        let present = image::libraries_in(&base.cpio)?;
        let mut spec = spec.clone();
        let mut binaries = vec![spec.paddock.as_path(), spec.paddock_bench.as_path()];
        binaries.extend(spec.extra_binaries.iter().map(PathBuf::as_path));
        spec.extra_libs = image::missing_libraries(&binaries, &present)?;
        if !spec.extra_libs.is_empty() {
            eprintln!(
                "testhost: L1 lacks {:?}; shipping them in /opt/paddock/lib",
                spec.extra_libs
            );
        }
        let spec = &spec;
        let tmp = tempfile::Builder::new()
            .prefix("boot-")
            .tempdir_in(work)
            .map_err(io_err("cannot create a directory in", work))?;
        let stage = tmp.path().join("payload");
        fs::create_dir(&stage).map_err(io_err("cannot create", &stage))?;
        image::stage(spec, &stage)?;
        let payload = tmp.path().join("payload.cpio");
        image::pack(&stage, &payload)?;
        let initrd = tmp.path().join("initrd.cpio");
        let mut parts: Vec<&Path> = vec![&base.cpio];
        parts.extend(self.layers.iter().map(PathBuf::as_path));
        parts.push(&payload);
        image::concat(&parts, &initrd)?;
        let qemu = mode::find_on_path("qemu-system-x86_64")
            .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
        let retried = boot_with_one_retry(|attempt| -> Result<Followed, TestHostError> {
            report.attempts = attempt;
            let dir = logs
                .attempt(attempt)
                .map_err(io_err("cannot create", &logs.path))?;
            let boot = L1Boot {
                qemu: qemu.clone(),
                kernel: base.vmlinuz.clone(),
                initrd: initrd.clone(),
                cpus: self.l1_cpus,
                memory_mib: self.l1_memory_mib,
                console_log: dir.join("console.log"),
                results_log: dir.join("results.log"),
                qemu_log: dir.join("qemu.log"),
            };
            // The logs must exist before QEMU opens them so that a stale file is never followed.
            for p in [&boot.console_log, &boot.results_log] {
                fs::write(p, b"").map_err(io_err("cannot create", p))?;
            }
            let mut guard = ChildGuard::new(boot.spawn()?, "QEMU (the KVM test host)");
            let followed = follow::follow(
                &mut guard,
                &boot.results_log,
                Some(&boot.console_log),
                &self.checks,
                &self.limits,
                true,
            );
            if let Ending::Stalled { why } = &followed.ending {
                eprintln!(
                    "testhost: L1 stall on attempt {attempt} ({why}); logs in {}",
                    dir.display()
                );
            }
            Ok(followed)
        })?;
        match retried {
            Retried::Done(followed) => Ok(*followed),
            Retried::Stalled(reasons) => Err(TestHostError::L1Stalled {
                attempts: reasons.len() as u32,
                why: reasons.join("; then "),
                logs: logs.path.clone(),
            }),
        }
    }

    fn collect(
        &self,
        followed: Followed,
        mode: Mode,
        logs: &LogDir,
        report: &mut Report,
    ) -> Result<(), TestHostError> {
        let p = &followed.progress;
        if let Some((ready, at)) = &p.l1_ready {
            report.l1 = Some(ready.clone());
            report.l1_ready_after = Some(at.saturating_duration_since(followed.started));
        }
        let fail = |why: String| {
            let mut context = String::new();
            if let Some((name, _)) = &p.running {
                let _ = writeln!(context, "running check: {name}");
            }
            if !followed.console_tail.is_empty() {
                let _ = writeln!(context, "last L1 console lines:");
                for l in &followed.console_tail {
                    let _ = writeln!(context, "  {}", l.trim_end_matches('\r'));
                }
            }
            TestHostError::Run {
                scenario: self.name.clone(),
                mode,
                why,
                context,
                logs: logs.path.clone(),
            }
        };
        match &followed.ending {
            Ending::Completed => {}
            Ending::Stalled { why } | Ending::Failed { why } => return Err(fail(why.clone())),
        }
        if let Some(r) = &report.l1 {
            if !r.kvm {
                return Err(fail("L1 booted without a usable /dev/kvm (kvm=no): kvm-amd did not load; QEMU must run with -cpu max (SVM)".into()));
            }
        }
        if !p.scenario_errors.is_empty() {
            return Err(fail(p.scenario_errors.join("; ")));
        }
        for c in &self.checks {
            match p.result_of(c) {
                Some(r) => report.results.push(r),
                None => return Err(fail(format!("check {} reported no result", c.name))),
            }
        }
        Ok(())
    }
}

/// How booting L1 ended after the retry policy.
enum Retried {
    Done(Box<Followed>),
    /// Every boot stalled; one reason per boot.
    Stalled(Vec<String>),
}

/// Boots (attempt 1, 2, ...): a stalled L1 gets one fresh retry, anything else is final.
fn boot_with_one_retry<E>(mut boot: impl FnMut(u32) -> Result<Followed, E>) -> Result<Retried, E> {
    let mut reasons = Vec::new();
    for attempt in 1..=2 {
        let followed = boot(attempt)?;
        match &followed.ending {
            Ending::Stalled { why } => reasons.push(why.clone()),
            _ => return Ok(Retried::Done(Box::new(followed))),
        }
    }
    Ok(Retried::Stalled(reasons))
}

/// How checks change identity when this host's own /dev/kvm is used.
fn direct_switch() -> UserSwitch {
    // SAFETY: geteuid has no preconditions and touches no memory.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        use std::os::unix::fs::MetadataExt;
        let kvm_gid = fs::metadata("/dev/kvm").map_or(0, |m| m.gid());
        UserSwitch {
            root: Ok(String::new()),
            user: Ok(format!(
                r#""$SETPRIV" --reuid=1000 --regid=1000 --groups={kvm_gid}"#
            )),
            user_without_kvm: Ok(r#""$SETPRIV" --reuid=1001 --regid=1001 --clear-groups"#.into()),
        }
    } else {
        let why = format!(
            "direct mode as uid {euid} cannot change identity: run the tests as root (they drop to uid 1000/1001) or use PADDOCK_TEST_MODE=testhost"
        );
        UserSwitch {
            root: Err(why.clone()),
            user: Ok(String::new()),
            user_without_kvm: Err(why),
        }
    }
}

/// What a scenario did. Dropping it removes the logs, unless a panic (a failed assertion) is under
/// way or PADDOCK_KEEP_LOGS=1: then their path is printed.
#[derive(Debug)]
pub struct Report {
    pub scenario: String,
    pub mode: Mode,
    pub mode_reason: String,
    /// What L1 announced (test host mode).
    pub l1: Option<L1Ready>,
    /// From QEMU's start to L1's ready marker (test host mode).
    pub l1_ready_after: Option<Duration>,
    /// How long build-l1.sh took (seconds when cached).
    pub l1_build: Option<Duration>,
    /// L1 boots used (2 after a stall and a retry).
    pub attempts: u32,
    pub results: Vec<CheckResult>,
    pub total: Duration,
    logs: Option<LogDir>,
}

impl Report {
    /// The result of check `name`; panics (keeping the logs) when no such check was registered.
    pub fn check(&self, name: &str) -> &CheckResult {
        match self.results.iter().find(|r| r.name == name) {
            Some(r) => r,
            None => panic!(
                "scenario {} has no check named {name:?} (checks: {})",
                self.scenario,
                self.results
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Where the logs are (until the report is dropped).
    pub fn log_dir(&self) -> Option<&Path> {
        self.logs.as_ref().map(|l| l.path.as_path())
    }

    /// Keeps the logs after the report is dropped.
    pub fn keep_logs(&mut self) {
        if let Some(l) = self.logs.as_mut() {
            l.keep();
        }
    }

    /// A table of timings: L1 ready, and each check's time inside and as observed from the host.
    pub fn timings(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "testhost: scenario {} in {} mode ({} attempt(s)), total {:.1} s",
            self.scenario,
            self.mode,
            self.attempts,
            self.total.as_secs_f64()
        );
        if let Some(b) = self.l1_build {
            let _ = writeln!(s, "  L1 image build/cache check: {:.1} s", b.as_secs_f64());
        }
        if let (Some(t), Some(l1)) = (self.l1_ready_after, &self.l1) {
            let _ = writeln!(
                s,
                "  L1 ready after {:.1} s (kvm={}, cpus={}, mem_kb={})",
                t.as_secs_f64(),
                if l1.kvm { "yes" } else { "no" },
                l1.cpus,
                l1.mem_kb
            );
        }
        for r in &self.results {
            let observed = r
                .observed
                .map_or("-".to_string(), |o| format!("{:.2} s", o.as_secs_f64()));
            let _ = writeln!(
                s,
                "  {:<28} status {:>4}{} inside {:>7.2} s, host saw {observed}",
                r.name,
                r.status,
                if r.timed_out { " TIMEOUT" } else { "" },
                r.elapsed.as_secs_f64()
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use markers::Progress;

    fn ended(ending: Ending) -> Followed {
        Followed {
            progress: Progress::default(),
            ending,
            started: Instant::now(),
            console_tail: Vec::new(),
        }
    }

    fn stalled() -> Ending {
        Ending::Stalled {
            why: "lockup".into(),
        }
    }

    #[test]
    fn a_stall_is_retried_once_and_two_stalls_are_reported() {
        let mut endings = vec![stalled(), Ending::Completed];
        let mut calls = Vec::new();
        let r = boot_with_one_retry::<()>(|a| {
            calls.push(a);
            Ok(ended(endings.remove(0)))
        });
        assert!(matches!(r, Ok(Retried::Done(f)) if matches!(f.ending, Ending::Completed)));
        assert_eq!(calls, [1, 2]);
        let r = boot_with_one_retry::<()>(|_| Ok(ended(stalled())));
        assert!(matches!(r, Ok(Retried::Stalled(ref w)) if w.len() == 2));
    }

    #[test]
    fn other_failures_are_not_retried() {
        let mut calls = 0;
        let r = boot_with_one_retry::<()>(|_| {
            calls += 1;
            Ok(ended(Ending::Failed { why: "x".into() }))
        });
        assert!(matches!(r, Ok(Retried::Done(_))));
        assert_eq!(calls, 1);
        assert!(boot_with_one_retry(|_| Err::<Followed, _>("io")).is_err());
    }

    /// Direct mode end to end, minus the probe: stage, run run.sh under sh, follow, collect.
    #[test]
    fn direct_mode_runs_the_staged_scenario() {
        let tmp = tempfile::tempdir().unwrap();
        let guest = tmp.path().join("guest");
        fs::create_dir(&guest).unwrap();
        for f in image::GUEST_FILES {
            fs::write(guest.join(f), f).unwrap();
        }
        let mut s = Scenario::new("direct_unit");
        s.check(
            "guest-and-path",
            RunAs::User,
            Duration::from_secs(20),
            r#"cat "$GUEST/vmlinux"; test -x "$(command -v paddock-bench)" && exit 5"#,
        );
        let switch = direct_switch();
        let exe = std::env::current_exe().unwrap();
        let mut spec = PayloadSpec {
            paddock: exe.clone(),
            paddock_bench: exe,
            guest_dir: guest,
            scenario_files: Vec::new(),
            extra_binaries: Vec::new(),
            extra_libs: Vec::new(),
            extra_files: Vec::new(),
        };
        spec.scenario_files.push((
            "run.sh".into(),
            script::run_script(&s.name, &s.checks, &switch),
        ));
        for c in &s.checks {
            spec.scenario_files.push((
                format!("checks/{}", script::check_file_name(c)),
                script::check_file(c),
            ));
        }
        let logs = LogDir::create(tmp.path(), "direct_unit").unwrap();
        let followed = s.run_direct(&spec, &logs).unwrap();
        assert!(
            matches!(followed.ending, Ending::Completed),
            "{:?}",
            followed.ending
        );
        let r = followed.progress.result_of(&s.checks[0]).unwrap();
        assert_eq!((r.status, r.stdout.as_str()), (5, "vmlinux\n"), "{r}");
    }
}
