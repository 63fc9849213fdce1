//! Tiny guests assembled in Rust, each driving one VMM path, in the three formats Paddock boots:
//! a vmlinux-like ELF64 (64-bit entry), an ELF with the Xen PVH note (32-bit entry), and a bzImage
//! (64-bit entry at 0x200 of the protected-mode part).
//!
//! A guest optionally writes a POST code to port 0x80, prints its message on COM1, prints one line
//! per check of what the VMM handed over (see [`expected_serial`]), then ends as [`Ending`] says.
//! Entry points a VMM must not use print [`REPORT_WRONG_ENTRY`] and reset.

mod bzimage;
mod elf;
mod launch;
mod program;

pub use bzimage::{bzimage, BzImageError};
pub use elf::ElfImage;
pub use launch::{boot, GuestRun, BOOT_TIMEOUT};
pub use program::{
    assemble_long_mode, assemble_pvh, assemble_wrong_entry, long_mode_report, Ending,
    LongModeChecks, Program, PVH_START_INFO_MAGIC, REPORT_E820_BAD, REPORT_E820_OK,
    REPORT_PVH_MAGIC_BAD, REPORT_PVH_MAGIC_OK, REPORT_SETUP_HEADER_BAD, REPORT_SETUP_HEADER_OK,
    REPORT_WRONG_ENTRY,
};

use std::io::Write;
use std::path::PathBuf;

/// Where every image's code is loaded: 1 MiB, the start of RAM above the legacy area.
pub const LOAD_ADDR: u64 = 0x10_0000;

#[derive(Debug, thiserror::Error)]
pub enum TinyGuestError {
    #[error("tiny guest: assembling failed: {0}")]
    Assemble(#[from] iced_x86::IcedError),
    #[error("tiny guest: 32-bit code changed size between assembler passes; keep address operands 32-bit")]
    LayoutMoved,
    #[error("tiny guest: the message is longer than 4 GiB; use a shorter one")]
    MessageTooLong,
    #[error(transparent)]
    BzImage(#[from] BzImageError),
    #[error("tiny guest: {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("tiny guest: no paddock binary at {0}: build it (`cargo build -p sandbox`) or set PADDOCK_BIN")]
    PaddockMissing(PathBuf),
}

/// The image formats Paddock's loader accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootFormat {
    /// ELF64 vmlinux without a PVH note: 64-bit entry at e_entry, RSI = boot_params.
    Elf64,
    /// ELF64 with the Xen PVH note: 32-bit entry, paging off, EBX = hvm_start_info. Its e_entry
    /// is a 64-bit wrong-entry trap.
    PvhElf,
    /// bzImage, boot protocol 2.12: 64-bit entry at 0x200 of the protected-mode part. Its 32-bit
    /// entry (offset 0) is a wrong-entry trap.
    BzImage,
}

/// Builds the image file contents for `program` in `format`.
pub fn build_image(format: BootFormat, program: &Program) -> Result<Vec<u8>, TinyGuestError> {
    match format {
        BootFormat::Elf64 => {
            let code = assemble_long_mode(program, LongModeChecks::BootParams, LOAD_ADDR)?;
            Ok(ElfImage {
                load_addr: LOAD_ADDR,
                segment: &code,
                entry: LOAD_ADDR,
                pvh_entry: None,
            }
            .to_bytes())
        }
        BootFormat::PvhElf => {
            let entry32 = LOAD_ADDR as u32;
            let mut segment = assemble_pvh(program, entry32)?;
            segment.resize(segment.len().next_multiple_of(16), 0);
            let trap_addr = LOAD_ADDR + segment.len() as u64;
            segment.extend(assemble_wrong_entry(true, trap_addr)?);
            Ok(ElfImage {
                load_addr: LOAD_ADDR,
                segment: &segment,
                entry: trap_addr,
                pvh_entry: Some(entry32),
            }
            .to_bytes())
        }
        BootFormat::BzImage => {
            // The 32-bit trap uses absolute addresses: right only at the preferred address.
            let entry32 = assemble_wrong_entry(false, LOAD_ADDR)?;
            let entry64 = assemble_long_mode(
                program,
                LongModeChecks::BootParamsWithSetupHeader,
                LOAD_ADDR + bzimage::ENTRY_64_OFFSET as u64,
            )?;
            Ok(bzimage(&entry32, &entry64)?)
        }
    }
}

/// Everything a correct VMM puts on the serial console for `program` booted as `format`.
pub fn expected_serial(format: BootFormat, program: &Program) -> Vec<u8> {
    let report = match format {
        BootFormat::Elf64 => long_mode_report(LongModeChecks::BootParams),
        BootFormat::PvhElf => REPORT_PVH_MAGIC_OK.to_string(),
        BootFormat::BzImage => long_mode_report(LongModeChecks::BootParamsWithSetupHeader),
    };
    let mut out = program.message.clone();
    out.extend_from_slice(report.as_bytes());
    out
}

/// Writes the image to a temporary file (removed when dropped).
pub fn write_image(
    format: BootFormat,
    program: &Program,
) -> Result<tempfile::NamedTempFile, TinyGuestError> {
    let bytes = build_image(format, program)?;
    let io = |what: &str| {
        let what = what.to_string();
        move |source| TinyGuestError::Io { what, source }
    };
    let mut file = tempfile::Builder::new()
        .prefix("paddock-tiny-")
        .tempfile()
        .map_err(io("creating a temporary image file"))?;
    file.write_all(&bytes)
        .and_then(|()| file.flush())
        .map_err(io("writing the image file"))?;
    Ok(file)
}

#[cfg(test)]
mod tests;

/// Little-endian field readers for the image tests, which read headers back as a loader does.
#[cfg(test)]
pub(crate) mod le {
    pub fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    pub fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
    pub fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
    }
}
