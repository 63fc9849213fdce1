//! Port-I/O and MMIO buses: address ranges mapped to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device on a bus. `offset` is relative to the start of the range the device was inserted at.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or overflows")]
    BadRange { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} overlaps a device already at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
}

struct Slot {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A bus shared by every vCPU thread. Inserts happen while the VM is built; lookups take a read lock.
#[derive(Default)]
pub struct Bus {
    slots: RwLock<BTreeMap<u64, Slot>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        if let Some((&other, slot)) = slots.range(..end).next_back() {
            if other + slot.len > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        slots.insert(base, Slot { len, device });
        Ok(())
    }

    /// Removes the device inserted at exactly `base` and returns it (a PCI BAR the guest moved).
    pub fn remove(&self, base: u64) -> Option<Arc<Mutex<dyn BusDevice>>> {
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        slots.remove(&base).map(|slot| slot.device)
    }

    fn find(&self, addr: u64) -> Option<(u64, Arc<Mutex<dyn BusDevice>>)> {
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        let (&base, slot) = slots.range(..=addr).next_back()?;
        (addr - base < slot.len).then(|| (addr - base, slot.device.clone()))
    }

    /// Reads from the device at `addr`. Returns false when nothing is there (the caller decides
    /// what an access to an empty address means; reads of empty ports return all ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device at `addr`. Returns false when nothing is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_rejects_overlap() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        assert!(matches!(
            bus.insert(dev.clone(), 0x3f0, 9),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev.clone(), 0x3ff, 0),
            Err(BusError::BadRange { .. })
        ));
        bus.insert(dev.clone(), 0x400, 1).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fb, &mut b));
        assert_eq!(b[0], 3);
        assert!(!bus.read(0x3f7, &mut b));
        assert!(!bus.read(0x401, &mut b));
        assert!(bus.write(0x3f8, &[7]));
        assert_eq!(dev.lock().unwrap().0, vec![(0, vec![7])]);
    }
}
