//! The CPUs Paddock may use: the affinity mask it was started with, within its cgroup v2 cpuset
//! (`cpuset.cpus.effective`, of its own cgroup or the nearest parent that has one). The kernel keeps
//! the mask inside the cpuset anyway; reading both tells the user which of the two limits them.
//! Paddock never widens the mask it was given, though the kernel would let it within the cpuset:
//! whoever started it (a launcher, `taskset`) chose those CPUs.

use super::PlacementError;
use std::path::{Path, PathBuf};
use vmm::memory::hugepages::{own_cgroup_dir, HostPaths};
use vmm::pinning::{self, CpuSet};

/// The cpuset file that limits this process, and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cpuset {
    pub file: PathBuf,
    pub cpus: CpuSet,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// What placement may use: `mask` within `cpuset`.
    pub cpus: CpuSet,
    /// The affinity mask Paddock started with.
    pub mask: CpuSet,
    /// The cgroup v2 cpuset, when there is one.
    pub cpuset: Option<Cpuset>,
}

impl Allowed {
    /// Where the set comes from, for messages: `0-1 (affinity mask 0-3, cpuset 0-1 in FILE)`.
    pub fn describe(&self) -> String {
        match &self.cpuset {
            Some(c) => format!(
                "{} (affinity mask {}, cgroup cpuset {} in {})",
                self.cpus,
                self.mask,
                c.cpus,
                c.file.display()
            ),
            None => format!("{} (affinity mask; no cgroup v2 cpuset)", self.cpus),
        }
    }
}

/// Walks from this process's cgroup up to the mount for the first `cpuset.cpus.effective`: a
/// cgroup without the cpuset controller uses its parent's CPUs.
fn find_cpuset(paths: &HostPaths) -> Result<Option<Cpuset>, PlacementError> {
    let dir = own_cgroup_dir(paths).map_err(|e| PlacementError::Discover(e.to_string()))?;
    let (Some(dir), Some(mount)) = (dir, paths.cgroup2_mount.as_deref()) else {
        return Ok(None);
    };
    let mut at: Option<&Path> = Some(&dir);
    while let Some(d) = at {
        if !d.starts_with(mount) {
            break;
        }
        let file = d.join("cpuset.cpus.effective");
        if let Ok(text) = std::fs::read_to_string(&file) {
            let cpus = CpuSet::parse(&text)
                .map_err(|e| PlacementError::Discover(format!("{}: {e}", file.display())))?;
            return Ok(Some(Cpuset { file, cpus }));
        }
        at = d.parent();
    }
    Ok(None)
}

/// [`discover`] with the mask given and the cgroup tree at `paths` (tests use a fake tree).
pub fn discover_with(paths: &HostPaths, mask: CpuSet) -> Result<Allowed, PlacementError> {
    let cpuset = find_cpuset(paths)?;
    let cpus = match &cpuset {
        // An empty effective set reads as "no restriction" nowhere; it would be a broken cgroup.
        Some(c) if !c.cpus.is_empty() => mask.intersection(&c.cpus),
        _ => mask.clone(),
    };
    Ok(Allowed { cpus, mask, cpuset })
}

/// The CPUs this process may use, read from the calling thread's mask and the process's cgroup.
pub fn discover() -> Result<Allowed, PlacementError> {
    let mask = pinning::current_affinity().map_err(|e| PlacementError::Discover(e.to_string()))?;
    discover_with(&HostPaths::system(), mask)
}
