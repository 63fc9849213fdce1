//! Parses the scenario's `@@` markers (see script.rs) and the L1 init's markers from the results log.

use std::time::{Duration, Instant};

use super::check::{Check, CheckResult};

/// What L1's init announced before running the scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L1Ready {
    pub kvm: bool,
    pub cpus: u32,
    pub mem_kb: u64,
}

#[derive(Debug, Default)]
struct Partial {
    name: String,
    begun_at: Option<Instant>,
    stdout: String,
    stderr: String,
}

/// Everything learnt so far from the results log, fed one line at a time.
#[derive(Debug, Default)]
pub struct Progress {
    pub l1_ready: Option<(L1Ready, Instant)>,
    pub scenario_begun: bool,
    pub scenario_errors: Vec<String>,
    pub scenario_ended: bool,
    pub l1_exit: Option<i32>,
    /// The check that has begun and not ended, with when its begin marker arrived.
    pub running: Option<(String, Instant)>,
    pub finished: Vec<FinishedCheck>,
    current: Option<Partial>,
}

/// A check as the markers reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedCheck {
    pub name: String,
    pub status: i32,
    pub timed_out: bool,
    pub elapsed: Duration,
    pub observed: Option<Duration>,
    pub stdout: String,
    pub stderr: String,
    pub not_run: Option<String>,
}

fn field<'a>(words: &[&'a str], key: &str) -> Option<&'a str> {
    words.iter().find_map(|w| w.strip_prefix(key))
}

impl Progress {
    /// Feeds one line (without its newline; a trailing CR from the serial line is dropped).
    pub fn feed(&mut self, line: &str, at: Instant) {
        let line = line.trim_end_matches('\r');
        // A line may carry serial noise before the marker; markers start at their `@@`.
        let Some(pos) = line.find("@@") else { return };
        let m = &line[pos..];
        if let Some(rest) = m.strip_prefix("@@OUT ") {
            self.output(rest, false);
        } else if let Some(rest) = m.strip_prefix("@@ERR ") {
            self.output(rest, true);
        } else if let Some(rest) = m.strip_prefix("@@CHECK-BEGIN ") {
            let name = rest.trim().to_string();
            self.running = Some((name.clone(), at));
            self.current = Some(Partial {
                name,
                begun_at: Some(at),
                ..Partial::default()
            });
        } else if let Some(rest) = m.strip_prefix("@@HEARTBEAT") {
            let _ = rest;
        } else if let Some(rest) = m.strip_prefix("@@CHECK-END ") {
            self.end(rest, at);
        } else if let Some(rest) = m.strip_prefix("@@CHECK-NOTRUN ") {
            let (name, why) = rest.split_once(' ').unwrap_or((rest, ""));
            self.finished.push(FinishedCheck {
                name: name.to_string(),
                status: -1,
                timed_out: false,
                elapsed: Duration::ZERO,
                observed: None,
                stdout: String::new(),
                stderr: String::new(),
                not_run: Some(why.trim().to_string()),
            });
        } else if m.starts_with("@@SCENARIO-BEGIN") {
            self.scenario_begun = true;
        } else if let Some(rest) = m.strip_prefix("@@SCENARIO-ERROR ") {
            self.scenario_errors.push(rest.trim().to_string());
        } else if m.starts_with("@@SCENARIO-END") {
            self.scenario_ended = true;
        } else if let Some(rest) = m.strip_prefix("@@PADDOCK-L1-READY") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let ready = L1Ready {
                kvm: field(&words, "kvm=") == Some("yes"),
                cpus: field(&words, "cpus=")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                mem_kb: field(&words, "mem_kb=")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            };
            self.l1_ready = Some((ready, at));
        } else if let Some(rest) = m.strip_prefix("@@PADDOCK-L1-EXIT") {
            self.l1_exit = Some(rest.trim().parse().unwrap_or(-1));
        }
    }

    fn output(&mut self, rest: &str, is_err: bool) {
        let Some((name, text)) = rest.split_once('|') else {
            return;
        };
        if let Some(cur) = self.current.as_mut().filter(|c| c.name == name) {
            let buf = if is_err {
                &mut cur.stderr
            } else {
                &mut cur.stdout
            };
            buf.push_str(text);
            buf.push('\n');
        }
    }

    fn end(&mut self, rest: &str, at: Instant) {
        let words: Vec<&str> = rest.split_whitespace().collect();
        let Some(name) = words.first() else { return };
        let cur = match self.current.take() {
            Some(c) if c.name == *name => c,
            other => {
                self.current = other;
                Partial {
                    name: name.to_string(),
                    ..Partial::default()
                }
            }
        };
        if self.running.as_ref().is_some_and(|(n, _)| n == name) {
            self.running = None;
        }
        let cs: u64 = field(&words, "cs=")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        self.finished.push(FinishedCheck {
            name: cur.name,
            status: field(&words, "rc=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1),
            timed_out: field(&words, "timeout=") == Some("1"),
            elapsed: Duration::from_millis(cs * 10),
            observed: cur.begun_at.map(|b| at.saturating_duration_since(b)),
            stdout: cur.stdout,
            stderr: cur.stderr,
            not_run: None,
        });
    }

    /// The finished result of `check`, if its end (or not-run) marker arrived.
    pub fn result_of(&self, check: &Check) -> Option<CheckResult> {
        let f = self.finished.iter().find(|f| f.name == check.name)?;
        Some(CheckResult {
            name: f.name.clone(),
            command: check.command.clone(),
            run_as: check.run_as,
            status: f.status,
            timed_out: f.timed_out,
            stdout: f.stdout.clone(),
            stderr: f.stderr.clone(),
            elapsed: f.elapsed,
            observed: f.observed,
            not_run: f.not_run.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testhost::check::RunAs;

    #[test]
    fn a_full_log_parses_into_results() {
        let log = "\u{0}junk\r\n@@PADDOCK-L1-READY kvm=yes cpus=2 mem_kb=4000000\r\n\
            @@SCENARIO-BEGIN s checks=2\r\nscenario: hi\r\n@@CHECK-BEGIN a\r\n@@HEARTBEAT a\r\n\
            @@OUT a|1\r\n@@OUT a|@@CHECK-END fake rc=0\r\n@@ERR a|oops: | bar\r\n\
            @@CHECK-END a rc=7 cs=1234 timeout=0\r\n@@CHECK-NOTRUN b needs root\r\n\
            @@SCENARIO-END\r\n@@PADDOCK-L1-EXIT 0\r\n";
        let mut p = Progress::default();
        let t = Instant::now();
        for l in log.lines() {
            p.feed(l, t);
        }
        let ready = &p.l1_ready.as_ref().unwrap().0;
        assert!(ready.kvm && ready.cpus == 2 && ready.mem_kb == 4_000_000);
        assert!(p.scenario_begun && p.scenario_ended && p.running.is_none());
        assert_eq!(p.l1_exit, Some(0));
        let a = Check::new("a", RunAs::User, Duration::from_secs(9), "x").unwrap();
        let r = p.result_of(&a).unwrap();
        assert_eq!(r.status, 7);
        assert_eq!(r.stdout, "1\n@@CHECK-END fake rc=0\n");
        assert_eq!(r.stderr_last_line(), "oops: | bar");
        assert_eq!(r.elapsed, Duration::from_millis(12340));
        let b = Check::new("b", RunAs::Root, Duration::from_secs(9), "x").unwrap();
        let r = p.result_of(&b).unwrap();
        assert_eq!((r.status, r.not_run.as_deref()), (-1, Some("needs root")));
    }

    #[test]
    fn a_timed_out_check_is_marked() {
        let mut p = Progress::default();
        let t = Instant::now();
        p.feed("@@CHECK-BEGIN slow", t);
        assert_eq!(p.running.as_ref().map(|r| r.0.as_str()), Some("slow"));
        p.feed("@@CHECK-END slow rc=137 cs=500 timeout=1", t);
        let c = Check::new("slow", RunAs::Root, Duration::from_secs(5), "x").unwrap();
        let r = p.result_of(&c).unwrap();
        assert!(r.timed_out && r.status == 137);
    }
}
