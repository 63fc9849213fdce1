//! Everything a Paddock guest can touch. A device never depends on the VM builder: the `vmm` crate
//! wires these models to KVM.

pub mod bus;
pub mod exit;
pub mod interrupt;
pub mod legacy;
pub mod pci;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use exit::{ExitRequest, ExitSignal};
