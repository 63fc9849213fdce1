//! MSI-X: the capability in configuration space, and the vector table and pending-bit array (PBA)
//! that live in one of the function's memory BARs.
//!
//! A vector is delivered only while MSI-X is enabled, the function is not masked and the vector
//! is not masked. An interrupt raised while masked sets the vector's pending bit; unmasking a
//! pending vector clears the bit and delivers it. Every change of a vector's message or effective
//! mask is reported to [`MsiInterruptRoutes`] so the VMM can keep its KVM GSI routes current.

use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

use super::config::{ConfigError, PciConfig};
use crate::interrupt::{InterruptError, MsiInterruptRoutes, MsiMessage, VectorInterrupts};

pub const MSIX_CAPABILITY_ID: u8 = 0x11;
/// Most vectors one function can have (the table size field is 11 bits).
pub const MAX_VECTORS: u16 = 2048;
/// Bytes per table entry: address low, address high, data, vector control.
pub const TABLE_ENTRY_SIZE: u64 = 16;
/// Message control: MSI-X enable and function mask (the only writable bits).
pub const CONTROL_ENABLE: u16 = 1 << 15;
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: per-vector mask.
pub const VECTOR_MASKED: u32 = 1;

const ADDR_LO: usize = 0;
const ADDR_HI: usize = 1;
const DATA: usize = 2;
const VECTOR_CONTROL: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum MsixError {
    #[error("an MSI-X function has 1 to {MAX_VECTORS} vectors, not {0}")]
    Vectors(u16),
    #[error("MSI-X {what} offset {offset:#x} in BAR {bar} is not 8-byte aligned or the table and PBA overlap: place them apart")]
    Layout {
        what: &'static str,
        offset: u32,
        bar: u8,
    },
    #[error("cannot add the MSI-X capability: {0}")]
    Capability(#[from] ConfigError),
    #[error(transparent)]
    Interrupt(#[from] InterruptError),
}

/// Where the table and the PBA live: offsets inside BAR `bar`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixLayout {
    pub bar: u8,
    pub vectors: u16,
    pub table_offset: u32,
    pub pba_offset: u32,
}

impl MsixLayout {
    pub fn table_len(&self) -> u64 {
        u64::from(self.vectors) * TABLE_ENTRY_SIZE
    }

    pub fn pba_len(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }

    /// Bytes of the BAR the table and PBA need (the BAR may be larger).
    pub fn bar_len_needed(&self) -> u64 {
        (u64::from(self.table_offset) + self.table_len())
            .max(u64::from(self.pba_offset) + self.pba_len())
    }
}

/// The MSI-X state of one PCI function.
pub struct Msix {
    layout: MsixLayout,
    /// Table entries as dwords: address low, address high, data, vector control.
    table: Vec<[u32; 4]>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    capability: Option<u16>,
    routes: Arc<dyn MsiInterruptRoutes>,
    /// Vectors whose irqfd was handed out (see [`Msix::irqfd`]).
    direct: Vec<bool>,
}

impl Msix {
    pub fn new(layout: MsixLayout, routes: Arc<dyn MsiInterruptRoutes>) -> Result<Self, MsixError> {
        if layout.vectors == 0 || layout.vectors > MAX_VECTORS {
            return Err(MsixError::Vectors(layout.vectors));
        }
        let table =
            u64::from(layout.table_offset)..u64::from(layout.table_offset) + layout.table_len();
        let pba = u64::from(layout.pba_offset)..u64::from(layout.pba_offset) + layout.pba_len();
        let overlap = table.start < pba.end && pba.start < table.end;
        for (what, offset) in [("table", layout.table_offset), ("PBA", layout.pba_offset)] {
            if !offset.is_multiple_of(8) || overlap {
                return Err(MsixError::Layout {
                    what,
                    offset,
                    bar: layout.bar,
                });
            }
        }
        Ok(Self {
            layout,
            // Every vector starts masked (PCI spec reset state).
            table: vec![[0, 0, 0, VECTOR_MASKED]; usize::from(layout.vectors)],
            pending: vec![0; usize::from(layout.vectors).div_ceil(64)],
            enabled: false,
            function_masked: false,
            capability: None,
            routes,
            direct: vec![false; usize::from(layout.vectors)],
        })
    }

    pub fn layout(&self) -> MsixLayout {
        self.layout
    }

    /// Adds the MSI-X capability to `config`; the guest may write only enable and function mask.
    pub fn add_capability(&mut self, config: &mut PciConfig) -> Result<u16, MsixError> {
        let mut body = Vec::with_capacity(10);
        body.extend_from_slice(&(self.layout.vectors - 1).to_le_bytes());
        body.extend_from_slice(
            &(self.layout.table_offset | u32::from(self.layout.bar)).to_le_bytes(),
        );
        body.extend_from_slice(
            &(self.layout.pba_offset | u32::from(self.layout.bar)).to_le_bytes(),
        );
        let offset = config.add_capability(MSIX_CAPABILITY_ID, &body)?;
        config.set_writable(
            offset + 2,
            2,
            u32::from(CONTROL_ENABLE | CONTROL_FUNCTION_MASK),
        );
        self.capability = Some(offset);
        Ok(offset)
    }

    /// Call after every guest configuration write: picks up a changed message control.
    pub fn config_written(
        &mut self,
        config: &PciConfig,
        offset: u16,
        len: usize,
    ) -> Result<(), MsixError> {
        let Some(cap) = self.capability else {
            return Ok(());
        };
        let control = cap + 2;
        let overlaps = offset < control + 2 && control < offset + len as u16;
        if !overlaps {
            return Ok(());
        }
        let value = config.u16_at(control);
        let before: Vec<bool> = (0..self.layout.vectors).map(|v| self.masked(v)).collect();
        self.enabled = value & CONTROL_ENABLE != 0;
        self.function_masked = value & CONTROL_FUNCTION_MASK != 0;
        let mut result = Ok(());
        for (vector, was_masked) in (0..self.layout.vectors).zip(before) {
            if self.masked(vector) != was_masked {
                keep_first_error(&mut result, self.mask_changed(vector));
            }
        }
        result
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Effective mask of `vector`: MSI-X off, function masked or vector masked.
    pub fn masked(&self, vector: u16) -> bool {
        !self.enabled
            || self.function_masked
            || self
                .table
                .get(usize::from(vector))
                .is_none_or(|e| e[VECTOR_CONTROL] & VECTOR_MASKED != 0)
    }

    pub fn pending(&self, vector: u16) -> bool {
        let word = self.pending.get(usize::from(vector / 64)).copied();
        word.is_some_and(|w| w & (1 << (vector % 64)) != 0)
    }

    pub fn message(&self, vector: u16) -> Option<MsiMessage> {
        let e = self.table.get(usize::from(vector))?;
        Some(MsiMessage {
            addr: u64::from(e[ADDR_LO]) | (u64::from(e[ADDR_HI]) << 32),
            data: e[DATA],
        })
    }

    /// Raises `vector`: delivered now, or left pending while masked. Dropped while MSI-X is
    /// disabled (the function would use INTx, which Paddock does not wire).
    pub fn trigger(&mut self, vector: u16) -> Result<(), InterruptError> {
        if vector >= self.layout.vectors {
            return Err(InterruptError::NoSuchVector {
                vector,
                count: self.layout.vectors,
            });
        }
        if !self.enabled {
            log::debug!("MSI-X vector {vector} raised while MSI-X is disabled: dropped");
            return Ok(());
        }
        if self.masked(vector) {
            self.pending[usize::from(vector / 64)] |= 1 << (vector % 64);
            return Ok(());
        }
        self.routes.trigger(vector)
    }

    /// The eventfd that delivers `vector`, for a signaller outside this process (a vhost-user
    /// backend). Its writes while the vector is masked are lost rather than left pending, so from
    /// now on every unmask of `vector` delivers it once: at worst a spurious interrupt, which
    /// virtio drivers ignore, never a lost one.
    pub fn irqfd(&mut self, vector: u16) -> Option<EventFd> {
        let fd = self.routes.irqfd(vector)?;
        *self.direct.get_mut(usize::from(vector))? = true;
        Some(fd)
    }

    fn mask_changed(&mut self, vector: u16) -> Result<(), MsixError> {
        let masked = self.masked(vector);
        let msg = self.message(vector).unwrap_or_default();
        self.routes.update(vector, msg, masked)?;
        let direct = self.direct.get(usize::from(vector)).copied() == Some(true);
        if !masked && (self.pending(vector) || direct) {
            self.pending[usize::from(vector / 64)] &= !(1 << (vector % 64));
            self.routes.trigger(vector)?;
        }
        Ok(())
    }

    fn table_range(&self) -> std::ops::Range<u64> {
        let start = u64::from(self.layout.table_offset);
        start..start + self.layout.table_len()
    }

    fn pba_range(&self) -> std::ops::Range<u64> {
        let start = u64::from(self.layout.pba_offset);
        start..start + self.layout.pba_len()
    }

    /// Guest read at `offset` inside the MSI-X BAR. Returns false when the offset is outside the
    /// table and PBA (the BAR's other contents belong to the device). Accesses must be 4 or 8
    /// bytes and aligned to their size; others read all ones.
    pub fn read_bar(&self, offset: u64, data: &mut [u8]) -> bool {
        let in_table = self.table_range().contains(&offset);
        let in_pba = self.pba_range().contains(&offset);
        if !in_table && !in_pba {
            return false;
        }
        if !aligned_dword_or_qword(offset, data.len()) {
            data.fill(0xff);
            return true;
        }
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            let at = offset + 4 * i as u64;
            let value = if in_table {
                let rel = at - self.table_range().start;
                self.table[(rel / TABLE_ENTRY_SIZE) as usize]
                    [((rel % TABLE_ENTRY_SIZE) / 4) as usize]
            } else {
                let rel = at - self.pba_range().start;
                (self.pending[(rel / 8) as usize] >> ((rel % 8) * 8)) as u32
            };
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        true
    }

    /// Guest write at `offset` inside the MSI-X BAR. Returns Ok(false) when the offset is outside
    /// the table and PBA. The PBA is read-only; malformed accesses are ignored.
    pub fn write_bar(&mut self, offset: u64, data: &[u8]) -> Result<bool, MsixError> {
        if self.pba_range().contains(&offset) {
            return Ok(true);
        }
        if !self.table_range().contains(&offset) {
            return Ok(false);
        }
        if !aligned_dword_or_qword(offset, data.len()) {
            log::debug!(
                "ignored MSI-X table write of {} bytes at {offset:#x}",
                data.len()
            );
            return Ok(true);
        }
        let rel = offset - self.table_range().start;
        let vector = (rel / TABLE_ENTRY_SIZE) as u16;
        let was_masked = self.masked(vector);
        let old_msg = self.message(vector);
        let entry = &mut self.table[usize::from(vector)];
        for (i, chunk) in data.chunks(4).enumerate() {
            let word = ((rel % TABLE_ENTRY_SIZE) / 4) as usize + i;
            let mut bytes = [0u8; 4];
            bytes.copy_from_slice(chunk);
            let value = u32::from_le_bytes(bytes);
            entry[word] = match word {
                // Message addresses are dword aligned: bits 1:0 read as zero.
                ADDR_LO => value & !0x3,
                VECTOR_CONTROL => value & VECTOR_MASKED,
                _ => value,
            };
        }
        if self.masked(vector) != was_masked {
            self.mask_changed(vector)?;
        } else if self.message(vector) != old_msg {
            let msg = self.message(vector).unwrap_or_default();
            self.routes.update(vector, msg, self.masked(vector))?;
        }
        Ok(true)
    }
}

fn aligned_dword_or_qword(offset: u64, len: usize) -> bool {
    matches!(len, 4 | 8) && offset.is_multiple_of(len as u64)
}

fn keep_first_error(result: &mut Result<(), MsixError>, next: Result<(), MsixError>) {
    if let (Ok(()), Err(e)) = (&*result, next) {
        *result = Err(e);
    }
}

/// The vectors of one function as device models see them: `trigger` goes through the MSI-X
/// masking logic.
#[derive(Clone)]
pub struct MsixVectors(pub Arc<Mutex<Msix>>);

impl VectorInterrupts for MsixVectors {
    fn trigger(&self, vector: u16) -> Result<(), InterruptError> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .trigger(vector)
    }

    fn irqfd(&self, vector: u16) -> Option<EventFd> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .irqfd(vector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::{InterruptEvent, RecordingInterrupts};
    use crate::pci::config::PciIds;

    const LAYOUT: MsixLayout = MsixLayout {
        bar: 1,
        vectors: 3,
        table_offset: 0x2000,
        pba_offset: 0x3000,
    };

    fn setup() -> (Msix, PciConfig, Arc<RecordingInterrupts>, u16) {
        let rec = Arc::new(RecordingInterrupts::new());
        let mut msix = Msix::new(LAYOUT, rec.clone()).unwrap();
        let mut config = PciConfig::new(&PciIds {
            vendor: 0x1af4,
            device: 0x1041,
            class: 0x020000,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 1,
        });
        let cap = msix.add_capability(&mut config).unwrap();
        (msix, config, rec, cap)
    }

    fn write_control(msix: &mut Msix, config: &mut PciConfig, cap: u16, value: u16) {
        config.write(cap + 2, &value.to_le_bytes());
        msix.config_written(config, cap + 2, 2).unwrap();
    }

    fn program(msix: &mut Msix, vector: u16, addr: u64, data: u32) {
        let base = 0x2000 + u64::from(vector) * 16;
        assert!(msix.write_bar(base, &addr.to_le_bytes()).unwrap());
        assert!(msix.write_bar(base + 8, &data.to_le_bytes()).unwrap());
    }

    fn set_vector_mask(msix: &mut Msix, vector: u16, masked: bool) {
        let base = 0x2000 + u64::from(vector) * 16 + 12;
        assert!(msix
            .write_bar(base, &u32::from(masked).to_le_bytes())
            .unwrap());
    }

    fn read_pba(msix: &Msix) -> u64 {
        let mut b = [0u8; 8];
        assert!(msix.read_bar(0x3000, &mut b));
        u64::from_le_bytes(b)
    }

    #[test]
    fn capability_layout_and_writable_bits() {
        let (_msix, mut config, _rec, cap) = setup();
        assert_eq!(config.u8_at(cap), MSIX_CAPABILITY_ID);
        assert_eq!(config.u16_at(cap + 2), 2);
        assert_eq!(config.u32_at(cap + 4), 0x2001);
        assert_eq!(config.u32_at(cap + 8), 0x3001);
        config.write(cap + 2, &0xffffu16.to_le_bytes());
        assert_eq!(config.u16_at(cap + 2), 0xc002);
        config.write(cap + 4, &0u32.to_le_bytes());
        assert_eq!(config.u32_at(cap + 4), 0x2001);
    }

    #[test]
    fn table_reads_back_and_starts_masked() {
        let (mut msix, _config, rec, _cap) = setup();
        let mut b = [0u8; 4];
        assert!(msix.read_bar(0x2000 + 16 + 12, &mut b));
        assert_eq!(u32::from_le_bytes(b), VECTOR_MASKED);
        program(&mut msix, 1, 0xfee0_1003, 0x4041);
        let mut q = [0u8; 8];
        assert!(msix.read_bar(0x2010, &mut q));
        assert_eq!(u64::from_le_bytes(q), 0xfee0_1000);
        assert!(msix.read_bar(0x2018, &mut b));
        assert_eq!(u32::from_le_bytes(b), 0x4041);
        // Outside table and PBA: not ours. Misaligned: all ones. PBA: read-only.
        assert!(!msix.read_bar(0x1000, &mut b));
        assert!(!msix.write_bar(0x2030, &[0; 4]).unwrap());
        let mut odd = [0u8; 2];
        assert!(msix.read_bar(0x2000, &mut odd));
        assert_eq!(odd, [0xff; 2]);
        assert!(msix.write_bar(0x3000, &u64::MAX.to_le_bytes()).unwrap());
        assert_eq!(read_pba(&msix), 0);
        // Message changes of a masked vector are still reported (the route may be prepared).
        assert_eq!(
            rec.take().last(),
            Some(&InterruptEvent::Update {
                vector: 1,
                msg: MsiMessage {
                    addr: 0xfee0_1000,
                    data: 0x4041
                },
                masked: true
            })
        );
    }

    #[test]
    fn unmasked_vector_is_delivered_at_once() {
        let (mut msix, mut config, rec, cap) = setup();
        program(&mut msix, 0, 0xfee0_0000, 0x30);
        write_control(&mut msix, &mut config, cap, CONTROL_ENABLE);
        set_vector_mask(&mut msix, 0, false);
        rec.take();
        msix.trigger(0).unwrap();
        assert_eq!(rec.take(), vec![InterruptEvent::Trigger { vector: 0 }]);
        assert_eq!(read_pba(&msix), 0);
    }

    #[test]
    fn masked_vector_sets_pending_bit_and_fires_on_unmask() {
        let (mut msix, mut config, rec, cap) = setup();
        program(&mut msix, 2, 0xfee0_0000, 0x31);
        write_control(&mut msix, &mut config, cap, CONTROL_ENABLE);
        rec.take();

        msix.trigger(2).unwrap();
        assert!(rec.take().is_empty(), "masked vector must not be delivered");
        assert!(msix.pending(2));
        assert_eq!(read_pba(&msix), 1 << 2);

        set_vector_mask(&mut msix, 2, false);
        assert_eq!(
            rec.take(),
            vec![
                InterruptEvent::Update {
                    vector: 2,
                    msg: MsiMessage {
                        addr: 0xfee0_0000,
                        data: 0x31
                    },
                    masked: false
                },
                InterruptEvent::Trigger { vector: 2 }
            ]
        );
        assert_eq!(read_pba(&msix), 0);
        // Unmasking again without a pending interrupt delivers nothing.
        set_vector_mask(&mut msix, 2, true);
        set_vector_mask(&mut msix, 2, false);
        assert!(rec.triggered().is_empty());
    }

    #[test]
    fn a_vector_signalled_from_outside_fires_on_every_unmask() {
        let rec = Arc::new(RecordingInterrupts::with_irqfds(3).unwrap());
        let mut msix = Msix::new(LAYOUT, rec.clone()).unwrap();
        let (_, mut config, _, _) = setup();
        let cap = msix.add_capability(&mut config).unwrap();
        program(&mut msix, 1, 0xfee0_0000, 0x31);
        write_control(&mut msix, &mut config, cap, CONTROL_ENABLE);
        assert!(msix.irqfd(1).is_some());
        assert!(msix.irqfd(3).is_none(), "vector 3 does not exist");
        // A backend's write while masked leaves no pending bit: the unmask must deliver.
        set_vector_mask(&mut msix, 1, false);
        set_vector_mask(&mut msix, 1, true);
        set_vector_mask(&mut msix, 1, false);
        assert_eq!(rec.triggered(), vec![1, 1]);
        // Vectors whose irqfd nobody holds keep the pending-bit rule.
        program(&mut msix, 0, 0xfee0_0000, 0x30);
        set_vector_mask(&mut msix, 0, false);
        assert_eq!(rec.triggered(), vec![1, 1]);
    }

    #[test]
    fn function_mask_and_enable_gate_every_vector() {
        let (mut msix, mut config, rec, cap) = setup();
        program(&mut msix, 0, 0xfee0_0000, 0x30);
        program(&mut msix, 1, 0xfee0_0000, 0x31);
        set_vector_mask(&mut msix, 0, false);
        set_vector_mask(&mut msix, 1, false);
        // Disabled: dropped, not pending.
        msix.trigger(0).unwrap();
        assert!(!msix.pending(0));
        rec.take();

        write_control(
            &mut msix,
            &mut config,
            cap,
            CONTROL_ENABLE | CONTROL_FUNCTION_MASK,
        );
        assert!(rec.take().is_empty(), "still masked by the function mask");
        msix.trigger(1).unwrap();
        assert!(msix.pending(1) && !msix.pending(0));
        assert!(rec.triggered().is_empty());

        write_control(&mut msix, &mut config, cap, CONTROL_ENABLE);
        let events = rec.take();
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, InterruptEvent::Update { masked: false, .. }))
                .count(),
            2,
            "{events:?}"
        );
        assert_eq!(events.last(), Some(&InterruptEvent::Trigger { vector: 1 }));
        assert!(!msix.pending(1));

        write_control(&mut msix, &mut config, cap, 0);
        assert!(rec
            .take()
            .iter()
            .all(|e| matches!(e, InterruptEvent::Update { masked: true, .. })));
        assert!(matches!(
            msix.trigger(3),
            Err(InterruptError::NoSuchVector {
                vector: 3,
                count: 3
            })
        ));
    }

    #[test]
    fn vectors_through_the_shared_handle() {
        let (mut msix, mut config, rec, cap) = setup();
        program(&mut msix, 1, 0xfee0_0000, 0x33);
        set_vector_mask(&mut msix, 1, false);
        write_control(&mut msix, &mut config, cap, CONTROL_ENABLE);
        rec.take();
        let vectors = MsixVectors(Arc::new(Mutex::new(msix)));
        VectorInterrupts::trigger(&vectors, 1).unwrap();
        assert_eq!(rec.triggered(), vec![1]);
    }

    #[test]
    fn bad_layouts_are_refused() {
        let rec: Arc<dyn MsiInterruptRoutes> = Arc::new(RecordingInterrupts::new());
        let with = |vectors, table_offset, pba_offset| MsixLayout {
            bar: 0,
            vectors,
            table_offset,
            pba_offset,
        };
        assert!(matches!(
            Msix::new(with(0, 0, 0x100), rec.clone()),
            Err(MsixError::Vectors(0))
        ));
        assert!(matches!(
            Msix::new(with(4, 0, 0x20), rec.clone()),
            Err(MsixError::Layout { .. })
        ));
        assert!(matches!(
            Msix::new(with(4, 4, 0x100), rec.clone()),
            Err(MsixError::Layout { .. })
        ));
        let ok = Msix::new(with(65, 0, 0x1000), rec).unwrap();
        assert_eq!(ok.layout().pba_len(), 16);
        assert_eq!(ok.layout().bar_len_needed(), 0x1010);
    }
}
