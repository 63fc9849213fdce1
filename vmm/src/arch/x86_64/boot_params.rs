//! The Linux zero page (`boot_params`) for the 64-bit boot protocol.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::e820::MemoryMapEntry;
use super::layout;

#[derive(Debug, thiserror::Error)]
pub enum ZeroPageError {
    #[error("the memory map has {count} entries but the zero page holds {max}: use fewer memory regions")]
    TooManyE820Entries { count: usize, max: usize },
    #[error("cannot write the zero page at {addr:#x}: {source}")]
    Write {
        addr: u64,
        source: linux_loader::configurator::Error,
    },
}

pub const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// "HdrS" read as a little-endian u32.
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// type_of_loader: "undefined" boot loader.
pub const LOADER_OTHER: u8 = 0xff;
/// loadflags.
pub const LOADED_HIGH: u8 = 0x1;
pub const CAN_USE_HEAP: u8 = 0x80;
/// heap_end_ptr: end of the setup heap, as an offset from the real-mode code (minus 0x200).
pub const HEAP_END: u16 = 0xfe00;
/// Largest command line (without its NUL) of an ELF kernel whose header we cannot read: the x86
/// COMMAND_LINE_SIZE of Linux, less the NUL.
pub const ELF_CMDLINE_SIZE: u32 = 2047;
/// Highest initramfs address of a kernel whose header we cannot read: what 64-bit kernels declare.
pub const DEFAULT_INITRD_ADDR_MAX: u32 = 0x7fff_ffff;
/// Alignment a relocatable x86_64 kernel asks for (CONFIG_PHYSICAL_ALIGN default).
const KERNEL_ALIGNMENT: u32 = 0x20_0000;

/// A setup header for an ELF kernel, which carries none: the fields a boot loader must fill.
pub fn elf_setup_header() -> setup_header {
    setup_header {
        boot_flag: BOOT_FLAG_MAGIC,
        header: HDRS_MAGIC,
        loadflags: LOADED_HIGH,
        kernel_alignment: KERNEL_ALIGNMENT,
        cmdline_size: ELF_CMDLINE_SIZE,
        initrd_addr_max: DEFAULT_INITRD_ADDR_MAX,
        ..Default::default()
    }
}

/// Fills `hdr` (from the bzImage, or [`elf_setup_header`]) with the command line, initramfs, ACPI
/// root pointer and memory map, and writes the zero page to `layout::ZERO_PAGE_START`.
pub fn write(
    mem: &GuestMemoryMmap,
    hdr: setup_header,
    cmdline: GuestAddress,
    initramfs: Option<(GuestAddress, u64)>,
    rsdp: GuestAddress,
    map: &[MemoryMapEntry],
) -> Result<GuestAddress, ZeroPageError> {
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_OTHER;
    params.hdr.loadflags |= CAN_USE_HEAP;
    params.hdr.heap_end_ptr = HEAP_END;
    params.hdr.cmd_line_ptr = cmdline.0 as u32;
    params.ext_cmd_line_ptr = (cmdline.0 >> 32) as u32;
    if let Some((addr, size)) = initramfs {
        params.hdr.ramdisk_image = addr.0 as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_image = (addr.0 >> 32) as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    params.acpi_rsdp_addr = rsdp.0;

    let max = params.e820_table.len();
    if map.len() > max {
        return Err(ZeroPageError::TooManyE820Entries {
            count: map.len(),
            max,
        });
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = map.len() as u8;

    let addr = GuestAddress(layout::ZERO_PAGE_START);
    LinuxBootConfigurator::write_bootparams(&BootParams::new(&params, addr), mem).map_err(
        |source| ZeroPageError::Write {
            addr: addr.0,
            source,
        },
    )?;
    Ok(addr)
}
