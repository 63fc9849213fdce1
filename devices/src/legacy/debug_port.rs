//! Port 0x80, where firmware and early boot code write POST codes. Paddock remembers the last code
//! and when the guest first wrote one: the boot benchmark uses that first write as the moment the
//! guest ran its own code.

use crate::bus::BusDevice;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Stored in `last` before any write; outside the range of a byte.
const NO_CODE: u16 = u16::MAX;

#[derive(Debug)]
struct Record {
    first_write: OnceLock<Instant>,
    last: AtomicU16,
}

/// Read-only view of what the guest wrote to port 0x80, usable from any thread while the device
/// sits on the bus.
#[derive(Clone, Debug)]
pub struct PostCodes {
    record: Arc<Record>,
}

impl PostCodes {
    /// When the guest first wrote to the port.
    pub fn first_write(&self) -> Option<Instant> {
        self.record.first_write.get().copied()
    }

    /// The last code written.
    pub fn last_code(&self) -> Option<u8> {
        match self.record.last.load(Ordering::Acquire) {
            NO_CODE => None,
            code => Some(code as u8),
        }
    }
}

pub struct DebugPort {
    record: Arc<Record>,
}

impl Default for DebugPort {
    fn default() -> Self {
        Self::new()
    }
}

impl DebugPort {
    pub fn new() -> Self {
        Self {
            record: Arc::new(Record {
                first_write: OnceLock::new(),
                last: AtomicU16::new(NO_CODE),
            }),
        }
    }

    /// A handle to the recorded codes; keep it before moving the device onto the bus.
    pub fn codes(&self) -> PostCodes {
        PostCodes {
            record: self.record.clone(),
        }
    }
}

impl BusDevice for DebugPort {
    /// Reads give back the last code (0 before any), like a latch.
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        let last = self.codes().last_code().unwrap_or(0);
        data.fill(last);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let Some(&code) = data.first() else { return };
        let now = Instant::now();
        self.record.first_write.get_or_init(|| now);
        let previous = self.record.last.swap(u16::from(code), Ordering::AcqRel);
        // Linux uses this port as an I/O delay: log changes only, not every write.
        if previous != u16::from(code) {
            log::debug!("debug port: POST code {code:#04x}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_first_write_time_and_last_code() {
        let mut port = DebugPort::new();
        let codes = port.codes();
        assert_eq!(codes.first_write(), None);
        assert_eq!(codes.last_code(), None);
        let before = Instant::now();
        port.write(0, &[0x12]);
        let first = codes.first_write().unwrap();
        assert!(first >= before);
        std::thread::sleep(std::time::Duration::from_millis(2));
        port.write(0, &[0x34]);
        assert_eq!(codes.first_write(), Some(first), "first write time is kept");
        assert_eq!(codes.last_code(), Some(0x34));
        let mut b = [0u8];
        port.read(0, &mut b);
        assert_eq!(b[0], 0x34);
    }
}
