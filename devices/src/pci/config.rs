//! A type-0 PCI configuration space: 256 bytes of PCI header and capabilities plus the 4 KiB
//! extended space that ECAM reaches.
//!
//! Every dword has a mask of guest-writable bits and a mask of write-1-to-clear bits; everything
//! else is read-only to the guest. BAR size probing falls out of the masks: the low bits of a
//! BAR below its size are not writable, so writing all ones reads back the size mask.

pub const CONFIG_SPACE_SIZE: u16 = 256;
pub const EXTENDED_CONFIG_SPACE_SIZE: u16 = 4096;
/// Number of BAR registers in a type-0 header.
pub const BAR_COUNT: usize = 6;

const DWORDS: usize = EXTENDED_CONFIG_SPACE_SIZE as usize / 4;

/// Register offsets of the type-0 header.
pub const VENDOR_ID: u16 = 0x00;
pub const DEVICE_ID: u16 = 0x02;
pub const COMMAND: u16 = 0x04;
pub const STATUS: u16 = 0x06;
pub const REVISION_ID: u16 = 0x08;
pub const CACHE_LINE_SIZE: u16 = 0x0c;
pub const HEADER_TYPE: u16 = 0x0e;
pub const BAR0: u16 = 0x10;
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
pub const SUBSYSTEM_ID: u16 = 0x2e;
pub const CAPABILITIES_POINTER: u16 = 0x34;
pub const INTERRUPT_LINE: u16 = 0x3c;
pub const INTERRUPT_PIN: u16 = 0x3d;
/// First byte after the standard header, where capabilities go.
pub const FIRST_CAPABILITY: u16 = 0x40;

/// Command register bits.
pub const COMMAND_IO_SPACE: u16 = 1 << 0;
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_PARITY_ERROR_RESPONSE: u16 = 1 << 6;
pub const COMMAND_SERR_ENABLE: u16 = 1 << 8;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
const COMMAND_WRITABLE: u16 = COMMAND_IO_SPACE
    | COMMAND_MEMORY_SPACE
    | COMMAND_BUS_MASTER
    | COMMAND_PARITY_ERROR_RESPONSE
    | COMMAND_SERR_ENABLE
    | COMMAND_INTX_DISABLE;

/// Status register bits: capability list present, and the error bits that are write-1-to-clear.
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;
const STATUS_WRITE_1_TO_CLEAR: u16 = (1 << 8) | (0x1f << 11);

/// BAR low bits: memory space, 64-bit type, prefetchable.
const BAR_MEM_TYPE_64: u32 = 0b10 << 1;
const BAR_MEM_PREFETCHABLE: u32 = 1 << 3;
const BAR_MEM_FLAGS: u32 = 0xf;
/// Smallest memory BAR the PCI spec allows.
pub const MIN_BAR_SIZE: u64 = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("BAR {index} does not exist: a type-0 header has BARs 0 to 5 (a 64-bit BAR takes two, so at most 0 to 4)")]
    BarIndex { index: u8 },
    #[error(
        "BAR {index} is already in use (a 64-bit BAR also takes the next index): pick a free BAR"
    )]
    BarTaken { index: u8 },
    #[error("BAR {index} size {size:#x} is not a power of two of at least 16 bytes{limit}")]
    BarSize {
        index: u8,
        size: u64,
        limit: &'static str,
    },
    #[error("BAR {index} address {addr:#x} is not aligned to its size {size:#x} or does not fit its width")]
    BarAddress { index: u8, addr: u64, size: u64 },
    #[error("no room for a {len}-byte capability in the 256-byte configuration space: drop a capability")]
    CapabilitySpace { len: usize },
}

/// What a memory BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory BAR: anywhere below 4 GiB.
    Memory32 { prefetchable: bool },
    /// 64-bit memory BAR: takes this BAR register and the next one for the high half.
    Memory64 { prefetchable: bool },
}

impl BarKind {
    pub fn is_64bit(self) -> bool {
        matches!(self, BarKind::Memory64 { .. })
    }

    fn flags(self) -> u32 {
        match self {
            BarKind::Memory32 { prefetchable } => {
                if prefetchable {
                    BAR_MEM_PREFETCHABLE
                } else {
                    0
                }
            }
            BarKind::Memory64 { prefetchable } => {
                BAR_MEM_TYPE_64
                    | if prefetchable {
                        BAR_MEM_PREFETCHABLE
                    } else {
                        0
                    }
            }
        }
    }
}

/// A BAR the device declared: its register index, size and kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    pub index: u8,
    pub size: u64,
    pub kind: BarKind,
}

/// The guest moved a BAR while memory decoding was on: the VMM maps `len` bytes at `new`
/// instead of `old`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarReprogram {
    pub bar: u8,
    pub old: u64,
    pub new: u64,
    pub len: u64,
}

/// The identity of a PCI function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIds {
    pub vendor: u16,
    pub device: u16,
    /// 24-bit class code: base class, subclass, programming interface (e.g. 0x060000 host bridge).
    pub class: u32,
    pub revision: u8,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

/// The configuration space of one type-0 function.
pub struct PciConfig {
    regs: [u32; DWORDS],
    writable: [u32; DWORDS],
    write_1_to_clear: [u32; DWORDS],
    bars: [Option<Bar>; BAR_COUNT],
    /// Where each BAR is mapped on the VMM's MMIO bus (None before placement).
    mapped: [Option<u64>; BAR_COUNT],
    /// Offset of the last capability, to chain the next one.
    last_capability: Option<u16>,
    next_capability: u16,
}

impl PciConfig {
    pub fn new(ids: &PciIds) -> Self {
        let mut config = Self {
            regs: [0; DWORDS],
            writable: [0; DWORDS],
            write_1_to_clear: [0; DWORDS],
            bars: [None; BAR_COUNT],
            mapped: [None; BAR_COUNT],
            last_capability: None,
            next_capability: FIRST_CAPABILITY,
        };
        config.set_u16(VENDOR_ID, ids.vendor);
        config.set_u16(DEVICE_ID, ids.device);
        config.set_u32(REVISION_ID, (ids.class << 8) | u32::from(ids.revision));
        config.set_u16(SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor);
        config.set_u16(SUBSYSTEM_ID, ids.subsystem);
        config.set_u8(HEADER_TYPE, 0);
        config.set_writable(COMMAND, 2, u32::from(COMMAND_WRITABLE));
        config.write_1_to_clear[usize::from(STATUS / 4)] |=
            u32::from(STATUS_WRITE_1_TO_CLEAR) << 16;
        config.set_writable(CACHE_LINE_SIZE, 1, 0xff);
        config.set_writable(INTERRUPT_LINE, 1, 0xff);
        config
    }

    /// Makes the bits of `mask` (a `width`-byte register at `offset`) writable by the guest.
    pub fn set_writable(&mut self, offset: u16, width: u8, mask: u32) {
        let (index, shift, lanes) = lanes(offset, width);
        let dword = &mut self.writable[index];
        *dword = (*dword & !lanes) | ((mask << shift) & lanes);
    }

    /// Declares a memory BAR. Its address starts at 0 until [`PciConfig::place_bar`].
    pub fn add_bar(&mut self, bar: Bar) -> Result<(), ConfigError> {
        let index = usize::from(bar.index);
        let last = index + usize::from(bar.kind.is_64bit());
        if last >= BAR_COUNT {
            return Err(ConfigError::BarIndex { index: bar.index });
        }
        if self.bar_register_used(index) || (last != index && self.bar_register_used(last)) {
            return Err(ConfigError::BarTaken { index: bar.index });
        }
        let limit = if bar.kind.is_64bit() {
            ""
        } else {
            " and at most 2 GiB (use a 64-bit BAR)"
        };
        let max = if bar.kind.is_64bit() {
            1 << 63
        } else {
            1 << 31
        };
        if !bar.size.is_power_of_two() || bar.size < MIN_BAR_SIZE || bar.size > max {
            return Err(ConfigError::BarSize {
                index: bar.index,
                size: bar.size,
                limit,
            });
        }
        let addr_mask = !(bar.size - 1);
        let reg = bar_register(bar.index);
        self.set_u32(reg, bar.kind.flags());
        self.set_writable(reg, 4, (addr_mask as u32) & !BAR_MEM_FLAGS);
        if bar.kind.is_64bit() {
            self.set_u32(reg + 4, 0);
            self.set_writable(reg + 4, 4, (addr_mask >> 32) as u32);
        }
        self.bars[index] = Some(bar);
        Ok(())
    }

    fn bar_register_used(&self, index: usize) -> bool {
        self.bars[index].is_some()
            || (index > 0 && self.bars[index - 1].is_some_and(|b| b.kind.is_64bit()))
    }

    /// The BARs the device declared, by register index.
    pub fn bars(&self) -> impl Iterator<Item = Bar> + '_ {
        self.bars.iter().flatten().copied()
    }

    pub fn bar(&self, index: u8) -> Option<Bar> {
        self.bars.get(usize::from(index)).copied().flatten()
    }

    /// The address the guest (or the VMM) last programmed into BAR `index`.
    pub fn bar_address(&self, index: u8) -> Option<u64> {
        let bar = self.bar(index)?;
        let reg = bar_register(index);
        let low = u64::from(self.u32_at(reg) & !BAR_MEM_FLAGS);
        let high = if bar.kind.is_64bit() {
            u64::from(self.u32_at(reg + 4)) << 32
        } else {
            0
        };
        Some(high | low)
    }

    /// Where the VMM has BAR `index` mapped now.
    pub fn bar_mapping(&self, index: u8) -> Option<u64> {
        self.mapped.get(usize::from(index)).copied().flatten()
    }

    /// Records where BAR `index` is mapped (the VMM could not follow a move and left it there).
    pub fn set_bar_mapping(&mut self, index: u8, addr: u64) {
        if let Some(slot) = self.mapped.get_mut(usize::from(index)) {
            *slot = Some(addr);
        }
    }

    /// The VMM placed BAR `index` at `addr` (and maps it there): programs the register.
    pub fn place_bar(&mut self, index: u8, addr: u64) -> Result<(), ConfigError> {
        let bar = self.bar(index).ok_or(ConfigError::BarIndex { index })?;
        let fits = bar.kind.is_64bit() || addr + bar.size <= 1 << 32;
        if !addr.is_multiple_of(bar.size) || !fits {
            return Err(ConfigError::BarAddress {
                index,
                addr,
                size: bar.size,
            });
        }
        let reg = bar_register(index);
        self.set_u32(reg, addr as u32 | bar.kind.flags());
        if bar.kind.is_64bit() {
            self.set_u32(reg + 4, (addr >> 32) as u32);
        }
        self.mapped[usize::from(index)] = Some(addr);
        Ok(())
    }

    /// Appends a capability (`id`, next pointer, then `body`) to the list and returns its offset.
    /// The body is read-only until [`PciConfig::set_writable`] opens bits of it.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<u16, ConfigError> {
        let len = body.len() + 2;
        let offset = self.next_capability;
        let end = usize::from(offset) + len;
        if end > usize::from(CONFIG_SPACE_SIZE) {
            return Err(ConfigError::CapabilitySpace { len });
        }
        self.set_u8(offset, id);
        self.set_u8(offset + 1, 0);
        for (i, byte) in body.iter().enumerate() {
            self.set_u8(offset + 2 + i as u16, *byte);
        }
        match self.last_capability {
            Some(prev) => self.set_u8(prev + 1, offset as u8),
            None => {
                self.set_u8(CAPABILITIES_POINTER, offset as u8);
                let status = self.u16_at(STATUS) | STATUS_CAPABILITIES_LIST;
                self.set_u16(STATUS, status);
            }
        }
        self.last_capability = Some(offset);
        self.next_capability = end.next_multiple_of(4) as u16;
        Ok(offset)
    }

    /// Guest read of 1, 2 or 4 bytes. Accesses that cross a dword or leave the 4 KiB space
    /// read all ones, like a master abort.
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        if !access_ok(offset, data.len()) {
            data.fill(0xff);
            return;
        }
        let value = self.regs[usize::from(offset / 4)] >> ((offset % 4) * 8);
        data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
    }

    /// Guest write of 1, 2 or 4 bytes through the masks. Returns the BARs that moved while
    /// memory decoding is on (including all BARs re-enabled at a new address by the command
    /// register), so the VMM re-maps them.
    pub fn write(&mut self, offset: u16, data: &[u8]) -> Vec<BarReprogram> {
        if !access_ok(offset, data.len()) {
            log::debug!(
                "ignored PCI config write of {} bytes at {offset:#x}",
                data.len()
            );
            return Vec::new();
        }
        let mut bytes = [0u8; 4];
        bytes[..data.len()].copy_from_slice(data);
        let (index, shift, lanes) = lanes(offset, data.len() as u8);
        let value = u32::from_le_bytes(bytes) << shift;
        let writable = self.writable[index] & lanes;
        let cleared = value & self.write_1_to_clear[index] & lanes;
        let reg = &mut self.regs[index];
        *reg = ((*reg & !writable) | (value & writable)) & !cleared;

        let touches_decoding = index == usize::from(COMMAND / 4)
            || (usize::from(BAR0 / 4)..usize::from(BAR0 / 4) + BAR_COUNT).contains(&index);
        if touches_decoding && self.memory_decoding() {
            self.moved_bars()
        } else {
            Vec::new()
        }
    }

    pub fn memory_decoding(&self) -> bool {
        self.u16_at(COMMAND) & COMMAND_MEMORY_SPACE != 0
    }

    pub fn bus_master(&self) -> bool {
        self.u16_at(COMMAND) & COMMAND_BUS_MASTER != 0
    }

    fn moved_bars(&mut self) -> Vec<BarReprogram> {
        let mut moved = Vec::new();
        for bar in self.bars.iter().flatten().copied().collect::<Vec<_>>() {
            let Some(old) = self.mapped[usize::from(bar.index)] else {
                continue;
            };
            let Some(new) = self.bar_address(bar.index) else {
                continue;
            };
            if new == old || self.probing(bar) || new.checked_add(bar.size).is_none() {
                continue;
            }
            self.mapped[usize::from(bar.index)] = Some(new);
            moved.push(BarReprogram {
                bar: bar.index,
                old,
                new,
                len: bar.size,
            });
        }
        moved
    }

    /// True while a BAR register holds a size probe (all its address bits set): the guest is
    /// sizing, not placing. For a 64-bit BAR either half counts, because the halves are probed
    /// one at a time; the cost is that a BAR placed with all low address bits set (the last
    /// slot below a 4 GiB boundary) is not followed.
    fn probing(&self, bar: Bar) -> bool {
        let reg = bar_register(bar.index);
        let all_set = |offset: u16| {
            let mask = self.writable[usize::from(offset / 4)];
            mask != 0 && self.u32_at(offset) & mask == mask
        };
        all_set(reg) || (bar.kind.is_64bit() && all_set(reg + 4))
    }

    /// VMM-side accessors: bypass the guest masks.
    pub fn u8_at(&self, offset: u16) -> u8 {
        (self.regs[usize::from(offset / 4)] >> ((offset % 4) * 8)) as u8
    }

    pub fn u16_at(&self, offset: u16) -> u16 {
        u16::from(self.u8_at(offset)) | (u16::from(self.u8_at(offset + 1)) << 8)
    }

    pub fn u32_at(&self, offset: u16) -> u32 {
        u32::from(self.u16_at(offset)) | (u32::from(self.u16_at(offset + 2)) << 16)
    }

    pub fn set_u8(&mut self, offset: u16, value: u8) {
        let (index, shift, lanes) = lanes(offset, 1);
        let reg = &mut self.regs[index];
        *reg = (*reg & !lanes) | (u32::from(value) << shift);
    }

    pub fn set_u16(&mut self, offset: u16, value: u16) {
        self.set_u8(offset, value as u8);
        self.set_u8(offset + 1, (value >> 8) as u8);
    }

    pub fn set_u32(&mut self, offset: u16, value: u32) {
        self.set_u16(offset, value as u16);
        self.set_u16(offset + 2, (value >> 16) as u16);
    }

    /// Sets bits of a register that the guest clears by writing 1 (error/status bits).
    pub fn set_write_1_to_clear(&mut self, offset: u16, width: u8, mask: u32) {
        let (index, shift, lanes) = lanes(offset, width);
        let dword = &mut self.write_1_to_clear[index];
        *dword = (*dword & !lanes) | ((mask << shift) & lanes);
    }
}

pub fn bar_register(index: u8) -> u16 {
    BAR0 + 4 * u16::from(index)
}

fn access_ok(offset: u16, len: usize) -> bool {
    matches!(len, 1 | 2 | 4)
        && usize::from(offset % 4) + len <= 4
        && offset < EXTENDED_CONFIG_SPACE_SIZE
}

/// Dword index, bit shift and byte-lane mask of a `width`-byte access at `offset`.
fn lanes(offset: u16, width: u8) -> (usize, u32, u32) {
    let shift = u32::from(offset % 4) * 8;
    let bits = u32::from(width) * 8;
    let mask = if bits >= 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    };
    (usize::from(offset / 4) % DWORDS, shift, mask << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1af4,
            device: 0x1041,
            class: 0x020000,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x0001,
        }
    }

    fn read32(c: &PciConfig, offset: u16) -> u32 {
        let mut b = [0u8; 4];
        c.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn write32(c: &mut PciConfig, offset: u16, v: u32) -> Vec<BarReprogram> {
        c.write(offset, &v.to_le_bytes())
    }

    #[test]
    fn header_identity_is_read_only() {
        let mut c = PciConfig::new(&ids());
        assert_eq!(read32(&c, 0), 0x1041_1af4);
        assert_eq!(read32(&c, 8), 0x0200_0001);
        assert_eq!(read32(&c, 0x2c), 0x0001_1af4);
        write32(&mut c, 0, 0xdead_beef);
        write32(&mut c, 8, 0);
        assert_eq!(read32(&c, 0), 0x1041_1af4);
        assert_eq!(read32(&c, 8), 0x0200_0001);
        let mut b = [0u8; 2];
        c.read(2, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x1041);
        let mut b = [0u8; 1];
        c.read(0xb, &mut b);
        assert_eq!(b[0], 0x02);
    }

    #[test]
    fn command_bits_are_masked_and_status_is_write_1_to_clear() {
        let mut c = PciConfig::new(&ids());
        c.write(COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(c.u16_at(COMMAND), COMMAND_WRITABLE);
        assert!(c.memory_decoding() && c.bus_master());

        c.set_u16(STATUS, (1 << 13) | (1 << 8));
        // Writing 0 keeps error bits, writing 1 clears just that bit; the command is untouched.
        write32(&mut c, COMMAND, u32::from(COMMAND_WRITABLE));
        assert_eq!(c.u16_at(STATUS), (1 << 13) | (1 << 8));
        write32(&mut c, COMMAND, (1 << 29) | u32::from(COMMAND_WRITABLE));
        assert_eq!(c.u16_at(STATUS), 1 << 8);
        c.write(STATUS, &0xffffu16.to_le_bytes());
        assert_eq!(c.u16_at(STATUS), 0);
        assert_eq!(c.u16_at(COMMAND), COMMAND_WRITABLE);
    }

    #[test]
    fn odd_accesses_read_ones_and_write_nothing() {
        let mut c = PciConfig::new(&ids());
        let mut b = [0u8; 4];
        c.read(2, &mut b);
        assert_eq!(b, [0xff; 4]);
        let mut b = [0u8; 3];
        c.read(0, &mut b);
        assert_eq!(b, [0xff; 3]);
        c.write(3, &[0xff, 0xff]);
        assert_eq!(c.u16_at(COMMAND), 0);
        let mut b = [0u8; 4];
        c.read(EXTENDED_CONFIG_SPACE_SIZE, &mut b);
        assert_eq!(b, [0xff; 4]);
        // The extended space exists and reads zero (no extended capabilities).
        c.read(0x100, &mut b);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn bar_size_probing_32_and_64_bit() {
        let mut c = PciConfig::new(&ids());
        c.add_bar(Bar {
            index: 0,
            size: 0x1000,
            kind: BarKind::Memory32 {
                prefetchable: false,
            },
        })
        .unwrap();
        c.add_bar(Bar {
            index: 2,
            size: 0x2_0000_0000,
            kind: BarKind::Memory64 { prefetchable: true },
        })
        .unwrap();

        write32(&mut c, 0x10, u32::MAX);
        assert_eq!(read32(&c, 0x10), 0xffff_f000);
        write32(&mut c, 0x18, u32::MAX);
        write32(&mut c, 0x1c, u32::MAX);
        // 8 GiB: no writable bit in the low half; flags 64-bit + prefetchable.
        assert_eq!(read32(&c, 0x18), 0x0000_000c);
        assert_eq!(read32(&c, 0x1c), 0xffff_fffe);
        // Unused BARs and the expansion ROM stay zero.
        write32(&mut c, 0x14, u32::MAX);
        write32(&mut c, 0x30, u32::MAX);
        assert_eq!(read32(&c, 0x14), 0);
        assert_eq!(read32(&c, 0x30), 0);

        write32(&mut c, 0x10, 0xc000_1234);
        assert_eq!(c.bar_address(0), Some(0xc000_1000));
        write32(&mut c, 0x18, 0);
        write32(&mut c, 0x1c, 0x4);
        assert_eq!(c.bar_address(2), Some(0x4_0000_0000));
    }

    #[test]
    fn bar_declarations_are_checked() {
        let mut c = PciConfig::new(&ids());
        let mem64 = BarKind::Memory64 {
            prefetchable: false,
        };
        let mem32 = BarKind::Memory32 {
            prefetchable: false,
        };
        let bar = |index, size, kind| Bar { index, size, kind };
        assert!(matches!(
            c.add_bar(bar(5, 0x1000, mem64)),
            Err(ConfigError::BarIndex { index: 5 })
        ));
        assert!(matches!(
            c.add_bar(bar(0, 0x1800, mem32)),
            Err(ConfigError::BarSize { .. })
        ));
        assert!(matches!(
            c.add_bar(bar(0, 8, mem32)),
            Err(ConfigError::BarSize { .. })
        ));
        assert!(matches!(
            c.add_bar(bar(0, 1 << 32, mem32)),
            Err(ConfigError::BarSize { .. })
        ));
        c.add_bar(bar(1, 0x1000, mem64)).unwrap();
        assert!(matches!(
            c.add_bar(bar(2, 0x1000, mem32)),
            Err(ConfigError::BarTaken { index: 2 })
        ));
        assert!(matches!(
            c.add_bar(bar(0, 0x1000, mem64)),
            Err(ConfigError::BarTaken { index: 0 })
        ));
        c.add_bar(bar(0, 0x1000, mem32)).unwrap();
        assert!(matches!(
            c.place_bar(0, 0x800),
            Err(ConfigError::BarAddress { .. })
        ));
        assert!(matches!(
            c.place_bar(0, 0xffff_f000 + 0x1000),
            Err(ConfigError::BarAddress { .. })
        ));
        assert!(matches!(
            c.place_bar(3, 0),
            Err(ConfigError::BarIndex { index: 3 })
        ));
        c.place_bar(1, 0x1_0000_0000).unwrap();
        assert_eq!(c.bar_address(1), Some(0x1_0000_0000));
        assert_eq!(c.bars().count(), 2);
    }

    #[test]
    fn moves_are_reported_only_with_memory_decoding_on() {
        let mut c = PciConfig::new(&ids());
        c.add_bar(Bar {
            index: 0,
            size: 0x4000,
            kind: BarKind::Memory64 {
                prefetchable: false,
            },
        })
        .unwrap();
        c.place_bar(0, 0x1_0000_0000).unwrap();

        // Decoding off (how Linux sizes and reassigns 64-bit BARs): nothing is reported.
        assert!(write32(&mut c, 0x10, u32::MAX).is_empty());
        assert!(write32(&mut c, 0x14, u32::MAX).is_empty());
        assert!(write32(&mut c, 0x10, 0x8000_0000).is_empty());
        assert!(write32(&mut c, 0x14, 0x2).is_empty());
        // Enabling decoding reports the move once.
        let moved = c.write(COMMAND, &COMMAND_MEMORY_SPACE.to_le_bytes());
        assert_eq!(
            moved,
            vec![BarReprogram {
                bar: 0,
                old: 0x1_0000_0000,
                new: 0x2_8000_0000,
                len: 0x4000
            }]
        );
        assert_eq!(c.bar_mapping(0), Some(0x2_8000_0000));
        assert!(c
            .write(COMMAND, &COMMAND_MEMORY_SPACE.to_le_bytes())
            .is_empty());
        // With decoding on, a probe pattern is not a move, a real address is.
        assert!(write32(&mut c, 0x10, u32::MAX).is_empty());
        assert!(write32(&mut c, 0x14, u32::MAX).is_empty());
        write32(&mut c, 0x14, 0x2);
        let moved = write32(&mut c, 0x10, 0x8000_4000);
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].new, 0x2_8000_4000);
        assert_eq!(moved[0].old, 0x2_8000_0000);
    }

    #[test]
    fn capability_list_is_chained() {
        let mut c = PciConfig::new(&ids());
        assert_eq!(c.u16_at(STATUS) & STATUS_CAPABILITIES_LIST, 0);
        let first = c.add_capability(0x09, &[1, 2, 3]).unwrap();
        let second = c.add_capability(0x11, &[0; 10]).unwrap();
        assert_eq!(first, 0x40);
        assert_eq!(second, 0x48);
        assert_ne!(c.u16_at(STATUS) & STATUS_CAPABILITIES_LIST, 0);
        assert_eq!(c.u8_at(CAPABILITIES_POINTER), 0x40);
        assert_eq!(read32(&c, 0x40), 0x0201_4809);
        assert_eq!(c.u8_at(0x41), 0x48);
        assert_eq!(c.u8_at(0x49), 0);
        // Read-only unless opened.
        c.write(0x44, &[0xff]);
        assert_eq!(c.u8_at(0x44), 3);
        c.set_writable(0x44, 1, 0x0f);
        c.write(0x44, &[0xff]);
        assert_eq!(c.u8_at(0x44), 0x0f);
        assert!(matches!(
            c.add_capability(0x09, &[0; 200]),
            Err(ConfigError::CapabilitySpace { len: 202 })
        ));
    }
}
