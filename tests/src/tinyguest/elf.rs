//! A minimal ELF64 x86_64 executable in the shape of a vmlinux: one PT_LOAD segment at its physical
//! address, and optionally a PT_NOTE segment with the Xen PVH entry note.

/// Sizes fixed by the ELF64 format.
pub const EHDR_SIZE: usize = 64;
pub const PHDR_SIZE: usize = 56;

pub const PT_LOAD: u32 = 1;
pub const PT_NOTE: u32 = 4;
const PF_X: u32 = 1;
const PF_R: u32 = 4;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EV_CURRENT: u8 = 1;

/// The note a PVH-capable kernel carries: owner "Xen", type XEN_ELFNOTE_PHYS32_ENTRY, 32-bit entry.
pub const XEN_NOTE_NAME: &[u8; 4] = b"Xen\0";
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// The loaded segment starts on its own page of the file, as in a linked vmlinux.
pub const SEGMENT_FILE_OFFSET: u64 = 0x1000;
const SEGMENT_ALIGN: u64 = 0x1000;

/// What to put in the image.
pub struct ElfImage<'a> {
    /// Guest-physical (= virtual) address of the segment.
    pub load_addr: u64,
    pub segment: &'a [u8],
    /// e_entry.
    pub entry: u64,
    /// When set, a PT_NOTE segment announces this PVH 32-bit entry.
    pub pvh_entry: Option<u32>,
}

impl ElfImage<'_> {
    pub fn to_bytes(&self) -> Vec<u8> {
        let phnum: u16 = if self.pvh_entry.is_some() { 2 } else { 1 };
        let mut out = Vec::with_capacity(SEGMENT_FILE_OFFSET as usize + self.segment.len());

        // ELF header.
        out.extend_from_slice(b"\x7fELF");
        out.extend_from_slice(&[ELFCLASS64, ELFDATA2LSB, EV_CURRENT, 0]);
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&ET_EXEC.to_le_bytes());
        out.extend_from_slice(&EM_X86_64.to_le_bytes());
        out.extend_from_slice(&u32::from(EV_CURRENT).to_le_bytes());
        out.extend_from_slice(&self.entry.to_le_bytes());
        out.extend_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
        out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
        out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        out.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
        out.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        out.extend_from_slice(&phnum.to_le_bytes());
        out.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
        out.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
        out.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx

        let note = self.pvh_entry.map(pvh_note);
        let note_offset = (EHDR_SIZE + PHDR_SIZE * usize::from(phnum)) as u64;

        push_phdr(
            &mut out,
            &Phdr {
                p_type: PT_LOAD,
                p_flags: PF_R | PF_X,
                p_offset: SEGMENT_FILE_OFFSET,
                p_addr: self.load_addr,
                p_size: self.segment.len() as u64,
                p_align: SEGMENT_ALIGN,
            },
        );
        if let Some(note) = &note {
            push_phdr(
                &mut out,
                &Phdr {
                    p_type: PT_NOTE,
                    p_flags: PF_R,
                    p_offset: note_offset,
                    p_addr: 0,
                    p_size: note.len() as u64,
                    p_align: 4,
                },
            );
            out.extend_from_slice(note);
        }
        out.resize(SEGMENT_FILE_OFFSET as usize, 0);
        out.extend_from_slice(self.segment);
        out
    }
}

struct Phdr {
    p_type: u32,
    p_flags: u32,
    p_offset: u64,
    p_addr: u64,
    p_size: u64,
    p_align: u64,
}

fn push_phdr(out: &mut Vec<u8>, ph: &Phdr) {
    out.extend_from_slice(&ph.p_type.to_le_bytes());
    out.extend_from_slice(&ph.p_flags.to_le_bytes());
    out.extend_from_slice(&ph.p_offset.to_le_bytes());
    out.extend_from_slice(&ph.p_addr.to_le_bytes()); // p_vaddr
    out.extend_from_slice(&ph.p_addr.to_le_bytes()); // p_paddr
    out.extend_from_slice(&ph.p_size.to_le_bytes()); // p_filesz
    out.extend_from_slice(&ph.p_size.to_le_bytes()); // p_memsz
    out.extend_from_slice(&ph.p_align.to_le_bytes());
}

/// namesz, descsz, type, then the name and the descriptor, each padded to 4 bytes.
fn pvh_note(entry: u32) -> Vec<u8> {
    let mut note = Vec::with_capacity(20);
    note.extend_from_slice(&(XEN_NOTE_NAME.len() as u32).to_le_bytes());
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
    note.extend_from_slice(XEN_NOTE_NAME);
    note.extend_from_slice(&entry.to_le_bytes());
    note
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tinyguest::le::{u16_at, u32_at, u64_at};

    /// Reads the image back the way a loader does: header, program headers, segment, note.
    #[test]
    fn headers_segment_and_pvh_note_read_back() {
        let code = [0x90u8, 0xf4, 0xeb, 0xfd];
        let img = ElfImage {
            load_addr: 0x10_0000,
            segment: &code,
            entry: 0x10_0000,
            pvh_entry: Some(0x10_0040),
        }
        .to_bytes();
        assert_eq!(&img[..4], b"\x7fELF");
        assert_eq!(img[4], ELFCLASS64);
        assert_eq!(img[5], ELFDATA2LSB);
        assert_eq!(u16_at(&img, 16), ET_EXEC);
        assert_eq!(u16_at(&img, 18), EM_X86_64);
        assert_eq!(u64_at(&img, 24), 0x10_0000);
        let phoff = u64_at(&img, 32) as usize;
        assert_eq!(u16_at(&img, 54) as usize, PHDR_SIZE);
        assert_eq!(u16_at(&img, 56), 2);

        let load = phoff;
        assert_eq!(u32_at(&img, load), PT_LOAD);
        let off = u64_at(&img, load + 8) as usize;
        assert_eq!(u64_at(&img, load + 16), 0x10_0000, "p_vaddr");
        assert_eq!(u64_at(&img, load + 24), 0x10_0000, "p_paddr");
        let filesz = u64_at(&img, load + 32) as usize;
        assert_eq!(&img[off..off + filesz], &code);

        let note = phoff + PHDR_SIZE;
        assert_eq!(u32_at(&img, note), PT_NOTE);
        let n = u64_at(&img, note + 8) as usize;
        assert_eq!(u64_at(&img, note + 32), 20);
        assert_eq!(u32_at(&img, n), 4, "namesz");
        assert_eq!(u32_at(&img, n + 4), 4, "descsz");
        assert_eq!(u32_at(&img, n + 8), XEN_ELFNOTE_PHYS32_ENTRY);
        assert_eq!(&img[n + 12..n + 16], XEN_NOTE_NAME);
        assert_eq!(u32_at(&img, n + 16), 0x10_0040);
    }

    #[test]
    fn plain_vmlinux_has_no_note() {
        let img = ElfImage {
            load_addr: 0x10_0000,
            segment: &[0xf4],
            entry: 0x10_0000,
            pvh_entry: None,
        }
        .to_bytes();
        assert_eq!(u16_at(&img, 56), 1);
        assert_eq!(img.len(), SEGMENT_FILE_OFFSET as usize + 1);
    }

    /// binutils' view of the same image, when binutils is installed.
    #[test]
    fn readelf_agrees_when_installed() {
        let img = ElfImage {
            load_addr: 0x10_0000,
            segment: &[0xf4; 16],
            entry: 0x10_0000,
            pvh_entry: Some(0x10_0000),
        }
        .to_bytes();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &img).unwrap();
        let Ok(out) = std::process::Command::new("readelf")
            .arg("-lnW")
            .arg(file.path())
            .output()
        else {
            eprintln!("readelf not installed: skipped");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "readelf failed: {text}");
        assert!(text.contains("Entry point 0x100000"), "{text}");
        assert!(text.contains("LOAD"), "{text}");
        assert!(
            text.contains("0x0000000000100000 0x0000000000100000"),
            "{text}"
        );
        assert!(text.contains("Xen"), "{text}");
        assert!(!text.to_lowercase().contains("warning"), "{text}");
    }
}
