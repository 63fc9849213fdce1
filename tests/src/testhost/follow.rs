//! Follows a running scenario from the host: reads the logs as they grow, parses markers, enforces
//! the deadlines, notices an L1 soft-lockup stall, and kills the process on every path.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use super::check::Check;
use super::markers::Progress;

/// A child process that is ended on drop: TERM, a short grace, then KILL.
pub struct ChildGuard {
    child: Option<Child>,
    what: &'static str,
}

impl ChildGuard {
    pub fn new(child: Child, what: &'static str) -> Self {
        ChildGuard {
            child: Some(child),
            what,
        }
    }

    /// The exit status once the process has ended.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Ends the process (TERM, then KILL after `grace`) and reaps it.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) with a pid we spawned and have not reaped yet (so it cannot have been
            // reused); no memory is involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        if let Err(e) = child.kill() {
            eprintln!("testhost: cannot kill {} ({e})", self.what);
        }
        let _ = child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// Reads the complete lines appended to a file since the last call.
pub struct Tail {
    path: PathBuf,
    file: Option<File>,
    partial: Vec<u8>,
}

impl Tail {
    pub fn new(path: &Path) -> Self {
        Tail {
            path: path.to_path_buf(),
            file: None,
            partial: Vec::new(),
        }
    }

    /// New complete lines (lossy UTF-8); the file may not exist yet.
    pub fn lines(&mut self) -> io::Result<Vec<String>> {
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
        }
        let mut buf = Vec::new();
        if let Some(f) = self.file.as_mut() {
            f.read_to_end(&mut buf)?;
        }
        self.partial.extend_from_slice(&buf);
        let mut out = Vec::new();
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            out.push(String::from_utf8_lossy(&line[..nl]).into_owned());
        }
        Ok(out)
    }

    /// Whatever is left without a newline (the end of a log whose writer died).
    pub fn rest(&mut self) -> Option<String> {
        if self.partial.is_empty() {
            None
        } else {
            let s = String::from_utf8_lossy(&self.partial).into_owned();
            self.partial.clear();
            Some(s)
        }
    }
}

/// Deadlines of one run.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Until `@@PADDOCK-L1-READY` (test host) or `@@SCENARIO-BEGIN` (direct).
    pub ready: Duration,
    /// With a soft lockup on the console, this long without scenario progress is a stall.
    pub stall: Duration,
    /// Added to each check's own timeout before the host gives up on the scenario script.
    pub check_grace: Duration,
    /// From `@@SCENARIO-END` until the process must have exited.
    pub shutdown: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            ready: Duration::from_secs(120),
            stall: Duration::from_secs(150),
            check_grace: Duration::from_secs(60),
            shutdown: Duration::from_secs(60),
        }
    }
}

/// How a followed run ended.
#[derive(Debug)]
pub enum Ending {
    /// The scenario ran to its end marker (whatever the checks' statuses).
    Completed,
    /// A soft lockup was reported and the scenario made no progress for `Limits::stall`.
    Stalled { why: String },
    /// Anything else: the text says what went wrong.
    Failed { why: String },
}

/// What a followed run produced.
pub struct Followed {
    pub progress: Progress,
    pub ending: Ending,
    pub started: Instant,
    /// The last lines of the console (kernel log), for error messages.
    pub console_tail: Vec<String>,
}

const LOCKUP: &str = "soft lockup";
/// L1's kernel died. Nothing Paddock does as a process can panic a kernel; under TCG's emulated
/// SVM the L1 kernel has died in its own KVM code while running a guest (stack guard page hit
/// in a vCPU thread), so like a stall this is the test host failing and gets a fresh boot.
const L1_PANIC: &str = "Kernel panic - not syncing";

/// Follows `proc` until the scenario ends, a deadline passes or the process dies.
/// `results` carries the markers; `console` (test host only) the L1 kernel log.
/// `ready_marker_is_l1` says whether readiness is L1's marker or the scenario's begin.
pub fn follow(
    proc: &mut ChildGuard,
    results: &Path,
    console: Option<&Path>,
    checks: &[Check],
    limits: &Limits,
    ready_marker_is_l1: bool,
) -> Followed {
    let started = Instant::now();
    let mut results_tail = Tail::new(results);
    let mut console_tail = console.map(Tail::new);
    let mut progress = Progress::default();
    let mut last_lines: VecDeque<String> = VecDeque::new();
    let mut lockup_at: Option<Instant> = None;
    let mut l1_panic: Option<String> = None;
    let mut last_progress = Instant::now();
    let mut ended_at: Option<Instant> = None;
    let mut exited = false;
    let ending = loop {
        exited = exited || proc.try_wait().is_some();
        let now = Instant::now();
        match results_tail.lines() {
            Ok(lines) => {
                if !lines.is_empty() {
                    last_progress = now;
                }
                for l in lines {
                    progress.feed(&l, now);
                }
            }
            Err(e) => {
                break Ending::Failed {
                    why: format!("cannot read {}: {e}", results.display()),
                }
            }
        }
        if let Some(t) = console_tail.as_mut() {
            for l in t.lines().unwrap_or_default() {
                if l.contains(LOCKUP) && lockup_at.is_none() {
                    lockup_at = Some(now);
                }
                if l.contains(L1_PANIC) && l1_panic.is_none() {
                    l1_panic = Some(l.trim().to_string());
                }
                last_lines.push_back(l);
                if last_lines.len() > 40 {
                    last_lines.pop_front();
                }
            }
        }
        // Only once the writer is gone: before that, a line without its newline is still coming.
        if exited {
            if let Some(rest) = results_tail.rest() {
                progress.feed(&rest, now);
            }
        }
        let ready = if ready_marker_is_l1 {
            progress.l1_ready.is_some()
        } else {
            progress.scenario_begun
        };
        if progress.scenario_ended && ended_at.is_none() {
            ended_at = Some(now);
        }
        if let Some(e) = ended_at {
            if exited {
                break Ending::Completed;
            }
            if now - e > limits.shutdown {
                break Ending::Failed {
                    why: format!(
                        "the scenario ended but the process did not exit within {} s",
                        limits.shutdown.as_secs()
                    ),
                };
            }
        } else if exited {
            if let Some(line) = &l1_panic {
                break Ending::Stalled {
                    why: format!("the L1 kernel panicked: {line}"),
                };
            }
            let errors = progress.scenario_errors.join("; ");
            let at = match &progress.running {
                Some((name, _)) => format!(" during check {name}"),
                None if !ready => " before it was ready".to_string(),
                None => String::new(),
            };
            break Ending::Failed {
                why: format!(
                    "the process exited{at} before the scenario's end marker{}{errors}",
                    if errors.is_empty() { "" } else { ": " }
                ),
            };
        }
        let stalled = lockup_at.is_some_and(|l| {
            now - l.max(last_progress) > limits.stall || (!ready && now - started > limits.ready)
        });
        if stalled {
            break Ending::Stalled {
                why: format!(
                    "'{LOCKUP}' on the L1 console and no scenario progress for {} s{}",
                    (now - last_progress).as_secs(),
                    if ready {
                        ""
                    } else {
                        " (L1 never became ready)"
                    }
                ),
            };
        }
        // A running check prints a heartbeat every ~10 s from L1's user space, whatever the
        // guest does; silence for this long means L1 itself stopped (seen without any soft-lockup
        // report too), not Paddock.
        if console_tail.is_some()
            && progress.running.is_some()
            && now - last_progress > limits.stall
        {
            break Ending::Stalled {
                why: format!(
                    "no heartbeat from L1's scenario script for {} s while a check ran",
                    (now - last_progress).as_secs()
                ),
            };
        }
        if !ready && now - started > limits.ready {
            break Ending::Failed {
                why: format!("not ready within {} s", limits.ready.as_secs()),
            };
        }
        if let Some((name, since)) = &progress.running {
            let limit = checks
                .iter()
                .find(|c| &c.name == name)
                .map_or(Duration::ZERO, |c| c.timeout)
                + limits.check_grace;
            if now - *since > limit {
                break Ending::Failed {
                    why: format!(
                        "check {name} ran past its timeout plus {} s and the scenario script did not end it",
                        limits.check_grace.as_secs()
                    ),
                };
            }
        }
        thread::sleep(Duration::from_millis(100));
    };
    proc.stop(Duration::from_secs(3));
    Followed {
        progress,
        ending,
        started,
        console_tail: last_lines.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testhost::check::RunAs;
    use std::process::Command;

    fn sleeper() -> ChildGuard {
        ChildGuard::new(Command::new("sleep").arg("60").spawn().unwrap(), "sleep")
    }

    /// results.log of a ready L1 whose scenario is running check `a`.
    const CHECK_A_RUNNING: &str =
        "@@PADDOCK-L1-READY kvm=yes cpus=2 mem_kb=1\n@@SCENARIO-BEGIN s checks=1\n@@CHECK-BEGIN a\n";

    fn check_a() -> [Check; 1] {
        [Check::new("a", RunAs::User, Duration::from_secs(100), "x").unwrap()]
    }

    fn quick() -> Limits {
        Limits {
            ready: Duration::from_secs(2),
            stall: Duration::from_millis(800),
            check_grace: Duration::from_millis(500),
            shutdown: Duration::from_secs(1),
        }
    }

    #[test]
    fn soft_lockup_without_progress_is_a_stall_and_the_process_is_killed() {
        let d = tempfile::tempdir().unwrap();
        let (res, con) = (d.path().join("r"), d.path().join("c"));
        std::fs::write(&res, CHECK_A_RUNNING).unwrap();
        std::fs::write(
            &con,
            "[ 30.1] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [sh:99]\n",
        )
        .unwrap();
        let checks = check_a();
        let mut p = sleeper();
        let f = follow(&mut p, &res, Some(&con), &checks, &quick(), true);
        assert!(matches!(f.ending, Ending::Stalled { .. }), "{:?}", f.ending);
        assert!(
            p.try_wait().is_none() && p.child.is_none(),
            "the process must be reaped"
        );
        assert_eq!(f.console_tail.len(), 1);
    }

    #[test]
    fn heartbeat_silence_during_a_check_is_a_stall_without_any_lockup_line() {
        let d = tempfile::tempdir().unwrap();
        let (res, con) = (d.path().join("r"), d.path().join("c"));
        std::fs::write(&res, CHECK_A_RUNNING).unwrap();
        std::fs::write(&con, "[ 5.0] kvm: some harmless line\n").unwrap();
        let checks = check_a();
        let mut p = sleeper();
        let f = follow(&mut p, &res, Some(&con), &checks, &quick(), true);
        assert!(
            matches!(f.ending, Ending::Stalled { ref why } if why.contains("heartbeat")),
            "{:?}",
            f.ending
        );
    }

    #[test]
    fn l1_kernel_panic_during_a_check_is_a_stall() {
        let d = tempfile::tempdir().unwrap();
        let (res, con) = (d.path().join("r"), d.path().join("c"));
        std::fs::write(&res, CHECK_A_RUNNING).unwrap();
        std::fs::write(
            &con,
            "[ 68.5] BUG: TASK stack guard page was hit at 0000000049bdb136\n[ 68.6] Kernel panic - not syncing: corrupted stack end detected inside scheduler\n",
        )
        .unwrap();
        let checks = check_a();
        // QEMU runs with -no-reboot: after the panic the process is gone.
        let gone = ChildGuard::new(Command::new("true").spawn().unwrap(), "true");
        let f = follow(&mut { gone }, &res, Some(&con), &checks, &quick(), true);
        assert!(
            matches!(f.ending, Ending::Stalled { ref why } if why.contains("corrupted stack end")),
            "{:?}",
            f.ending
        );
        // Without the panic line the same early exit is a failure (covered below too).
        std::fs::write(&con, "[ 5.0] kvm: some harmless line\n").unwrap();
        let gone = ChildGuard::new(Command::new("true").spawn().unwrap(), "true");
        let f = follow(&mut { gone }, &res, Some(&con), &checks, &quick(), true);
        assert!(matches!(f.ending, Ending::Failed { .. }), "{:?}", f.ending);
    }

    #[test]
    fn lockup_during_boot_is_a_stall_and_a_silent_boot_a_failure() {
        let d = tempfile::tempdir().unwrap();
        let (res, con) = (d.path().join("r"), d.path().join("c"));
        std::fs::write(&con, "watchdog: BUG: soft lockup - CPU#0 stuck\n").unwrap();
        let f = follow(&mut sleeper(), &res, Some(&con), &[], &quick(), true);
        assert!(
            matches!(f.ending, Ending::Stalled { ref why } if why.contains("never became ready"))
        );
        std::fs::write(&con, "booting\n").unwrap();
        let f = follow(&mut sleeper(), &res, Some(&con), &[], &quick(), true);
        assert!(matches!(f.ending, Ending::Failed { ref why } if why.contains("not ready")));
    }

    #[test]
    fn a_check_past_its_timeout_and_an_early_exit_fail() {
        let d = tempfile::tempdir().unwrap();
        let res = d.path().join("r");
        std::fs::write(&res, "@@SCENARIO-BEGIN s checks=1\n@@CHECK-BEGIN a\n").unwrap();
        let checks = [Check::new("a", RunAs::User, Duration::from_millis(300), "x").unwrap()];
        let f = follow(&mut sleeper(), &res, None, &checks, &quick(), false);
        assert!(matches!(f.ending, Ending::Failed { ref why } if why.contains("check a ran past")));
        let gone = ChildGuard::new(Command::new("true").spawn().unwrap(), "true");
        let f = follow(&mut { gone }, &res, None, &checks, &quick(), false);
        assert!(
            matches!(f.ending, Ending::Failed { ref why } if why.contains("during check a")),
            "{:?}",
            f.ending
        );
    }

    #[test]
    fn a_completed_scenario_waits_for_the_exit() {
        let d = tempfile::tempdir().unwrap();
        let res = d.path().join("r");
        std::fs::write(&res, "@@SCENARIO-BEGIN s checks=0\n@@SCENARIO-END\n").unwrap();
        let done = ChildGuard::new(Command::new("sleep").arg("0.3").spawn().unwrap(), "sleep");
        let f = follow(&mut { done }, &res, None, &[], &quick(), false);
        assert!(matches!(f.ending, Ending::Completed), "{:?}", f.ending);
        let f = follow(&mut sleeper(), &res, None, &[], &quick(), false);
        assert!(matches!(f.ending, Ending::Failed { ref why } if why.contains("did not exit")));
    }

    #[test]
    fn a_line_read_before_its_newline_is_not_lost() {
        use std::io::Write as _;
        let d = tempfile::tempdir().unwrap();
        let res = d.path().join("r");
        let mut f = std::fs::File::create(&res).unwrap();
        f.write_all(b"@@SCENARIO-BEGIN s checks=1\n@@CHECK-BEGIN a\n@@CHECK-END a rc=")
            .unwrap();
        let writer = std::thread::spawn(move || {
            // Long enough for follow() to read the half line at least once.
            std::thread::sleep(Duration::from_millis(400));
            f.write_all(b"3 cs=1 timeout=0\n@@SCENARIO-END\n").unwrap();
        });
        let done = ChildGuard::new(Command::new("sleep").arg("0.8").spawn().unwrap(), "sleep");
        let checks = [Check::new("a", RunAs::User, Duration::from_secs(10), "x").unwrap()];
        let out = follow(&mut { done }, &res, None, &checks, &quick(), false);
        writer.join().unwrap();
        assert!(matches!(out.ending, Ending::Completed), "{:?}", out.ending);
        let r = out
            .progress
            .result_of(&checks[0])
            .expect("check a has a result");
        assert_eq!(r.status, 3);
    }
}
