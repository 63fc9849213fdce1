//! The driver's bookkeeping of descriptor chains: slots of buffers laid out in guest memory with
//! gaps between them, a free list of descriptors, and which head is out at the device with which
//! slot, so that a head used twice, or never posted, is caught.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{table_of, IntegrityError, TABLE_ENTRIES};
use crate::bench::net::ring::{encode_desc, DriverRing, RingError, DESC_F_INDIRECT, DESC_F_NEXT};

/// One buffer of a chain: where, how long, and its descriptor flags besides NEXT.
#[derive(Clone, Copy, Debug)]
pub struct Buffer {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
}

/// A chain's buffers in guest memory, reused every time the driver posts it.
#[derive(Clone, Debug)]
pub struct Slot {
    pub buffers: Vec<Buffer>,
    /// Bytes the buffers take.
    pub capacity: usize,
}

impl Slot {
    pub fn new(buffers: Vec<Buffer>) -> Self {
        let capacity = buffers.iter().map(|b| b.len as usize).sum();
        Self { buffers, capacity }
    }

    /// The first `len` bytes of the chain, buffer after buffer.
    pub fn gather(&self, mem: &GuestMemoryMmap, len: usize) -> Result<Vec<u8>, IntegrityError> {
        let mut out = vec![0u8; len.min(self.capacity)];
        let mut at = 0;
        for b in &self.buffers {
            if at == out.len() {
                break;
            }
            let n = (b.len as usize).min(out.len() - at);
            mem.read_slice(&mut out[at..at + n], GuestAddress(b.addr))
                .map_err(|e| IntegrityError::Memory {
                    addr: b.addr,
                    why: e.to_string(),
                })?;
            at += n;
        }
        Ok(out)
    }

    /// The parts of the buffers past the first `used` bytes, as (address, length).
    pub fn beyond(&self, used: usize) -> Vec<(u64, usize)> {
        let mut skip = used;
        let mut out = Vec::new();
        for b in &self.buffers {
            let len = b.len as usize;
            if skip >= len {
                skip -= len;
                continue;
            }
            out.push((b.addr + skip as u64, len - skip));
            skip = 0;
        }
        out
    }
}

/// Says where an address of the checked region lies: in which slot's buffer, or in a gap.
pub fn locate(slots: &[Slot], addr: u64, state: impl Fn(usize) -> &'static str) -> String {
    let mut before: Option<(usize, usize, &Buffer)> = None;
    for (s, slot) in slots.iter().enumerate() {
        for (i, b) in slot.buffers.iter().enumerate() {
            if (b.addr..b.addr + u64::from(b.len)).contains(&addr) {
                return format!(
                    "byte {} of buffer {i} ({} B at {:#x}) of slot {s}, which is {}",
                    addr - b.addr,
                    b.len,
                    b.addr,
                    state(s)
                );
            }
            if b.addr <= addr && before.is_none_or(|(_, _, p)| p.addr < b.addr) {
                before = Some((s, i, b));
            }
        }
    }
    match before {
        Some((s, i, b)) => format!(
            "a guard byte {} past buffer {i} ({} B at {:#x}) of slot {s}, which is {}",
            addr - b.addr - u64::from(b.len),
            b.len,
            b.addr,
            state(s)
        ),
        None => "a guard byte before every buffer".to_string(),
    }
}

/// A chain the device holds.
struct Out {
    slot: usize,
    descs: Vec<u16>,
}

/// Descriptors and heads of one ring, as the driver tracks them.
pub struct ChainPoster {
    free: Vec<u16>,
    out: Vec<Option<Out>>,
    /// Heads written but not yet in the available ring.
    ready: Vec<u16>,
    /// Heads out at the device now.
    pub outstanding: usize,
    /// Slot `s` uses indirect table `first_table + s`.
    first_table: usize,
}

impl ChainPoster {
    pub fn new(size: u16, first_table: usize) -> Self {
        Self {
            first_table,
            free: (0..size).rev().collect(),
            out: (0..size).map(|_| None).collect(),
            ready: Vec::new(),
            outstanding: 0,
        }
    }

    /// Writes `buffers` of `slot` as a chain (straight in the ring's table, or through the
    /// slot's indirect table) and queues it for `publish`. False: the ring has too few free
    /// descriptors now.
    pub fn add(
        &mut self,
        ring: &DriverRing,
        slot: usize,
        buffers: &[Buffer],
        indirect: bool,
    ) -> Result<bool, RingError> {
        let needed = if indirect { 1 } else { buffers.len() };
        if self.free.len() < needed || buffers.len() > TABLE_ENTRIES {
            return Ok(false);
        }
        let descs: Vec<u16> = (0..needed).filter_map(|_| self.free.pop()).collect();
        let head = descs[0];
        if indirect {
            let table: Vec<[u8; 16]> = buffers
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let last = i + 1 == buffers.len();
                    let (flags, next) = if last {
                        (b.flags, 0)
                    } else {
                        (b.flags | DESC_F_NEXT, i as u16 + 1)
                    };
                    encode_desc(b.addr, b.len, flags, next)
                })
                .collect();
            let table_addr = table_of(self.first_table + slot);
            ring.set_indirect_table(table_addr, &table)?;
            ring.set_desc(
                head,
                table_addr,
                (16 * buffers.len()) as u32,
                DESC_F_INDIRECT,
                0,
            )?;
        } else {
            for (i, b) in buffers.iter().enumerate() {
                let (flags, next) = match descs.get(i + 1) {
                    Some(&next) => (b.flags | DESC_F_NEXT, next),
                    None => (b.flags, 0),
                };
                ring.set_desc(descs[i], b.addr, b.len, flags, next)?;
            }
        }
        self.out[usize::from(head)] = Some(Out { slot, descs });
        self.ready.push(head);
        self.outstanding += 1;
        Ok(true)
    }

    /// Makes the queued chains available to the device.
    pub fn publish(&mut self, ring: &mut DriverRing) -> Result<(), RingError> {
        ring.publish(&self.ready)?;
        self.ready.clear();
        Ok(())
    }

    /// The device used `head`: frees its descriptors and returns its slot; a head that is not
    /// out at the device is a violation.
    pub fn used(&mut self, head: u16) -> Result<usize, IntegrityError> {
        let out = self
            .out
            .get_mut(usize::from(head))
            .and_then(Option::take)
            .ok_or_else(|| {
                super::violation(format!(
                    "the device used head {head}, which the driver did not post or already got back"
                ))
            })?;
        self.free.extend(out.descs);
        self.outstanding -= 1;
        Ok(out.slot)
    }

    /// Whether slot `slot` is out at the device.
    pub fn holds(&self, slot: usize) -> bool {
        self.out.iter().flatten().any(|o| o.slot == slot)
    }
}
