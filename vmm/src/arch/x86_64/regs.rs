//! Register state: the FPU of every vCPU, and the general, segment and control registers of the
//! boot vCPU for the chosen entry (64-bit Linux boot protocol or 32-bit PVH).

use kvm_bindings::{kvm_fpu, kvm_regs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{self, BOOT_CS, BOOT_DS, BOOT_TSS};
use super::paging::{self, PagingError};
use super::{layout, EntryPoint};

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("KVM_SET_FPU failed: {0}")]
    SetFpu(kvm_ioctls::Error),
    #[error("KVM_GET_SREGS failed: {0}")]
    GetSregs(kvm_ioctls::Error),
    #[error("KVM_SET_SREGS failed: {0}")]
    SetSregs(kvm_ioctls::Error),
    #[error("KVM_SET_REGS failed: {0}")]
    SetRegs(kvm_ioctls::Error),
    #[error("cannot write the boot GDT at {addr:#x}: {source} (guest RAM must start at 0)")]
    WriteGdt {
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
    #[error(transparent)]
    Paging(#[from] PagingError),
}

/// x87 control word after FNINIT (all exceptions masked, 64-bit precision).
pub const FPU_CONTROL_WORD: u16 = 0x37f;
/// MXCSR after reset (all SIMD exceptions masked).
pub const MXCSR_DEFAULT: u32 = 0x1f80;

pub const CR0_PE: u64 = 1;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PAE: u64 = 1 << 5;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is always set.
const RFLAGS_RESERVED: u64 = 0x2;

pub fn configure_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(RegsError::SetFpu)
}

/// Segments, control registers and general registers of the boot vCPU for `entry`.
pub fn configure_boot_vcpu(
    vcpu: &VcpuFd,
    entry: &EntryPoint,
    mem: &GuestMemoryMmap,
) -> Result<(), RegsError> {
    let long_mode = matches!(entry, EntryPoint::Linux64 { .. });
    let table = gdt::boot_gdt(long_mode);
    let bytes: Vec<u8> = table.iter().flat_map(|d| d.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(layout::GDT_START))
        .map_err(|source| RegsError::WriteGdt {
            addr: layout::GDT_START,
            source,
        })?;

    let mut sregs = vcpu.get_sregs().map_err(RegsError::GetSregs)?;
    let code = gdt::segment(BOOT_CS, table[(BOOT_CS / 8) as usize]);
    let data = gdt::segment(BOOT_DS, table[(BOOT_DS / 8) as usize]);
    sregs.gdt.base = layout::GDT_START;
    sregs.gdt.limit = (bytes.len() - 1) as u16;
    // No IDT: the kernel installs its own before it enables interrupts.
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment(BOOT_TSS, table[(BOOT_TSS / 8) as usize]);

    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    match *entry {
        EntryPoint::Linux64 { rip, boot_params } => {
            sregs.cr3 = paging::write_identity_tables(mem)?;
            // Set whole: the reset value of CR0 has CD|NW (caches off), which Linux does not expect.
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
            regs.rip = rip.0;
            regs.rsi = boot_params.0;
            regs.rsp = layout::BOOT_STACK_POINTER;
            regs.rbp = layout::BOOT_STACK_POINTER;
        }
        EntryPoint::Pvh { eip, start_info } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = eip.0;
            regs.rbx = start_info.0;
        }
    }
    vcpu.set_sregs(&sregs).map_err(RegsError::SetSregs)?;
    vcpu.set_regs(&regs).map_err(RegsError::SetRegs)
}
