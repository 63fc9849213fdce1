//! Guest physical memory layout.

/// Start of the 32-bit PCI hole; RAM above this goes above 4 GiB.
pub const MMIO32_START: u64 = 0xc000_0000;
/// Size of the 32-bit hole (ECAM, 32-bit BARs, IOAPIC, LAPIC).
pub const MMIO32_SIZE: u64 = 0x4000_0000;
/// First address above 4 GiB.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
