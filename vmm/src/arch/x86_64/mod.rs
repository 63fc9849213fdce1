//! x86_64 direct kernel boot: memory layout, kernel loading, ACPI tables and vCPU register state.
//!
//! CONTRACT (used by `vm.rs` / `vcpu.rs`): [`ram_regions`], [`load_linux`], [`configure_vcpu`] and
//! [`EntryPoint`].

use kvm_ioctls::{Kvm, VcpuFd};
use linux_loader::loader::{load_cmdline, Cmdline};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

pub mod acpi;
pub mod boot_params;
pub mod cpuid;
pub mod e820;
pub mod gdt;
pub mod initramfs;
pub mod kernel;
pub mod lapic;
pub mod layout;
pub mod msrs;
pub mod paging;
pub mod pvh;
pub mod regs;
pub mod reset_vector;

use acpi::AcpiError;
use boot_params::ZeroPageError;
use cpuid::CpuidError;
use initramfs::InitramfsError;
use kernel::{KernelError, KernelKind};
use lapic::LapicError;
use msrs::MsrError;
use pvh::PvhError;
use regs::RegsError;

/// Where and how a vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// 64-bit Linux boot protocol: long mode, paging identity-mapped, RSI = boot_params.
    Linux64 {
        rip: GuestAddress,
        boot_params: GuestAddress,
    },
    /// PVH: 32-bit protected mode, paging off, EBX = hvm_start_info.
    Pvh {
        eip: GuestAddress,
        start_info: GuestAddress,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot boot {0} vCPUs: give between 1 and 255")]
    NoCpus(u8),
    #[error("guest RAM must start at address 0 and reach past {needed:#x} to boot Linux (it ends at {end:#x}): raise --memory")]
    LowMemory { needed: u64, end: u64 },
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    #[error(
        "the kernel command line is {len} bytes but this kernel takes at most {max}: shorten it"
    )]
    CmdlineTooLong { len: usize, max: usize },
    #[error("invalid kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("cannot write the kernel command line at {addr:#x}: {source}")]
    WriteCmdline {
        addr: u64,
        source: linux_loader::loader::Error,
    },
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    #[error(transparent)]
    ZeroPage(#[from] ZeroPageError),
    #[error(transparent)]
    Pvh(#[from] PvhError),
    #[error(transparent)]
    ResetVector(#[from] reset_vector::ResetVectorError),
}

#[derive(Debug, thiserror::Error)]
pub enum VcpuSetupError {
    #[error("vCPU {id} is not below the vCPU count {ncpus}")]
    BadId { id: u8, ncpus: u8 },
    #[error("vCPU {id}: {source}")]
    Cpuid { id: u8, source: CpuidError },
    #[error("vCPU {id}: {source}")]
    Msrs { id: u8, source: MsrError },
    #[error("vCPU {id}: {source}")]
    Lapic { id: u8, source: LapicError },
    #[error("vCPU {id}: {source}")]
    Regs { id: u8, source: RegsError },
}

/// Guest RAM ranges for `size` bytes, split around the 32-bit PCI hole (layout::MMIO32_START..4 GiB).
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= layout::MMIO32_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), layout::MMIO32_START as usize),
            (
                GuestAddress(layout::HIGH_RAM_START),
                (size - layout::MMIO32_START) as usize,
            ),
        ]
    }
}

/// The PCI windows of a VM with this guest RAM: what the ACPI tables announce and the BAR
/// allocator hands out.
pub fn pci_windows(mem: &GuestMemoryMmap) -> acpi::PciWindows {
    let ram_end = mem
        .iter()
        .map(|r| r.start_addr().0 + r.len())
        .max()
        .unwrap_or(0);
    acpi::PciWindows::from_layout(layout::pci_mmio64_window(ram_end))
}

/// End of the RAM that starts at 0 (adjacent regions joined), below the 32-bit hole.
fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    let mut end = 0;
    while let Some(region) = mem.find_region(GuestAddress(end)) {
        end = region.start_addr().0 + region.len();
    }
    end.min(layout::MMIO32_START)
}

/// Lowest RAM size that holds the boot structures below 1 MiB and some kernel above.
const MIN_LOW_RAM: u64 = 2 * layout::HIGH_MEMORY_START;
/// Protocol versions that define cmdline_size (2.06) and initrd_addr_max (2.03), and the values
/// the protocol gives older kernels.
const CMDLINE_SIZE_VERSION: u16 = 0x0206;
const OLD_CMDLINE_SIZE: usize = 255;
const INITRD_ADDR_MAX_VERSION: u16 = 0x0203;
const OLD_INITRD_ADDR_MAX: u32 = 0x37ff_ffff;
/// Offset of the 64-bit entry point from the load address of a bzImage's protected-mode code.
const BZIMAGE_ENTRY_64_OFFSET: u64 = 0x200;

/// Loads the kernel (bzImage, or ELF vmlinux using its PVH note when present), the initramfs, the
/// command line, boot params / start info with the e820 map, and the ACPI tables for `ncpus`.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    kernel: &mut std::fs::File,
    initramfs: Option<&mut std::fs::File>,
    cmdline: &str,
    ncpus: u8,
) -> Result<EntryPoint, BootError> {
    if ncpus == 0 {
        return Err(BootError::NoCpus(ncpus));
    }
    let low_end = low_ram_end(mem);
    if low_end < MIN_LOW_RAM {
        return Err(BootError::LowMemory {
            needed: MIN_LOW_RAM,
            end: low_end,
        });
    }

    let loaded = kernel::load(mem, kernel, low_end)?;
    let (hdr, initrd_addr_max, cmdline_max) = match loaded.kind {
        KernelKind::BzImage(hdr) => {
            let version = hdr.version;
            let cmdline_max = if version >= CMDLINE_SIZE_VERSION {
                hdr.cmdline_size as usize
            } else {
                OLD_CMDLINE_SIZE
            };
            let initrd_max = if version >= INITRD_ADDR_MAX_VERSION {
                hdr.initrd_addr_max
            } else {
                OLD_INITRD_ADDR_MAX
            };
            (hdr, initrd_max, cmdline_max)
        }
        KernelKind::Elf { .. } => {
            let hdr = boot_params::elf_setup_header();
            (hdr, hdr.initrd_addr_max, hdr.cmdline_size as usize)
        }
    };

    let cmdline_addr = write_cmdline(mem, cmdline, cmdline_max)?;
    let initrd = match initramfs {
        Some(file) => {
            let highest = low_end.min(u64::from(initrd_addr_max) + 1);
            Some(initramfs::load(mem, file, loaded.footprint_end, highest)?)
        }
        None => None,
    };
    let rsdp = acpi::write_platform_tables(mem, ncpus, Some(&pci_windows(mem)))?;
    reset_vector::write(mem)?;
    let map = e820::memory_map(mem);

    Ok(match loaded.kind {
        KernelKind::Elf {
            pvh_entry: Some(eip),
            ..
        } => EntryPoint::Pvh {
            eip,
            start_info: pvh::write(mem, cmdline_addr, initrd, rsdp, &map)?,
        },
        KernelKind::Elf { entry, .. } => EntryPoint::Linux64 {
            rip: entry,
            boot_params: boot_params::write(mem, hdr, cmdline_addr, initrd, rsdp, &map)?,
        },
        KernelKind::BzImage(loaded_hdr) => EntryPoint::Linux64 {
            rip: GuestAddress(u64::from(loaded_hdr.code32_start) + BZIMAGE_ENTRY_64_OFFSET),
            boot_params: boot_params::write(mem, hdr, cmdline_addr, initrd, rsdp, &map)?,
        },
    })
}

fn write_cmdline(
    mem: &GuestMemoryMmap,
    cmdline: &str,
    max: usize,
) -> Result<GuestAddress, BootError> {
    let max = max.min(layout::CMDLINE_MAX_SIZE - 1);
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let addr = GuestAddress(layout::CMDLINE_START);
    let parsed = Cmdline::try_from(cmdline, max + 1).map_err(BootError::Cmdline)?;
    load_cmdline(mem, addr, &parsed).map_err(|source| BootError::WriteCmdline {
        addr: addr.0,
        source,
    })?;
    Ok(addr)
}

/// CPUID (from KVM_GET_SUPPORTED_CPUID, topology for `ncpus`), MSRs, FPU, LAPIC LINT0/LINT1, and for
/// vCPU 0 the registers, segments and page tables of `entry`. APs wait for INIT/SIPI in the in-kernel LAPIC.
pub fn configure_vcpu(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    id: u8,
    ncpus: u8,
    entry: &EntryPoint,
    mem: &GuestMemoryMmap,
) -> Result<(), VcpuSetupError> {
    if id >= ncpus {
        return Err(VcpuSetupError::BadId { id, ncpus });
    }
    cpuid::configure(kvm, vcpu, id, ncpus)
        .map_err(|source| VcpuSetupError::Cpuid { id, source })?;
    msrs::configure(vcpu).map_err(|source| VcpuSetupError::Msrs { id, source })?;
    regs::configure_fpu(vcpu).map_err(|source| VcpuSetupError::Regs { id, source })?;
    lapic::configure(vcpu).map_err(|source| VcpuSetupError::Lapic { id, source })?;
    if id == 0 {
        regs::configure_boot_vcpu(vcpu, entry, mem)
            .map_err(|source| VcpuSetupError::Regs { id, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
