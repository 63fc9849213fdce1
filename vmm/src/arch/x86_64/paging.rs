//! Identity-mapped page tables for the 64-bit entry: the first 4 GiB with 2 MiB pages.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;

#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    #[error(
        "cannot write the boot page tables at {addr:#x}: {source} (guest RAM must start at 0)"
    )]
    Write {
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
}

/// Page directories: one per GiB mapped.
pub const PD_COUNT: u64 = 4;
const ENTRIES: u64 = 512;
const PRESENT_WRITABLE: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

fn write_table(mem: &GuestMemoryMmap, addr: u64, entries: &[u64]) -> Result<(), PagingError> {
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(addr))
        .map_err(|source| PagingError::Write { addr, source })
}

/// Writes PML4 -> PDPT -> `PD_COUNT` page directories and returns the CR3 value.
pub fn write_identity_tables(mem: &GuestMemoryMmap) -> Result<u64, PagingError> {
    let mut pml4 = vec![0u64; ENTRIES as usize];
    pml4[0] = layout::PDPT_START | PRESENT_WRITABLE;
    write_table(mem, layout::PML4_START, &pml4)?;

    let mut pdpt = vec![0u64; ENTRIES as usize];
    for (gib, entry) in pdpt.iter_mut().take(PD_COUNT as usize).enumerate() {
        *entry = (layout::PD_START + gib as u64 * 0x1000) | PRESENT_WRITABLE;
    }
    write_table(mem, layout::PDPT_START, &pdpt)?;

    let pds: Vec<u64> = (0..PD_COUNT * ENTRIES)
        .map(|page| (page << 21) | PAGE_SIZE_2M | PRESENT_WRITABLE)
        .collect();
    write_table(mem, layout::PD_START, &pds)?;
    Ok(layout::PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables the way the MMU does for a 2 MiB page.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let read = |addr: u64| mem.read_obj::<u64>(GuestAddress(addr)).expect("read table");
        let pml4e = read(cr3 + ((va >> 39) & 0x1ff) * 8);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = read((pml4e & !0xfff) + ((va >> 30) & 0x1ff) * 8);
        if pdpte & 1 == 0 {
            return None;
        }
        let pde = read((pdpte & !0xfff) + ((va >> 21) & 0x1ff) * 8);
        if pde & 1 == 0 || pde & PAGE_SIZE_2M == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff & 0x000f_ffff_ffff_ffff) | (va & 0x1f_ffff))
    }

    #[test]
    fn first_4_gib_map_to_themselves() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("map");
        let cr3 = write_identity_tables(&mem).expect("write");
        for va in [
            0,
            0x1000,
            0x20_0000,
            0x100_0000,
            0xbfff_f123,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&mem, cr3, 0x1_0000_0000), None);
    }
}
