//! Paddock's VM: KVM wrappers, guest memory, x86_64 boot, vCPU threads and the VM lifecycle.

pub mod arch;
pub mod fs;
pub mod interrupts;
pub mod kvm;
pub mod memory;
pub mod net;
pub mod pci_bars;
pub mod pinning;
pub mod shutdown;
pub mod threads;
pub mod vcpu;
pub mod virtio_plug;
pub mod vm;
