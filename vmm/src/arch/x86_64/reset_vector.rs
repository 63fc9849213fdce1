//! What a guest finds at the x86 reset vector (physical 0xffff0, CS:IP = f000:fff0).
//!
//! Paddock has no firmware, yet guests still jump there: Linux on a hardware-reduced ACPI machine
//! without EFI picks the "BIOS" reboot method (`machine_real_restart`), which drops to real mode and
//! far-jumps to the reset vector. With nothing there the vCPU would spin on zeroed memory forever. A
//! five-instruction stub does what a firmware reset would lead to: it pulses the i8042 reset line,
//! which ends the run as a reset.

use devices::legacy::{I8042_COMMAND_PORT, I8042_RESET_COMMAND};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Physical address the CPU fetches from after a reset or a real-mode jump to f000:fff0.
pub const RESET_VECTOR: u64 = 0xffff0;

/// Real-mode code: `mov al, 0xfe; out 0x64, al; cli; hlt; jmp $-1`.
pub fn stub() -> [u8; 8] {
    [
        0xb0,
        I8042_RESET_COMMAND,
        0xe6,
        I8042_COMMAND_PORT as u8,
        0xfa,
        0xf4,
        0xeb,
        0xfd,
    ]
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the reset-vector stub at {RESET_VECTOR:#x}: {0}")]
pub struct ResetVectorError(vm_memory::GuestMemoryError);

pub fn write(mem: &GuestMemoryMmap) -> Result<(), ResetVectorError> {
    mem.write_slice(&stub(), GuestAddress(RESET_VECTOR))
        .map_err(ResetVectorError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_targets_the_i8042_and_fits_below_1mib() {
        let s = stub();
        assert_eq!(&s[..4], &[0xb0, 0xfe, 0xe6, 0x64]);
        assert!(RESET_VECTOR + s.len() as u64 <= 0x10_0000);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        write(&mem).unwrap();
        let mut back = [0u8; 8];
        mem.read_slice(&mut back, GuestAddress(RESET_VECTOR))
            .unwrap();
        assert_eq!(back, s);
    }
}
