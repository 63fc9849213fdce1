//! From `--cpus` and the allowed CPUs to a concrete place for every thread, refusing anything
//! outside the allowed set before the VM starts (the kernel would refuse it only in the thread, or
//! silently drop the CPUs it cannot give).

use super::allowed::Allowed;
use super::options::{Affinity, CpuOptions};
use super::PlacementError;
use vmm::pinning::{CpuSet, Placement, ThreadPin};

/// What `paddock run` applies: per-vCPU pins (net workers follow them) and the emulator CPUs, which
/// the main thread takes before it starts any other thread, so every non-vCPU thread inherits them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub placement: Placement,
    pub emulator: Option<CpuSet>,
}

fn check_inside(what: String, cpus: &CpuSet, allowed: &Allowed) -> Result<(), PlacementError> {
    let outside = cpus.outside(&allowed.cpus);
    if outside.is_empty() {
        return Ok(());
    }
    Err(PlacementError::Outside {
        what,
        cpus: outside,
        allowed: allowed.describe(),
    })
}

pub fn resolve(opts: &CpuOptions, allowed: &Allowed) -> Result<Plan, PlacementError> {
    if !opts.places_threads() {
        return Ok(Plan::default());
    }
    if allowed.cpus.is_empty() {
        return Err(PlacementError::NoCpus(allowed.describe()));
    }
    let boot = usize::from(opts.boot);
    let mut vcpu_cpus: Vec<Option<CpuSet>> = vec![None; boot];
    let mut emulator = opts.emulator.clone();
    match &opts.affinity {
        Affinity::Inherit => {}
        Affinity::Auto => {
            if boot > allowed.cpus.len() {
                return Err(PlacementError::AutoTooFew {
                    vcpus: boot,
                    count: allowed.cpus.len(),
                    allowed: allowed.describe(),
                });
            }
            for (slot, cpu) in vcpu_cpus.iter_mut().zip(allowed.cpus.iter()) {
                *slot = Some(CpuSet::single(cpu));
            }
            if emulator.is_none() {
                emulator = allowed.cpus.last().map(CpuSet::single);
            }
        }
        Affinity::Explicit(pins) => {
            for (vcpu, cpus) in pins {
                check_inside(format!("vCPU {vcpu}"), cpus, allowed)?;
                if let Some(slot) = vcpu_cpus.get_mut(usize::from(*vcpu)) {
                    *slot = Some(cpus.clone());
                }
            }
        }
    }
    if let Some(e) = &opts.emulator {
        check_inside("the emulator threads".into(), e, allowed)?;
    }
    // The main thread moves to the emulator CPUs and every thread it starts inherits them: vCPUs
    // without a pin of their own must be set back to the whole allowed set.
    if emulator.is_some() {
        for slot in vcpu_cpus.iter_mut().filter(|s| s.is_none()) {
            *slot = Some(allowed.cpus.clone());
        }
    }
    let vcpus = vcpu_cpus
        .into_iter()
        .map(|cpus| ThreadPin {
            cpus,
            fifo: opts.realtime,
        })
        .collect();
    Ok(Plan {
        placement: Placement { vcpus },
        emulator,
    })
}

impl Plan {
    /// One line for `paddock check` and the log: `vCPU 0 -> 1, vCPU 1 -> 0, emulator -> 1`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .placement
            .vcpus
            .iter()
            .enumerate()
            .map(|(i, pin)| {
                let cpus = pin
                    .cpus
                    .as_ref()
                    .map_or("inherited mask".to_string(), ToString::to_string);
                match pin.fifo {
                    Some(p) => format!("vCPU {i} -> {cpus} (SCHED_FIFO {p})"),
                    None => format!("vCPU {i} -> {cpus}"),
                }
            })
            .collect();
        if let Some(e) = &self.emulator {
            parts.push(format!("emulator -> {e}"));
        }
        if parts.is_empty() {
            return "no placement asked: every thread keeps the mask paddock starts with".into();
        }
        parts.join(", ")
    }
}
