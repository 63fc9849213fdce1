//! The driver side of one virtio split ring in guest memory, as a guest's virtio-net driver runs
//! it: it writes descriptors, publishes chains in the available ring, kicks only when the device
//! asked for it (VIRTIO_F_EVENT_IDX) and sleeps on the queue's interrupt until used entries come.

use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Descriptor flags (virtio 1.2, 2.7.5).
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("guest memory access at {addr:#x} failed: {source}")]
    Memory {
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
    #[error("the ring does not fit the device's queue: {0}")]
    Queue(String),
    #[error("kicking the device failed: {0}")]
    Kick(std::io::Error),
    #[error("waiting for the queue interrupt failed: {0}")]
    Interrupt(std::io::Error),
    #[error(
        "the device put head {head} in the used ring, which is not a chain the driver gave it"
    )]
    BadUsed { head: u32 },
}

/// Bytes a ring of `size` entries takes from its base (descriptor table, available ring, used
/// ring, each aligned as the spec asks).
pub fn ring_bytes(size: u16) -> u64 {
    let s = u64::from(size);
    let avail = 16 * s;
    let used = (avail + 6 + 2 * s).next_multiple_of(4);
    used + 6 + 8 * s
}

/// `vring_need_event`: whether moving an index from `old` to `new` crosses the other side's
/// `event` index.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// A split-ring descriptor as it sits in guest memory (little endian).
pub fn encode_desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    d
}

pub struct DriverRing {
    mem: GuestMemoryMmap,
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    /// Next available index the driver publishes.
    avail_idx: u16,
    /// Next used index the driver has not read.
    last_used: u16,
    kick: EventFd,
    interrupt: EventFd,
    /// Kicks written and interrupts taken, for the report.
    pub kicks: u64,
    pub interrupts: u64,
}

impl DriverRing {
    /// A zeroed ring of `size` entries at `base`; `kick` is the queue's notify eventfd, `interrupt`
    /// the one its vector fires.
    pub fn new(
        mem: &GuestMemoryMmap,
        base: GuestAddress,
        size: u16,
        kick: EventFd,
        interrupt: EventFd,
    ) -> Result<Self, RingError> {
        let s = u64::from(size);
        let desc = base;
        let avail = base.unchecked_add(16 * s);
        let used = base.unchecked_add((16 * s + 6 + 2 * s).next_multiple_of(4));
        let ring = Self {
            mem: mem.clone(),
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            last_used: 0,
            kick,
            interrupt,
            kicks: 0,
            interrupts: 0,
        };
        ring.write(base, &vec![0u8; ring_bytes(size) as usize])?;
        Ok(ring)
    }

    fn write(&self, addr: GuestAddress, bytes: &[u8]) -> Result<(), RingError> {
        self.mem
            .write_slice(bytes, addr)
            .map_err(|source| RingError::Memory {
                addr: addr.0,
                source,
            })
    }

    fn store16(&self, addr: GuestAddress, val: u16, order: Ordering) -> Result<(), RingError> {
        self.mem
            .store(val.to_le(), addr, order)
            .map_err(|source| RingError::Memory {
                addr: addr.0,
                source,
            })
    }

    fn load16(&self, addr: GuestAddress, order: Ordering) -> Result<u16, RingError> {
        self.mem
            .load::<u16>(addr, order)
            .map(u16::from_le)
            .map_err(|source| RingError::Memory {
                addr: addr.0,
                source,
            })
    }

    fn read_obj<T: vm_memory::ByteValued>(&self, addr: GuestAddress) -> Result<T, RingError> {
        self.mem.read_obj(addr).map_err(|source| RingError::Memory {
            addr: addr.0,
            source,
        })
    }

    /// The device's view of this ring, as the transport builds it when the driver sets DRIVER_OK.
    pub fn device_queue(&self) -> Result<Queue, RingError> {
        let err = |e: virtio_queue::Error| RingError::Queue(e.to_string());
        let mut q = Queue::new(self.size).map_err(err)?;
        q.try_set_size(self.size).map_err(err)?;
        q.try_set_desc_table_address(self.desc).map_err(err)?;
        q.try_set_avail_ring_address(self.avail).map_err(err)?;
        q.try_set_used_ring_address(self.used).map_err(err)?;
        q.set_event_idx(true);
        q.set_ready(true);
        if !q.is_valid(&self.mem) {
            return Err(RingError::Queue("rings outside guest memory".into()));
        }
        Ok(q)
    }

    /// Writes descriptor `index`.
    pub fn set_desc(
        &self,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<(), RingError> {
        let d = encode_desc(addr, len, flags, next);
        self.write(self.desc.unchecked_add(16 * u64::from(index)), &d)
    }

    /// Writes `descs` as an indirect descriptor table at `table` (each entry's `next` is an
    /// index into the table itself).
    pub fn set_indirect_table(&self, table: u64, descs: &[[u8; 16]]) -> Result<(), RingError> {
        self.write(GuestAddress(table), &descs.concat())
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Puts the chains starting at `heads` in the available ring, makes them visible, and kicks
    /// the device if it asked for a kick at an index now passed.
    pub fn publish(&mut self, heads: &[u16]) -> Result<(), RingError> {
        if heads.is_empty() {
            return Ok(());
        }
        let old = self.avail_idx;
        for &head in heads {
            let slot = u64::from(self.avail_idx % self.size);
            self.store16(
                self.avail.unchecked_add(4 + 2 * slot),
                head,
                Ordering::Relaxed,
            )?;
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        // The entries must be visible before the index that publishes them.
        self.store16(
            self.avail.unchecked_add(2),
            self.avail_idx,
            Ordering::Release,
        )?;
        // And the index before reading the device's avail_event (pairs with the device's fence
        // between writing avail_event and reading the index again).
        fence(Ordering::SeqCst);
        let avail_event = self.load16(
            self.used.unchecked_add(4 + 8 * u64::from(self.size)),
            Ordering::Relaxed,
        )?;
        if need_event(avail_event, self.avail_idx, old) {
            self.kick.write(1).map_err(RingError::Kick)?;
            self.kicks += 1;
        }
        Ok(())
    }

    /// Moves the used entries the device added since the last call into `out` as (head, len).
    pub fn take_used(&mut self, out: &mut Vec<(u16, u32)>) -> Result<usize, RingError> {
        let idx = self.load16(self.used.unchecked_add(2), Ordering::Acquire)?;
        let count = idx.wrapping_sub(self.last_used);
        for _ in 0..count {
            let slot = u64::from(self.last_used % self.size);
            let entry: [u32; 2] = self.read_obj(self.used.unchecked_add(4 + 8 * slot))?;
            let head = u32::from_le(entry[0]);
            if head >= u32::from(self.size) {
                return Err(RingError::BadUsed { head });
            }
            out.push((head as u16, u32::from_le(entry[1])));
            self.last_used = self.last_used.wrapping_add(1);
        }
        Ok(usize::from(count))
    }

    /// Asks for an interrupt once `after` more used entries are there (1: the next one), then
    /// sleeps until it comes or `timeout` passes. Returns at once when entries are already there.
    pub fn wait_used(&mut self, after: u16, timeout: Duration) -> Result<(), RingError> {
        let event = self.last_used.wrapping_add(after.max(1) - 1);
        self.store16(
            self.avail.unchecked_add(4 + 2 * u64::from(self.size)),
            event,
            Ordering::Relaxed,
        )?;
        // used_event must be visible before the used index is read again (pairs with the
        // device's fence between the used index and its read of used_event).
        fence(Ordering::SeqCst);
        let idx = self.load16(self.used.unchecked_add(2), Ordering::Acquire)?;
        if idx.wrapping_sub(self.last_used) >= after.max(1) {
            return Ok(());
        }
        let mut pfd = libc::pollfd {
            fd: self.interrupt.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, its count, a timeout; poll writes only `revents`.
        let ret = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ret < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(RingError::Interrupt(e));
            }
        }
        if ret > 0 {
            // Non-blocking: EAGAIN just means another wake-up took it.
            if self.interrupt.read().is_ok() {
                self.interrupts += 1;
            }
        }
        Ok(())
    }

    /// Chains the device holds now (published, not yet seen used).
    pub fn in_flight(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.last_used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_matches_the_spec_examples() {
        // The device asked to be told once index 5 is published.
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 8, 3));
        assert!(!need_event(5, 5, 3));
        assert!(!need_event(9, 8, 3));
        // Across the 16-bit wrap.
        assert!(need_event(0xffff, 2, 0xfff0));
    }

    #[test]
    fn ring_layout_is_aligned() {
        // Available ring at 4096 (518 bytes), used ring at 4616 (aligned to 4), 2054 bytes.
        assert_eq!(ring_bytes(256), 4616 + 2054);
        assert_eq!(ring_bytes(2) % 2, 0);
    }
}
