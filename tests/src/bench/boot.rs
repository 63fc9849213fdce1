//! `paddock-bench boot`: time to the first guest instruction, time to the guest's ready marker, and
//! the VMM's own resident memory, for Paddock and each peer, in one run. Runs are interleaved (run 1
//! of every VMM, then run 2, ...) so that a change in machine load is shared by all VMMs.

use super::probe::{self, OutputWatch};
use super::stats::Summary;
use super::vmms::{Guest, Vmm};
use serde::Serialize;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// What the default guest's /init prints once its modules are loaded.
pub const READY_MARKER: &str = "PADDOCK-GUEST-READY";
/// What the first-instruction guest sends to COM1 first.
pub const FIRST_BYTE_MARKER: &str = "!";
/// Characters of a VMM's output quoted in a failure.
const TAIL_CHARS: usize = 300;

#[derive(Debug, Default, Serialize)]
pub struct Samples {
    pub first_instruction_ms: Vec<f64>,
    pub ready_ms: Vec<f64>,
    pub rss_overhead_kib: Vec<f64>,
    /// Resident guest RAM at the ready marker (left out of the overhead), for checking the split.
    pub rss_guest_kib: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct VmmBootResult {
    pub vmm: String,
    pub path: String,
    /// Process start to the first byte the first-instruction guest writes to COM1, in ms.
    pub first_instruction_ms: Option<Summary>,
    /// Process start to the default guest's ready marker, in ms.
    pub ready_ms: Option<Summary>,
    /// VMM resident memory other than guest RAM, at the ready marker, in KiB.
    pub rss_overhead_kib: Option<Summary>,
    pub samples: Samples,
    pub failures: Vec<String>,
}

pub struct BootBench<'a> {
    pub runs: usize,
    pub timeout: Duration,
    /// A kernel whose first instruction writes [`FIRST_BYTE_MARKER`] to COM1; `None` skips that
    /// measurement.
    pub first_byte_kernel: Option<&'a Path>,
    /// The guest booted to [`READY_MARKER`]; `None` skips that measurement.
    pub guest: Option<Guest<'a>>,
    /// vCPUs and RAM of the first-instruction guest (and of `guest`).
    pub cpus: u8,
    pub mem_mib: u64,
    pub scratch: &'a Path,
}

/// One boot: ms from process start to the marker, and the RSS split then when asked for.
type RunOutcome = Result<(f64, Option<probe::RssSplit>), String>;

/// One line per boot on stderr, so that a long benchmark shows it is moving.
fn progress(run: usize, runs: usize, vmm: &str, what: &str) {
    eprintln!("paddock-bench: run {run}/{runs} {vmm}: {what}");
}

impl BootBench<'_> {
    fn one_run(&self, vmm: &Vmm, guest: &Guest, marker: &str, rss: bool) -> RunOutcome {
        let mut cmd = vmm
            .command(guest, self.scratch)
            .map_err(|e| format!("preparing the {} command: {e}", vmm.kind.name()))?;
        // Its own process group, so that stopping it reaches anything it started.
        cmd.process_group(0);
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", vmm.path.display()))?;
        let result = match OutputWatch::start(&mut child, vec![marker.as_bytes().to_vec()]) {
            None => Err("no stdout".to_string()),
            Some(watch) => match watch.wait_for(0, start + self.timeout) {
                Some(t) => {
                    let ms = (t - start).as_secs_f64() * 1000.0;
                    if rss {
                        probe::rss_split(child.id(), guest.mem_mib * 1024)
                            .map(|split| (ms, Some(split)))
                    } else {
                        Ok((ms, None))
                    }
                }
                None => {
                    let exited = probe::exit_status_soon(&mut child);
                    let (out, err) = watch.tails(TAIL_CHARS);
                    Err(format!(
                        "no `{marker}` {}; stdout ended with {out:?}; stderr ended with {err:?}",
                        match exited {
                            Some(s) => format!("before it exited ({s})"),
                            None => format!("within {:?}", self.timeout),
                        }
                    ))
                }
            },
        };
        probe::stop(&mut child);
        result
    }

    /// Measures every VMM, run by run in turn. Results come in the order of `vmms`.
    pub fn measure_all(&self, vmms: &[Vmm]) -> Vec<VmmBootResult> {
        let mut samples: Vec<Samples> = vmms.iter().map(|_| Samples::default()).collect();
        let mut failures: Vec<Vec<String>> = vmms.iter().map(|_| Vec::new()).collect();
        let first_guest = self.first_byte_kernel.map(|kernel| Guest {
            kernel,
            initramfs: None,
            cmdline: "console=ttyS0",
            cpus: self.cpus,
            mem_mib: self.mem_mib,
        });
        for run in 1..=self.runs {
            for (i, vmm) in vmms.iter().enumerate() {
                let name = vmm.kind.name();
                if let Some(g) = &first_guest {
                    match self.one_run(vmm, g, FIRST_BYTE_MARKER, false) {
                        Ok((ms, _)) => {
                            progress(
                                run,
                                self.runs,
                                name,
                                &format!("first instruction {ms:.1} ms"),
                            );
                            samples[i].first_instruction_ms.push(ms);
                        }
                        Err(e) => {
                            progress(run, self.runs, name, "first instruction FAILED");
                            failures[i].push(format!("run {run}, first instruction: {e}"));
                        }
                    }
                }
                if let Some(g) = &self.guest {
                    match self.one_run(vmm, g, READY_MARKER, true) {
                        Ok((ms, split)) => {
                            let rss = split.map(|s| s.overhead_kib).unwrap_or_default();
                            progress(
                                run,
                                self.runs,
                                name,
                                &format!("ready {ms:.1} ms, rss overhead {rss} KiB"),
                            );
                            samples[i].ready_ms.push(ms);
                            if let Some(s) = split {
                                samples[i].rss_overhead_kib.push(s.overhead_kib as f64);
                                samples[i].rss_guest_kib.push(s.guest_kib as f64);
                            }
                        }
                        Err(e) => {
                            progress(run, self.runs, name, "ready FAILED");
                            failures[i].push(format!("run {run}, ready: {e}"));
                        }
                    }
                }
            }
        }
        vmms.iter()
            .zip(samples)
            .zip(failures)
            .map(|((vmm, samples), failures)| VmmBootResult {
                vmm: vmm.kind.name().to_string(),
                path: vmm.path.display().to_string(),
                first_instruction_ms: Summary::of(&samples.first_instruction_ms),
                ready_ms: Summary::of(&samples.ready_ms),
                rss_overhead_kib: Summary::of(&samples.rss_overhead_kib),
                samples,
                failures,
            })
            .collect()
    }
}
