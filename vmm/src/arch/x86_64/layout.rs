//! Guest physical memory layout.
//!
//! Low memory (below 1 MiB) holds what the VMM writes for the boot:
//! ```text
//! 0x0000_0500  GDT (boot code/data segments and a TSS descriptor)
//! 0x0000_6000  PVH hvm_start_info, then its module list and memory map
//! 0x0000_7000  Linux zero page (boot_params)
//! 0x0000_8ff0  initial stack pointer of the boot vCPU (grows down)
//! 0x0000_9000  identity-mapped page tables: PML4, PDPT, 4 page directories (4 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA/BIOS area (reserved in the e820 map) ...
//! 0x000e_0000  ... ACPI tables, RSDP first so the legacy 0xe0000..0xfffff scan finds it
//! 0x0010_0000  kernel (bzImage payload at its code32_start, ELF at its physical addresses)
//! ```
//! The initramfs goes as high as possible in RAM below the 32-bit hole.

/// Start of the 32-bit PCI hole; RAM above this goes above 4 GiB.
pub const MMIO32_START: u64 = 0xc000_0000;
/// Size of the 32-bit hole (ECAM, 32-bit BARs, IOAPIC, LAPIC).
pub const MMIO32_SIZE: u64 = 0x4000_0000;
/// First address above 4 GiB.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;

/// PCI Express ECAM (MMCONFIG) window for segment 0, buses 0..=255 (1 MiB per bus).
pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;
/// 32-bit window for PCI BARs: from the start of the hole up to the ECAM window.
pub const PCI_MMIO32_START: u64 = MMIO32_START;
pub const PCI_MMIO32_SIZE: u64 = PCI_ECAM_START - MMIO32_START;
/// IOAPIC registers (KVM's in-kernel IOAPIC).
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Local APIC registers (KVM's in-kernel LAPIC).
pub const LAPIC_START: u64 = 0xfee0_0000;
pub const LAPIC_SIZE: u64 = 0x1000;

/// End of the conventional RAM below 1 MiB that the e820 map reports usable.
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of RAM above the legacy BIOS area.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;

/// Boot GDT.
pub const GDT_START: u64 = 0x500;
/// PVH hvm_start_info, its module list and its memory map.
pub const PVH_START_INFO: u64 = 0x6000;
pub const PVH_MODLIST: u64 = 0x6040;
pub const PVH_MEMMAP: u64 = 0x6080;
/// Linux zero page.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page tables: PML4, one PDPT, then `PD_COUNT` page directories.
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
/// Kernel command line and the most bytes reserved for it (including the NUL).
pub const CMDLINE_START: u64 = 0x2_0000;
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
/// ACPI tables: RSDP at the start of the BIOS read-only area, the other tables after it.
pub const RSDP_START: u64 = 0xe_0000;
pub const ACPI_TABLES_END: u64 = HIGH_MEMORY_START;

/// Size of the 64-bit PCI window for 64-bit BARs.
pub const PCI_MMIO64_SIZE: u64 = 32 << 30;

/// The 64-bit PCI window: the first `PCI_MMIO64_SIZE`-aligned address at or above both 4 GiB and
/// the end of guest RAM, so the window never overlaps RAM whatever its size.
pub fn pci_mmio64_window(ram_end: u64) -> (u64, u64) {
    let floor = ram_end.max(HIGH_RAM_START);
    let base = floor.div_ceil(PCI_MMIO64_SIZE) * PCI_MMIO64_SIZE;
    (base, PCI_MMIO64_SIZE)
}
