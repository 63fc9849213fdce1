//! The boot GDT and the KVM segment registers that match it.

use kvm_bindings::kvm_segment;

/// Selectors the Linux boot protocol names (__BOOT_CS, __BOOT_DS), and the TSS.
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;
pub const BOOT_TSS: u16 = 0x20;
/// Entries: null, unused, code, data, TSS (16 bytes in long mode).
pub const GDT_ENTRIES: usize = 6;

/// Access bytes: present, ring 0.
const ACCESS_CODE: u8 = 0x9b; // code segment, execute/read, accessed
const ACCESS_DATA: u8 = 0x93; // data segment, read/write, accessed
const ACCESS_TSS_BUSY: u8 = 0x8b; // system segment, busy TSS
/// Flags nibble: granularity 4 KiB, 32-bit default size, 64-bit code.
const FLAG_G: u8 = 0x8;
const FLAG_DB: u8 = 0x4;
const FLAG_L: u8 = 0x2;
/// A TSS is 104 bytes.
const TSS_LIMIT: u32 = 0x67;

/// A segment descriptor from its access byte, flags nibble, base and limit.
pub const fn descriptor(access: u8, flags: u8, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | ((access as u64) << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((flags as u64) & 0xf) << 52)
        | (((base >> 24) & 0xff) << 56)
}

/// The GDT for a 64-bit (long mode) or 32-bit (protected mode) flat entry.
pub fn boot_gdt(long_mode: bool) -> [u64; GDT_ENTRIES] {
    let code_flags = if long_mode {
        FLAG_G | FLAG_L
    } else {
        FLAG_G | FLAG_DB
    };
    [
        0,
        0,
        descriptor(ACCESS_CODE, code_flags, 0, 0xf_ffff),
        descriptor(ACCESS_DATA, FLAG_G | FLAG_DB, 0, 0xf_ffff),
        descriptor(ACCESS_TSS_BUSY, 0, 0, TSS_LIMIT),
        0,
    ]
}

/// The KVM segment register state for `selector` loaded from descriptor `desc`.
pub fn segment(selector: u16, desc: u64) -> kvm_segment {
    let bit = |n: u32| ((desc >> n) & 1) as u8;
    let raw_limit = ((desc & 0xffff) | (((desc >> 48) & 0xf) << 16)) as u32;
    let granular = bit(55) == 1;
    kvm_segment {
        base: ((desc >> 16) & 0xff_ffff) | (((desc >> 56) & 0xff) << 24),
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((desc >> 40) & 0xf) as u8,
        s: bit(44),
        dpl: ((desc >> 45) & 0x3) as u8,
        present: bit(47),
        avl: bit(52),
        l: bit(53),
        db: bit(54),
        g: bit(55),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_the_well_known_encodings() {
        let long = boot_gdt(true);
        assert_eq!(long[2], 0x00af_9b00_0000_ffff);
        assert_eq!(long[3], 0x00cf_9300_0000_ffff);
        assert_eq!(long[4], 0x0000_8b00_0000_0067);
        assert_eq!(boot_gdt(false)[2], 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn segment_decodes_a_flat_code_descriptor() {
        let cs = segment(BOOT_CS, boot_gdt(true)[2]);
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, BOOT_CS));
        assert_eq!(
            (cs.type_, cs.s, cs.present, cs.l, cs.db, cs.g),
            (0xb, 1, 1, 1, 0, 1)
        );
        let tss = segment(BOOT_TSS, boot_gdt(true)[4]);
        assert_eq!(
            (tss.limit, tss.type_, tss.s, tss.g, tss.unusable),
            (0x67, 0xb, 0, 0, 0)
        );
    }
}
