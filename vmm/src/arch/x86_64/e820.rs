//! The guest's physical memory map, as both the Linux zero page (e820) and the PVH start info
//! (hvm_memmap_table) describe it.

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::layout;

/// e820 / hvm_memmap entry types (the two protocols share the numbering).
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

impl MemoryMapEntry {
    fn end(&self) -> u64 {
        self.addr + self.size
    }
}

/// Usable RAM from the guest memory regions (the EBDA/BIOS area below 1 MiB cut out), plus the
/// reserved ranges a PC has there: the BIOS area, the PCI ECAM window, the IOAPIC and LAPIC pages.
/// Sorted by address, adjacent ranges of one type merged.
pub fn memory_map(mem: &GuestMemoryMmap) -> Vec<MemoryMapEntry> {
    let mut entries = Vec::new();
    for region in mem.iter() {
        let start = region.start_addr().0;
        let end = start + region.len();
        if start < layout::EBDA_START {
            push_range(&mut entries, start, end.min(layout::EBDA_START), E820_RAM);
        }
        push_range(
            &mut entries,
            start.max(layout::HIGH_MEMORY_START),
            end,
            E820_RAM,
        );
    }
    let reserved = [
        (layout::EBDA_START, layout::HIGH_MEMORY_START),
        (
            layout::PCI_ECAM_START,
            layout::PCI_ECAM_START + layout::PCI_ECAM_SIZE,
        ),
        (
            layout::IOAPIC_START,
            layout::IOAPIC_START + layout::IOAPIC_SIZE,
        ),
        (
            layout::LAPIC_START,
            layout::LAPIC_START + layout::LAPIC_SIZE,
        ),
    ];
    for (start, end) in reserved {
        push_range(&mut entries, start, end, E820_RESERVED);
    }
    entries.sort_by_key(|e| e.addr);
    let mut merged: Vec<MemoryMapEntry> = Vec::with_capacity(entries.len());
    for entry in entries {
        match merged.last_mut() {
            Some(last) if last.kind == entry.kind && last.end() == entry.addr => {
                last.size += entry.size
            }
            _ => merged.push(entry),
        }
    }
    merged
}

fn push_range(entries: &mut Vec<MemoryMapEntry>, start: u64, end: u64, kind: u32) {
    if end > start {
        entries.push(MemoryMapEntry {
            addr: start,
            size: end - start,
            kind,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::ram_regions;

    #[test]
    fn low_ram_split_around_bios_area_and_hole() {
        let mem = GuestMemoryMmap::from_ranges(&ram_regions(layout::MMIO32_START + (1 << 30)))
            .expect("map guest memory");
        let map = memory_map(&mem);
        let expect = [
            (0, layout::EBDA_START, E820_RAM),
            (
                layout::EBDA_START,
                layout::HIGH_MEMORY_START - layout::EBDA_START,
                E820_RESERVED,
            ),
            (
                layout::HIGH_MEMORY_START,
                layout::MMIO32_START - layout::HIGH_MEMORY_START,
                E820_RAM,
            ),
            (layout::PCI_ECAM_START, layout::PCI_ECAM_SIZE, E820_RESERVED),
            (layout::IOAPIC_START, layout::IOAPIC_SIZE, E820_RESERVED),
            (layout::LAPIC_START, layout::LAPIC_SIZE, E820_RESERVED),
            (layout::HIGH_RAM_START, 1 << 30, E820_RAM),
        ];
        let got: Vec<_> = map.iter().map(|e| (e.addr, e.size, e.kind)).collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn small_guest_has_no_high_ram() {
        let mem = GuestMemoryMmap::from_ranges(&ram_regions(64 << 20)).expect("map guest memory");
        let map = memory_map(&mem);
        assert_eq!(map[2].addr, layout::HIGH_MEMORY_START);
        assert_eq!(map[2].size, (64 << 20) - layout::HIGH_MEMORY_START);
        assert!(map.iter().all(|e| e.addr < layout::HIGH_RAM_START));
    }
}
