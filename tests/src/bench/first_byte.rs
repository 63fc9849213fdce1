//! The guest behind "time to first guest instruction": a PVH ELF (which Paddock, QEMU, Cloud
//! Hypervisor and Firecracker all boot) whose first instructions send one byte to COM1. The byte
//! reaching the VMM's stdout marks the guest's start to within a few exits.

use crate::tinyguest::{build_image, BootFormat, Ending, Program, TinyGuestError};
use std::path::{Path, PathBuf};

pub fn write_first_byte_guest(dir: &Path) -> Result<PathBuf, TinyGuestError> {
    let program = Program::new(*b"!", Ending::AcpiPowerOff);
    let bytes = build_image(BootFormat::PvhElf, &program)?;
    let path = dir.join("first-byte.elf");
    std::fs::write(&path, bytes)
        .and_then(|()| crate::workspace::share_with_paddock(&path))
        .map_err(|source| TinyGuestError::Io {
            what: format!("writing {}", path.display()),
            source,
        })?;
    Ok(path)
}
