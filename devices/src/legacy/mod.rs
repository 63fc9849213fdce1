//! Legacy PC devices on the port-I/O bus.
//!
//! Port map (the ACPI tables in `vmm::arch::x86_64::acpi` announce the power-management ports):
//! - 0x3f8..0x400 COM1, IRQ 4 (`serial`)
//! - 0x60, 0x64   i8042 controller: only the CPU reset command (`i8042`)
//! - 0x80         POST/debug port (`debug_port`)
//! - 0x600        ACPI hardware-reduced sleep control, 0x601 sleep status, 0x602 reset (`acpi_pm`)
