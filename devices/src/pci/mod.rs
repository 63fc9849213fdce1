//! PCI: configuration space, the root bus with type-1 and ECAM access, BAR placement and MSI-X.
//!
//! Wiring (done by the VMM): a [`PciRoot`] with a [`BarMapper`] (e.g. [`MmioBarMapper`] over the
//! MMIO bus); [`PciConfigIo`] on the port bus at 0xCF8 (8 ports); [`PciConfigMmio`] on the MMIO
//! bus at the ECAM base; devices added with a [`BarAllocator`] built from the layout's windows.

pub mod allocator;
pub mod bus;
pub mod config;
pub mod msix;

pub use allocator::{AllocatorError, BarAllocator, Window};
pub use bus::{
    BarMapError, BarMapper, BarWindow, MmioBarMapper, PciBusError, PciConfigIo, PciConfigMmio,
    PciDevice, PciHostBridge, PciRoot, CONFIG_IO_PORT, CONFIG_IO_PORT_SPAN, ECAM_BUS_SIZE,
};
pub use config::{Bar, BarKind, BarReprogram, ConfigError, PciConfig, PciIds};
pub use msix::{Msix, MsixError, MsixLayout, MsixVectors};
