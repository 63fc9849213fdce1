//! Initramfs placement: page-aligned, as high as the kernel allows, above the kernel.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("cannot read the initramfs: {0}")]
    Read(std::io::Error),
    #[error("the initramfs is {size} bytes but only {room} bytes of guest RAM are free for it between the kernel ({lowest:#x}) and {highest:#x}: raise --memory or shrink the initramfs")]
    DoesNotFit {
        size: u64,
        room: u64,
        lowest: u64,
        highest: u64,
    },
    #[error("cannot copy the initramfs into guest memory at {addr:#x}: {source}")]
    Copy {
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
}

const PAGE_SIZE: u64 = 0x1000;

/// Copies `file` to the highest page-aligned address where it ends at or below `highest` and
/// starts at or above `lowest`. Returns its address and size.
pub fn load(
    mem: &GuestMemoryMmap,
    file: &mut File,
    lowest: u64,
    highest: u64,
) -> Result<(GuestAddress, u64), InitramfsError> {
    let size = file.metadata().map_err(InitramfsError::Read)?.len();
    let lowest = lowest.next_multiple_of(PAGE_SIZE);
    let room = highest.saturating_sub(lowest);
    let too_big = InitramfsError::DoesNotFit {
        size,
        room,
        lowest,
        highest,
    };
    let addr = match highest.checked_sub(size) {
        Some(top) => top / PAGE_SIZE * PAGE_SIZE,
        None => return Err(too_big),
    };
    if addr < lowest {
        return Err(too_big);
    }
    let len = usize::try_from(size).map_err(|_| too_big)?;
    file.seek(SeekFrom::Start(0))
        .map_err(InitramfsError::Read)?;
    mem.read_exact_volatile_from(GuestAddress(addr), file, len)
        .map_err(|source| InitramfsError::Copy { addr, source })?;
    Ok((GuestAddress(addr), size))
}
