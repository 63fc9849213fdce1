//! CPU placement (`--cpus ...,affinity=,emulator=,realtime=`): which CPUs Paddock may use (cgroup
//! cpuset and affinity mask), where each thread goes, and whether SCHED_FIFO is permitted. The
//! threads place themselves as they start (`vmm::threads::spawn_pinned`); see docs/cpu-and-memory.md.

pub mod allowed;
pub mod options;
pub mod plan;
pub mod realtime;

#[cfg(test)]
mod tests;

pub use options::CpuOptions;
pub use plan::Plan;

use caps::{Capability, CapsHashSet};
use vmm::pinning::{self, CpuSet};

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("--cpus: {0}; the syntax is boot=N[,affinity=auto|0@[2],1@[3-4]][,emulator=CPUS][,realtime=fifo:PRIO]")]
    Syntax(String),
    #[error("reading the CPUs paddock may use: {0}")]
    Discover(String),
    #[error("--cpus: paddock may use no CPU at all ({0}): check the pod's cpuset")]
    NoCpus(String),
    #[error("--cpus: CPU {cpus} for {what} is outside the CPUs paddock may use: {allowed}: pick CPUs from that set, or start paddock with CPU {cpus} in its cpuset and affinity mask")]
    Outside {
        what: String,
        cpus: CpuSet,
        /// [`allowed::Allowed::describe`].
        allowed: String,
    },
    #[error("--cpus affinity=auto gives each vCPU a CPU of its own, but there are {vcpus} vCPUs and paddock may use {count} CPUs: {allowed}: lower boot= to {count}, or share CPUs explicitly with affinity=0@[0],1@[0],...")]
    AutoTooFew {
        vcpus: usize,
        count: usize,
        allowed: String,
    },
    #[error("--cpus realtime=fifo:{prio} needs CAP_SYS_NICE or an RLIMIT_RTPRIO of at least {prio}, and paddock has neither (RLIMIT_RTPRIO {rlimit}): start paddock as root with --user UID[:GID] (it keeps SYS_NICE across the switch), or raise the rtprio limit (ulimit -r {prio}); see docs/cpu-and-memory.md")]
    RealtimeNotPermitted { prio: u8, rlimit: String },
    #[error("moving the main thread to the emulator CPUs: {0}")]
    PinMain(pinning::PinError),
}

/// The capabilities the placement asked for needs kept across the uid switch. Pinning a thread of
/// one's own within the cpuset needs none; SCHED_FIFO needs SYS_NICE (or the rlimit).
pub fn needed_caps(opts: &CpuOptions) -> CapsHashSet {
    let mut caps = CapsHashSet::new();
    if opts.realtime.is_some() {
        caps.insert(Capability::CAP_SYS_NICE);
    }
    caps
}

/// Everything `paddock run` checks before the VM exists, in the state it runs in (after the
/// privilege drop): the allowed CPUs, the plan within them, and permission for SCHED_FIFO.
pub fn prepare(opts: &CpuOptions) -> Result<Plan, PlacementError> {
    if !opts.places_threads() {
        return Ok(Plan::default());
    }
    let allowed = allowed::discover()?;
    let plan = plan::resolve(opts, &allowed)?;
    if let Some(prio) = opts.realtime {
        realtime::grant(prio)?;
    }
    Ok(plan)
}

/// Moves the calling (main) thread to the emulator CPUs; call before any other thread starts
/// (the seccomp spawner included), so that every non-vCPU thread inherits them.
pub fn pin_emulator(plan: &Plan) -> Result<(), PlacementError> {
    match &plan.emulator {
        Some(cpus) => pinning::set_current_affinity(cpus).map_err(PlacementError::PinMain),
        None => Ok(()),
    }
}
