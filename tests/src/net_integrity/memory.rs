//! Guest memory as the driver expects it to be: a shadow copy of the checked region, which starts
//! as a pattern that depends on each byte's address (so a byte moved elsewhere shows too), and
//! follows every write the driver makes. Whatever differs from the shadow, the device wrote.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::IntegrityError;

/// The background byte at `addr`.
pub fn pattern(addr: u64) -> u8 {
    (addr.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

/// A byte that differs from what the driver last put there.
#[derive(Debug)]
pub struct Change {
    pub addr: u64,
    pub expected: u8,
    pub got: u8,
    /// Bytes that differ in the range looked at.
    pub count: usize,
}

pub struct Shadow {
    base: u64,
    bytes: Vec<u8>,
}

fn memory_error(addr: u64, e: vm_memory::GuestMemoryError) -> IntegrityError {
    IntegrityError::Memory {
        addr,
        why: e.to_string(),
    }
}

impl Shadow {
    /// Fills `base..end` of `mem` with the pattern.
    pub fn new(mem: &GuestMemoryMmap, base: u64, end: u64) -> Result<Self, IntegrityError> {
        let bytes: Vec<u8> = (base..end).map(pattern).collect();
        mem.write_slice(&bytes, GuestAddress(base))
            .map_err(|e| memory_error(base, e))?;
        Ok(Self { base, bytes })
    }

    fn range(&self, addr: u64, len: usize) -> std::ops::Range<usize> {
        let start = (addr - self.base) as usize;
        start..start + len
    }

    /// The driver writes `bytes` at `addr`.
    pub fn write(
        &mut self,
        mem: &GuestMemoryMmap,
        addr: u64,
        bytes: &[u8],
    ) -> Result<(), IntegrityError> {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|e| memory_error(addr, e))?;
        let range = self.range(addr, bytes.len());
        self.bytes[range].copy_from_slice(bytes);
        Ok(())
    }

    /// Puts back what the driver last wrote at `addr..addr+len` (after the device used it).
    pub fn restore(
        &self,
        mem: &GuestMemoryMmap,
        addr: u64,
        len: usize,
    ) -> Result<(), IntegrityError> {
        mem.write_slice(&self.bytes[self.range(addr, len)], GuestAddress(addr))
            .map_err(|e| memory_error(addr, e))
    }

    /// The first byte of `addr..addr+len` that is not what the driver put there.
    pub fn changed(
        &self,
        mem: &GuestMemoryMmap,
        addr: u64,
        len: usize,
    ) -> Result<Option<Change>, IntegrityError> {
        if len == 0 {
            return Ok(None);
        }
        let mut now = vec![0u8; len];
        mem.read_slice(&mut now, GuestAddress(addr))
            .map_err(|e| memory_error(addr, e))?;
        let want = &self.bytes[self.range(addr, len)];
        Ok(
            super::first_difference(&now, want).map(|(at, count)| Change {
                addr: addr + at as u64,
                expected: want[at],
                got: now[at],
                count,
            }),
        )
    }

    /// The first change anywhere in the shadowed region.
    pub fn changed_anywhere(
        &self,
        mem: &GuestMemoryMmap,
    ) -> Result<Option<Change>, IntegrityError> {
        self.changed(mem, self.base, self.bytes.len())
    }
}
