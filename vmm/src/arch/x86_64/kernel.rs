//! Kernel image detection and loading: a bzImage (64-bit boot protocol) or an ELF vmlinux (PVH
//! entry when its note is present, else its 64-bit entry point).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{ByteValued, GuestAddress, GuestMemoryMmap};

use super::layout;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot read the kernel image: {0}")]
    Read(std::io::Error),
    #[error("the kernel image is neither a bzImage (no \"HdrS\" setup header) nor an ELF vmlinux: give an x86_64 Linux kernel")]
    NotAKernel,
    #[error(
        "the kernel image is an ELF file for {what}, not x86_64: give an x86_64 vmlinux or bzImage"
    )]
    WrongElf { what: String },
    #[error("the bzImage has no 64-bit entry point (boot protocol {major}.{minor:02}, xloadflags {xloadflags:#x}): give a 64-bit kernel with boot protocol 2.12 or newer")]
    No64BitEntry {
        major: u16,
        minor: u16,
        xloadflags: u16,
    },
    #[error("the kernel needs guest RAM up to {needed:#x} but RAM below the PCI hole ends at {available:#x}: raise --memory")]
    DoesNotFit { needed: u64, available: u64 },
    #[error("cannot load the kernel image: {0}")]
    Load(linux_loader::loader::Error),
}

/// What the image offers for starting it.
#[derive(Clone, Copy, Debug)]
pub enum KernelKind {
    /// bzImage: its setup header (code32_start = where the protected-mode payload went).
    BzImage(setup_header),
    /// ELF vmlinux: its 64-bit entry point and, if it has the Xen PVH note, the 32-bit PVH entry.
    Elf {
        entry: GuestAddress,
        pvh_entry: Option<GuestAddress>,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub kind: KernelKind,
    /// End of the guest memory the kernel uses while it starts (a bzImage decompresses itself
    /// into `init_size` bytes at its preferred address): the initramfs must lie above.
    pub footprint_end: u64,
}

/// Offset of the setup header in a bzImage, and where its "HdrS" magic sits.
const SETUP_HEADER_OFFSET: usize = 0x1f1;
const HDRS_OFFSET: usize = 0x202;
const HDRS: &[u8; 4] = b"HdrS";
/// xloadflags bit 0: the kernel has the 64-bit entry at load address + 0x200.
const XLF_KERNEL_64: u16 = 1;
/// ELF identification and the x86_64 machine number.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;

/// The first bytes of an image: enough for an ELF header and a bzImage's setup header.
fn read_head(file: &mut File) -> Result<Vec<u8>, KernelError> {
    let mut head = Vec::new();
    file.seek(SeekFrom::Start(0)).map_err(KernelError::Read)?;
    file.by_ref()
        .take((SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>()) as u64)
        .read_to_end(&mut head)
        .map_err(KernelError::Read)?;
    Ok(head)
}

/// What kind of image `head` starts, refusing what Paddock cannot start.
enum Image {
    Elf,
    BzImage(setup_header),
}

fn identify_head(head: &[u8]) -> Result<Image, KernelError> {
    if head.starts_with(ELF_MAGIC) {
        check_elf_ident(head)?;
        Ok(Image::Elf)
    } else if head.get(HDRS_OFFSET..HDRS_OFFSET + 4) == Some(HDRS.as_slice())
        && head.len() == SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>()
    {
        let mut hdr = setup_header::default();
        hdr.as_mut_slice()
            .copy_from_slice(&head[SETUP_HEADER_OFFSET..]);
        let (version, xloadflags) = (hdr.version, hdr.xloadflags);
        if version < 0x020c || xloadflags & XLF_KERNEL_64 == 0 {
            return Err(KernelError::No64BitEntry {
                major: version >> 8,
                minor: version & 0xff,
                xloadflags,
            });
        }
        Ok(Image::BzImage(hdr))
    } else {
        Err(KernelError::NotAKernel)
    }
}

/// Checks that `file` is a kernel Paddock can start (a 64-bit bzImage or an x86_64 ELF), from
/// its headers alone: the VM is created only after this, so a wrong file costs nothing.
pub fn identify(file: &mut File) -> Result<(), KernelError> {
    identify_head(&read_head(file)?).map(|_| ())
}

/// Loads the image in `file` into `mem`; it must end below `low_ram_end`.
pub fn load(
    mem: &GuestMemoryMmap,
    file: &mut File,
    low_ram_end: u64,
) -> Result<LoadedKernel, KernelError> {
    let head = read_head(file)?;
    match identify_head(&head)? {
        Image::Elf => load_elf(mem, file, &head, low_ram_end),
        Image::BzImage(hdr) => load_bzimage(mem, file, hdr, low_ram_end),
    }
}

fn load_bzimage(
    mem: &GuestMemoryMmap,
    file: &mut File,
    hdr: setup_header,
    low_ram_end: u64,
) -> Result<LoadedKernel, KernelError> {
    let file_len = file.metadata().map_err(KernelError::Read)?.len();
    let setup_sects = if hdr.setup_sects == 0 {
        4
    } else {
        u64::from(hdr.setup_sects)
    };
    let payload = file_len.saturating_sub((setup_sects + 1) * 512);
    let load_addr = u64::from(hdr.code32_start);
    // The decompressor runs at the load address rounded up to kernel_alignment, but never below
    // pref_address, and needs init_size bytes there.
    let alignment = u64::from(hdr.kernel_alignment).max(1);
    let run_addr = load_addr.next_multiple_of(alignment).max(hdr.pref_address);
    let footprint_end = (load_addr + payload).max(run_addr + u64::from(hdr.init_size));
    if footprint_end > low_ram_end {
        return Err(KernelError::DoesNotFit {
            needed: footprint_end,
            available: low_ram_end,
        });
    }
    let result = BzImage::load(
        mem,
        None,
        file,
        Some(GuestAddress(layout::HIGH_MEMORY_START)),
    )
    .map_err(KernelError::Load)?;
    let hdr = result.setup_header.ok_or(KernelError::NotAKernel)?;
    Ok(LoadedKernel {
        kind: KernelKind::BzImage(hdr),
        footprint_end,
    })
}

/// Refuses an ELF file that is not 64-bit little-endian x86_64.
fn check_elf_ident(head: &[u8]) -> Result<(), KernelError> {
    let field = |at: usize, len: usize| head.get(at..at + len).ok_or(KernelError::NotAKernel);
    let class = field(4, 1)?[0];
    let data = field(5, 1)?[0];
    let machine = u16::from_le_bytes([field(0x12, 2)?[0], field(0x12, 2)?[1]]);
    if class != ELFCLASS64 || data != ELFDATA2LSB || machine != EM_X86_64 {
        let bits = if class == ELFCLASS64 { 64 } else { 32 };
        let endian = if data == ELFDATA2LSB { "little" } else { "big" };
        return Err(KernelError::WrongElf {
            what: format!("machine {machine} ({bits}-bit, {endian}-endian)"),
        });
    }
    Ok(())
}

fn load_elf(
    mem: &GuestMemoryMmap,
    file: &mut File,
    head: &[u8],
    low_ram_end: u64,
) -> Result<LoadedKernel, KernelError> {
    let image_end = elf_load_end(file, head)?;
    if image_end > low_ram_end {
        return Err(KernelError::DoesNotFit {
            needed: image_end,
            available: low_ram_end,
        });
    }
    let result = Elf::load(
        mem,
        None,
        file,
        Some(GuestAddress(layout::HIGH_MEMORY_START)),
    )
    .map_err(KernelError::Load)?;
    let pvh_entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr),
        PvhBootCapability::PvhEntryNotPresent | PvhBootCapability::PvhEntryIgnored => None,
    };
    Ok(LoadedKernel {
        kind: KernelKind::Elf {
            entry: result.kernel_load,
            pvh_entry,
        },
        footprint_end: result.kernel_end.max(image_end),
    })
}

/// Highest p_paddr + p_memsz over the PT_LOAD segments, read from the program headers.
fn elf_load_end(file: &mut File, head: &[u8]) -> Result<u64, KernelError> {
    let u16_at = |at: usize| {
        head.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |b: &[u8], at: usize| {
        b.get(at..at + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let phoff = u64_at(head, 0x20).ok_or(KernelError::NotAKernel)?;
    let phentsize = u16_at(0x36).ok_or(KernelError::NotAKernel)?;
    let phnum = u16_at(0x38).ok_or(KernelError::NotAKernel)?;
    if phentsize < 56 {
        return Err(KernelError::NotAKernel);
    }
    let mut table = vec![0u8; usize::from(phentsize) * usize::from(phnum)];
    file.seek(SeekFrom::Start(phoff))
        .map_err(KernelError::Read)?;
    file.read_exact(&mut table).map_err(KernelError::Read)?;
    let mut end = 0;
    for phdr in table.chunks_exact(usize::from(phentsize)) {
        let p_type = u32::from_le_bytes([phdr[0], phdr[1], phdr[2], phdr[3]]);
        if p_type != PT_LOAD {
            continue;
        }
        let paddr = u64_at(phdr, 0x18).ok_or(KernelError::NotAKernel)?;
        let memsz = u64_at(phdr, 0x28).ok_or(KernelError::NotAKernel)?;
        end = end.max(paddr.saturating_add(memsz));
    }
    Ok(end)
}
