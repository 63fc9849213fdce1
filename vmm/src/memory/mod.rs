//! Guest RAM: sizing checks, the backends (anonymous, memfd, hugetlbfs file), hugepage preflight,
//! prefault, and registration with KVM as memory slots. Entry point: [`create`].

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use std::sync::Arc;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

pub mod config;
pub mod hugepages;
pub mod hugetlbfs;
pub mod map;
pub mod memfd;
pub mod prefault;
pub mod size;

#[cfg(test)]
mod tests;

pub use config::{Backend, MemoryConfig, OptionError};
pub use hugepages::{HostPaths, PreflightError};
pub use hugetlbfs::HugetlbfsError;
pub use map::MapError;
pub use memfd::MemfdError;
pub use prefault::PrefaultError;
pub use size::{parse_size, SizeError};

/// The guest memory type used throughout Paddock.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {requested} MiB is more than this host has ({total} MiB in all): lower --memory")]
    TooLarge { requested: u64, total: u64 },
    #[error("guest memory of {0} MiB is too small: give at least 16M")]
    TooSmall(u64),
    #[error("cannot read /proc/meminfo: {0}")]
    Meminfo(std::io::Error),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Hugetlbfs(#[from] HugetlbfsError),
    #[error(transparent)]
    Memfd(#[from] MemfdError),
    #[error(transparent)]
    Mapping(#[from] MapError),
    #[error(transparent)]
    Prefault(#[from] PrefaultError),
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot} failed: {source}")]
    RegisterSlot {
        slot: u32,
        source: kvm_ioctls::Error,
    },
}

pub const MIN_SIZE: u64 = 16 << 20;

/// Total host RAM in bytes, from /proc/meminfo.
pub fn host_mem_total() -> Result<u64, MemoryError> {
    let text = std::fs::read_to_string("/proc/meminfo").map_err(MemoryError::Meminfo)?;
    let kb = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(u64::MAX / 1024);
    Ok(kb * 1024)
}

/// Refuses sizes the host cannot hold, before anything is mapped.
pub fn check_size(size: u64) -> Result<(), MemoryError> {
    if size < MIN_SIZE {
        return Err(MemoryError::TooSmall(size >> 20));
    }
    let total = host_mem_total()?;
    if size > total {
        return Err(MemoryError::TooLarge {
            requested: size >> 20,
            total: total >> 20,
        });
    }
    Ok(())
}

/// The host's base page size.
fn base_page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// Creates guest RAM for `ranges` (from `arch::ram_regions(config.size)`) as `config` asks.
pub fn create(
    config: &MemoryConfig,
    ranges: &[(GuestAddress, usize)],
) -> Result<GuestMemoryMmap, MemoryError> {
    create_on(&HostPaths::system(), config, ranges)
}

/// Everything about `config`'s backing that can be checked without creating it: the host's size,
/// the hugetlbfs mount and its page size, free hugepages and the cgroup limit. Returns the page size
/// the RAM will have. `paddock run` (through [`create_on`]) and `paddock check` both use it.
pub fn preflight(
    host: &HostPaths,
    config: &MemoryConfig,
    ranges: &[(GuestAddress, usize)],
) -> Result<u64, MemoryError> {
    check_size(ranges.iter().map(|r| r.1 as u64).sum())?;
    let page = match config.backend() {
        Backend::Anonymous | Backend::Memfd { hugepages: None } => return Ok(base_page_size()),
        Backend::Memfd {
            hugepages: Some(page),
        } => page,
        Backend::Hugetlbfs { dir, hugepages } => {
            let page = hugetlbfs::mount_page_size(dir, hugepages)?;
            hugetlbfs::check_writable(dir)?;
            page
        }
    };
    hugepages::preflight(host, page, ranges)?;
    Ok(page)
}

/// [`create`] with the host's hugepage accounting read from `host`.
///
/// Order: check everything that can be checked ([`preflight`]), then make the backing file, map it
/// (which reserves hugepages), remove the file's name, and finally prefault. Every object made on
/// the way is owned by a value that closes or removes it when an error returns early.
pub fn create_on(
    host: &HostPaths,
    config: &MemoryConfig,
    ranges: &[(GuestAddress, usize)],
) -> Result<GuestMemoryMmap, MemoryError> {
    let size: u64 = ranges.iter().map(|r| r.1 as u64).sum();
    let page = preflight(host, config, ranges)?;
    let mem = match config.backend() {
        Backend::Anonymous => {
            let mapping = map::Mapping {
                file: None,
                shared: false,
                hugepages: None,
            };
            mapping.map(ranges)?
        }
        Backend::Memfd { hugepages } => {
            let file = Arc::new(memfd::create(size, hugepages)?);
            let mapping = map::Mapping {
                file: Some(&file),
                shared: config.shared,
                hugepages,
            };
            mapping.map(ranges)?
        }
        Backend::Hugetlbfs { dir, .. } => {
            let (vm_dir, file) = hugetlbfs::VmDir::create(dir, size)?;
            let file = Arc::new(file);
            let mapping = map::Mapping {
                file: Some(&file),
                shared: config.shared,
                hugepages: Some(page),
            };
            let mem = mapping.map(ranges)?;
            vm_dir.remove()?;
            mem
        }
    };
    if config.prefault {
        let took = prefault::populate(&mem, page)?;
        log::info!(
            "guest RAM: {} MiB in {} pages prefaulted in {} ms",
            size >> 20,
            config::human_size(page),
            took.as_millis()
        );
    }
    Ok(mem)
}

/// Registers every region of `mem` with KVM, one slot per region.
pub fn register_with_kvm(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region's mapping is owned by `mem`, which the VM keeps alive for as long as the
        // VM fd exists, and the guest range comes from the non-overlapping layout of `mem`.
        unsafe { vm.set_user_memory_region(desc) }
            .map_err(|source| MemoryError::RegisterSlot { slot, source })?;
    }
    Ok(())
}
