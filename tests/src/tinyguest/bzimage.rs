//! A bzImage as the Linux x86 boot protocol (2.12) describes it: a boot sector and setup header,
//! real-mode setup sectors, then the protected-mode kernel whose 64-bit entry point is at offset
//! 0x200 of it.

/// Setup sectors after the boot sector (the header says so in `setup_sects`).
pub const SETUP_SECTS: u8 = 1;
/// Offset of the protected-mode part in the file.
pub const PROTECTED_MODE_OFFSET: usize = (SETUP_SECTS as usize + 1) * 512;
/// Offset of the 64-bit entry point inside the protected-mode part.
pub const ENTRY_64_OFFSET: usize = 0x200;
/// Where the protected-mode part wants to be loaded (code32_start, pref_address).
pub const LOAD_ADDR: u32 = 0x10_0000;

/// Setup header fields, by offset in the file.
pub const HDR_SETUP_SECTS: usize = 0x1f1;
pub const HDR_SYSSIZE: usize = 0x1f4;
pub const HDR_BOOT_FLAG: usize = 0x1fe;
pub const HDR_JUMP: usize = 0x200;
pub const HDR_MAGIC: usize = 0x202;
pub const HDR_VERSION: usize = 0x206;
pub const HDR_KERNEL_VERSION: usize = 0x20e;
pub const HDR_LOADFLAGS: usize = 0x211;
pub const HDR_CODE32_START: usize = 0x214;
pub const HDR_INITRD_ADDR_MAX: usize = 0x22c;
pub const HDR_KERNEL_ALIGNMENT: usize = 0x230;
pub const HDR_RELOCATABLE_KERNEL: usize = 0x234;
pub const HDR_MIN_ALIGNMENT: usize = 0x235;
pub const HDR_XLOADFLAGS: usize = 0x236;
pub const HDR_CMDLINE_SIZE: usize = 0x238;
pub const HDR_PREF_ADDRESS: usize = 0x258;
pub const HDR_INIT_SIZE: usize = 0x260;

pub const BOOT_FLAG: u16 = 0xaa55;
pub const HEADER_MAGIC: &[u8; 4] = b"HdrS";
pub const BOOT_PROTOCOL_2_12: u16 = 0x020c;
pub const LOADED_HIGH: u8 = 0x01;
pub const XLF_KERNEL_64: u16 = 0x01;
/// Page alignment is enough: the code is position independent.
const KERNEL_ALIGNMENT: u32 = 0x1000;
const MIN_ALIGNMENT_LOG2: u8 = 12;
const CMDLINE_SIZE: u32 = 2047;
const INITRD_ADDR_MAX: u32 = 0x7fff_ffff;

/// Real-mode code the header's jump lands on: `cli; hlt; jmp $-1`. Tiny guests have no 16-bit
/// entry; a loader that runs the setup code stops here instead of running garbage.
const REAL_MODE_STOP_OFFSET: usize = 0x270;
const REAL_MODE_STOP: [u8; 4] = [0xfa, 0xf4, 0xeb, 0xfd];
const KERNEL_VERSION_OFFSET: usize = 0x280;
const KERNEL_VERSION: &[u8] = b"paddock tiny guest\0";

#[derive(Debug, thiserror::Error)]
pub enum BzImageError {
    #[error(
        "bzImage: the 32-bit entry code is {0} bytes; it must fit before the 64-bit entry at 0x200"
    )]
    Entry32TooLarge(usize),
}

/// Builds the image: `entry32` at offset 0 of the protected-mode part (startup_32), `entry64` at
/// offset 0x200 (startup_64).
pub fn bzimage(entry32: &[u8], entry64: &[u8]) -> Result<Vec<u8>, BzImageError> {
    if entry32.len() > ENTRY_64_OFFSET {
        return Err(BzImageError::Entry32TooLarge(entry32.len()));
    }
    let mut pm = entry32.to_vec();
    pm.resize(ENTRY_64_OFFSET, 0);
    pm.extend_from_slice(entry64);

    let mut img = vec![0u8; PROTECTED_MODE_OFFSET];
    let syssize = pm.len().div_ceil(16) as u32;
    let init_size = pm.len().next_multiple_of(KERNEL_ALIGNMENT as usize) as u32;

    img[HDR_SETUP_SECTS] = SETUP_SECTS;
    put(&mut img, HDR_SYSSIZE, &syssize.to_le_bytes());
    put(&mut img, HDR_BOOT_FLAG, &BOOT_FLAG.to_le_bytes());
    // A short jump from 0x200 over the header to the real-mode stop.
    img[HDR_JUMP] = 0xeb;
    img[HDR_JUMP + 1] = (REAL_MODE_STOP_OFFSET - (HDR_JUMP + 2)) as u8;
    put(&mut img, HDR_MAGIC, HEADER_MAGIC);
    put(&mut img, HDR_VERSION, &BOOT_PROTOCOL_2_12.to_le_bytes());
    let kver = (KERNEL_VERSION_OFFSET - 0x200) as u16;
    put(&mut img, HDR_KERNEL_VERSION, &kver.to_le_bytes());
    img[HDR_LOADFLAGS] = LOADED_HIGH;
    put(&mut img, HDR_CODE32_START, &LOAD_ADDR.to_le_bytes());
    put(
        &mut img,
        HDR_INITRD_ADDR_MAX,
        &INITRD_ADDR_MAX.to_le_bytes(),
    );
    put(
        &mut img,
        HDR_KERNEL_ALIGNMENT,
        &KERNEL_ALIGNMENT.to_le_bytes(),
    );
    img[HDR_RELOCATABLE_KERNEL] = 1;
    img[HDR_MIN_ALIGNMENT] = MIN_ALIGNMENT_LOG2;
    put(&mut img, HDR_XLOADFLAGS, &XLF_KERNEL_64.to_le_bytes());
    put(&mut img, HDR_CMDLINE_SIZE, &CMDLINE_SIZE.to_le_bytes());
    put(
        &mut img,
        HDR_PREF_ADDRESS,
        &u64::from(LOAD_ADDR).to_le_bytes(),
    );
    put(&mut img, HDR_INIT_SIZE, &init_size.to_le_bytes());
    put(&mut img, REAL_MODE_STOP_OFFSET, &REAL_MODE_STOP);
    put(&mut img, KERNEL_VERSION_OFFSET, KERNEL_VERSION);

    img.extend_from_slice(&pm);
    Ok(img)
}

fn put(img: &mut [u8], at: usize, bytes: &[u8]) {
    img[at..at + bytes.len()].copy_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tinyguest::le::{u16_at, u32_at};

    #[test]
    fn header_fields_follow_the_boot_protocol() {
        let e32 = [0xf4u8; 7];
        let e64 = [0x90u8, 0xf4];
        let img = bzimage(&e32, &e64).unwrap();
        assert_eq!(u16_at(&img, HDR_BOOT_FLAG), BOOT_FLAG);
        assert_eq!(&img[HDR_MAGIC..HDR_MAGIC + 4], HEADER_MAGIC);
        assert!(u16_at(&img, HDR_VERSION) >= 0x020c);
        let setup_sects = img[HDR_SETUP_SECTS] as usize;
        let pm_off = (setup_sects + 1) * 512;
        assert_eq!(pm_off, PROTECTED_MODE_OFFSET);
        assert_ne!(img[HDR_LOADFLAGS] & LOADED_HIGH, 0);
        assert_ne!(u16_at(&img, HDR_XLOADFLAGS) & XLF_KERNEL_64, 0);
        assert_eq!(u32_at(&img, HDR_CODE32_START), LOAD_ADDR);
        assert_eq!(u32_at(&img, HDR_PREF_ADDRESS), LOAD_ADDR);
        let pm_len = img.len() - pm_off;
        assert_eq!(pm_len, 0x202);
        assert_eq!(u32_at(&img, HDR_SYSSIZE) as usize, pm_len.div_ceil(16));
        assert!(u32_at(&img, HDR_INIT_SIZE) as usize >= pm_len);
        assert!(u32_at(&img, HDR_KERNEL_ALIGNMENT).is_power_of_two());
        assert_eq!(&img[pm_off..pm_off + 7], &e32);
        assert_eq!(&img[pm_off + ENTRY_64_OFFSET..], &e64);
        // The jump at 0x200 lands on the real-mode stop.
        let target = HDR_JUMP + 2 + img[HDR_JUMP + 1] as usize;
        assert_eq!(&img[target..target + 4], &REAL_MODE_STOP);
        let kver = 0x200 + u16_at(&img, HDR_KERNEL_VERSION) as usize;
        assert!(img[kver..].starts_with(b"paddock tiny guest\0"));
    }

    #[test]
    fn oversized_32_bit_entry_is_refused() {
        assert!(matches!(
            bzimage(&[0x90; 0x201], &[0xf4]),
            Err(BzImageError::Entry32TooLarge(0x201))
        ));
    }
}
