//! x86_64 direct kernel boot: memory layout, kernel loading, ACPI tables and vCPU register state.
//!
//! CONTRACT (used by `vm.rs` / `vcpu.rs`; the bodies below are placeholders to be written):

use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};

pub mod layout;

/// Where and how a vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// 64-bit Linux boot protocol: long mode, paging identity-mapped, RSI = boot_params.
    Linux64 { rip: GuestAddress, boot_params: GuestAddress },
    /// PVH: 32-bit protected mode, paging off, EBX = hvm_start_info.
    Pvh { eip: GuestAddress, start_info: GuestAddress },
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {}

#[derive(Debug, thiserror::Error)]
pub enum VcpuSetupError {}

/// Guest RAM ranges for `size` bytes, split around the 32-bit PCI hole (layout::MMIO32_START..4 GiB).
pub fn ram_regions(_size: u64) -> Vec<(GuestAddress, usize)> {
    todo!()
}

/// Loads the kernel (bzImage, or ELF vmlinux using its PVH note when present), the initramfs, the
/// command line, boot params / start info with the e820 map, and the ACPI tables for `ncpus`.
pub fn load_linux(
    _mem: &GuestMemoryMmap,
    _kernel: &mut std::fs::File,
    _initramfs: Option<&mut std::fs::File>,
    _cmdline: &str,
    _ncpus: u8,
) -> Result<EntryPoint, BootError> {
    todo!()
}

/// CPUID (from KVM_GET_SUPPORTED_CPUID, topology for `ncpus`), MSRs, FPU, LAPIC LINT0/LINT1, and for
/// vCPU 0 the registers, segments and page tables of `entry`. APs wait for INIT/SIPI in the in-kernel LAPIC.
pub fn configure_vcpu(
    _kvm: &Kvm,
    _vcpu: &VcpuFd,
    _id: u8,
    _ncpus: u8,
    _entry: &EntryPoint,
    _mem: &GuestMemoryMmap,
) -> Result<(), VcpuSetupError> {
    todo!()
}
