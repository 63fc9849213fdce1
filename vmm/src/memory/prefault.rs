//! `prefault=on`: allocate every page before the guest runs, so that start-up pays once and a
//! running guest never waits on (or fails at) a page allocation.

use super::GuestMemoryMmap;
use std::time::{Duration, Instant};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

#[derive(Debug, thiserror::Error)]
#[error(
    "prefaulting guest RAM at {start:#x} failed: {source}: lower --memory or leave prefault= off"
)]
pub struct PrefaultError {
    start: u64,
    source: std::io::Error,
}

/// Write-faults every page of every region; returns how long it took.
///
/// `MADV_POPULATE_WRITE` (Linux 5.14) does it in one call per region; kernels without it (EINVAL)
/// get a write to each page. Writing zero is harmless: nothing has been loaded into guest RAM yet.
pub fn populate(mem: &GuestMemoryMmap, page_size: u64) -> Result<Duration, PrefaultError> {
    let started = Instant::now();
    for region in mem.iter() {
        let addr = region.as_ptr();
        let len = region.len() as usize;
        // SAFETY: `addr..addr+len` is exactly this region's live read-write mapping; the advice
        // only faults pages in and changes no contents.
        if unsafe { libc::madvise(addr.cast(), len, libc::MADV_POPULATE_WRITE) } == 0 {
            continue;
        }
        let source = std::io::Error::last_os_error();
        if source.raw_os_error() != Some(libc::EINVAL) {
            return Err(PrefaultError {
                start: region.start_addr().0,
                source,
            });
        }
        for offset in (0..len).step_by(page_size as usize) {
            // SAFETY: `offset < len`, so the byte is inside the mapping, which is writable and not
            // yet in use by any guest or device.
            unsafe { addr.add(offset).write_volatile(0) };
        }
    }
    Ok(started.elapsed())
}
