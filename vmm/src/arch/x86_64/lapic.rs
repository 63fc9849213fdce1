//! Local APIC wiring of the in-kernel LAPIC: LINT0 takes the 8259's ExtINT, LINT1 takes NMI,
//! as on a PC with virtual-wire mode.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

#[derive(Debug, thiserror::Error)]
pub enum LapicError {
    #[error("KVM_GET_LAPIC failed: {0} (create the in-kernel irqchip before the vCPUs)")]
    Get(kvm_ioctls::Error),
    #[error("KVM_SET_LAPIC failed: {0}")]
    Set(kvm_ioctls::Error),
}

/// Register offsets in the APIC page.
pub const APIC_LVT_LINT0: usize = 0x350;
pub const APIC_LVT_LINT1: usize = 0x360;
/// LVT delivery mode field (bits 8..=10) and its values.
const DELIVERY_MODE_MASK: u32 = 0x700;
pub const DELIVERY_MODE_NMI: u32 = 0x400;
pub const DELIVERY_MODE_EXTINT: u32 = 0x700;

pub fn read_register(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = lapic.regs[offset + i] as u8;
    }
    u32::from_le_bytes(bytes)
}

fn write_register(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = byte as std::os::raw::c_char;
    }
}

fn set_delivery_mode(lapic: &mut kvm_lapic_state, offset: usize, mode: u32) {
    let value = read_register(lapic, offset);
    write_register(lapic, offset, (value & !DELIVERY_MODE_MASK) | mode);
}

pub fn configure(vcpu: &VcpuFd) -> Result<(), LapicError> {
    let mut lapic = vcpu.get_lapic().map_err(LapicError::Get)?;
    set_delivery_mode(&mut lapic, APIC_LVT_LINT0, DELIVERY_MODE_EXTINT);
    set_delivery_mode(&mut lapic, APIC_LVT_LINT1, DELIVERY_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(LapicError::Set)
}
