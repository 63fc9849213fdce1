//! Guest RAM: sizing checks and the anonymous backend, registered with KVM as memory slots.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

pub mod size;

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
    #[error("cannot map {size} MiB of guest memory: {source}")]
    Map {
        size: u64,
        source: vm_memory::mmap::FromRangesError,
    },
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

/// Maps anonymous private RAM for the given ranges.
pub fn create_anonymous(
    regions: &[(vm_memory::GuestAddress, usize)],
) -> Result<GuestMemoryMmap, MemoryError> {
    let size = regions.iter().map(|r| r.1 as u64).sum::<u64>();
    GuestMemoryMmap::from_ranges(regions).map_err(|source| MemoryError::Map {
        size: size >> 20,
        source,
    })
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
