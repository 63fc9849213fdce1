//! `paddock-bench boot`: time to the first guest instruction, time to the guest's ready marker, and
//! the VMM's own resident memory, for Paddock and each peer, in one run.

use super::probe::{self, OutputWatch};
use super::stats::Summary;
use super::vmms::{Guest, Vmm};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

pub const READY_MARKER: &str = "PADDOCK-GUEST-READY";

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
    pub failures: Vec<String>,
}

pub struct BootBench<'a> {
    pub runs: usize,
    pub timeout: Duration,
    /// A kernel whose first instruction writes one byte to COM1.
    pub first_byte_kernel: Option<&'a Path>,
    pub guest: Guest<'a>,
    pub scratch: &'a Path,
}

impl BootBench<'_> {
    fn one_run(
        &self,
        vmm: &Vmm,
        guest: &Guest,
        marker: &str,
        rss: bool,
    ) -> Result<(f64, Option<u64>), String> {
        let mut cmd = vmm
            .command(guest, self.scratch)
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", vmm.path.display()))?;
        let result = match OutputWatch::start(&mut child, vec![marker.as_bytes().to_vec()]) {
            None => Err("no stdout".to_string()),
            Some(watch) => match watch.wait_for(0, start + self.timeout) {
                Some(t) => {
                    let kib = if rss {
                        probe::rss_without_guest_kib(child.id(), guest.mem_mib * 1024)
                    } else {
                        None
                    };
                    Ok(((t - start).as_secs_f64() * 1000.0, kib))
                }
                None => {
                    let tail: String = watch.text().chars().rev().take(300).collect();
                    let tail: String = tail.chars().rev().collect();
                    Err(format!(
                        "no `{marker}` within {:?}; output ended with: {tail:?}",
                        self.timeout
                    ))
                }
            },
        };
        probe::stop(&mut child);
        result
    }

    pub fn measure(&self, vmm: &Vmm) -> VmmBootResult {
        let mut failures = Vec::new();
        let mut first = Vec::new();
        if let Some(kernel) = self.first_byte_kernel {
            let guest = Guest {
                kernel,
                initramfs: None,
                ..self.guest.clone()
            };
            for _ in 0..self.runs {
                match self.one_run(vmm, &guest, "", false) {
                    Ok((ms, _)) => first.push(ms),
                    Err(e) => failures.push(format!("first instruction: {e}")),
                }
            }
        }
        let mut ready = Vec::new();
        let mut rss = Vec::new();
        for _ in 0..self.runs {
            match self.one_run(vmm, &self.guest, READY_MARKER, true) {
                Ok((ms, kib)) => {
                    ready.push(ms);
                    if let Some(k) = kib {
                        rss.push(k as f64);
                    }
                }
                Err(e) => failures.push(format!("ready: {e}")),
            }
        }
        failures.dedup();
        VmmBootResult {
            vmm: vmm.kind.name().to_string(),
            path: vmm.path.display().to_string(),
            first_instruction_ms: Summary::of(&first),
            ready_ms: Summary::of(&ready),
            rss_overhead_kib: Summary::of(&rss),
            failures,
        }
    }
}
