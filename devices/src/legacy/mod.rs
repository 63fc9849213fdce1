//! Legacy PC devices on the port-I/O bus.
//!
//! Port map (the ACPI tables in `vmm::arch::x86_64::acpi` announce the power-management ports):
//! - 0x3f8..0x400 COM1, IRQ 4 (`serial`)
//! - 0x60, 0x64   i8042 controller: only the CPU reset command (`i8042`)
//! - 0x80         POST/debug port (`debug_port`)
//! - 0x600        ACPI hardware-reduced sleep control, 0x601 sleep status, 0x602 reset (`acpi_pm`)

/// COM1 base port and its ISA IRQ.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// The interrupt of the ACPI Generic Event Device (GED) whose only event is the power button: an
/// ISA line no other device uses, edge-triggered through the IOAPIC.
pub const POWER_BUTTON_GSI: u32 = 5;
/// What the GED's `_EVT` notifies the power button device with: "button pressed".
pub const POWER_BUTTON_NOTIFY: u8 = 0x80;
/// i8042 data and command/status ports.
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// The command byte written to 0x64 that pulses the CPU reset line.
pub const I8042_RESET_COMMAND: u8 = 0xfe;
/// POST / debug port.
pub const DEBUG_PORT: u16 = 0x80;
/// ACPI hardware-reduced sleep control register (FADT SLEEP_CONTROL_REG), one byte:
/// bits 2..=4 SLP_TYPx, bit 5 SLP_EN.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// ACPI sleep status register (FADT SLEEP_STATUS_REG), one byte: bit 7 WAK_STS.
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
/// ACPI reset register (FADT RESET_REG) and the value that resets.
pub const ACPI_RESET_PORT: u16 = 0x602;
pub const ACPI_RESET_VALUE: u8 = 0x01;
/// SLP_TYPx of S5 (soft off), as the DSDT's `_S5_` package announces it.
pub const ACPI_S5_SLP_TYP: u8 = 5;
/// SLP_EN bit of the sleep control register.
pub const ACPI_SLP_EN: u8 = 1 << 5;

pub mod acpi_pm;
pub mod debug_port;
pub mod i8042;
pub mod serial;

pub use acpi_pm::{AcpiPm, ACPI_PM_PORT_SPAN};
pub use debug_port::{DebugPort, PostCodes};
pub use i8042::{I8042, I8042_PORT_SPAN};
pub use serial::{SerialConsole, SerialError, SERIAL_PORT_SPAN};
