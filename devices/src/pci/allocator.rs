//! BAR placement: 32-bit BARs in the 32-bit PCI hole, 64-bit BARs in a window above 4 GiB after
//! RAM. The windows come from the VMM's memory layout as arguments; this crate knows no layout.

use super::config::{Bar, BarKind};

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocatorError {
    #[error("PCI {window} window {base:#x}+{size:#x} is empty, overflows or crosses 4 GiB for a 32-bit window")]
    BadWindow {
        window: &'static str,
        base: u64,
        size: u64,
    },
    #[error("PCI {window} window is full: no room for a {size:#x}-byte BAR (in use up to {next:#x} of {end:#x}): use fewer or smaller devices")]
    OutOfSpace {
        window: &'static str,
        size: u64,
        next: u64,
        end: u64,
    },
    #[error("a BAR of size {size:#x} cannot be placed: sizes are powers of two")]
    BadSize { size: u64 },
}

/// An address range `[base, base + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub base: u64,
    pub size: u64,
}

impl Window {
    pub fn end(&self) -> u64 {
        self.base + self.size
    }
}

/// Hands out naturally aligned ranges from one window, lowest first.
#[derive(Debug)]
struct BumpWindow {
    name: &'static str,
    next: u64,
    end: u64,
}

impl BumpWindow {
    fn new(name: &'static str, window: Window, below_4g: bool) -> Result<Self, AllocatorError> {
        let bad = AllocatorError::BadWindow {
            window: name,
            base: window.base,
            size: window.size,
        };
        let end = window.base.checked_add(window.size).ok_or(bad.clone())?;
        if window.size == 0 || (below_4g && end > 1 << 32) {
            return Err(bad);
        }
        Ok(Self {
            name,
            next: window.base,
            end,
        })
    }

    fn allocate(&mut self, size: u64) -> Result<u64, AllocatorError> {
        if !size.is_power_of_two() {
            return Err(AllocatorError::BadSize { size });
        }
        let out_of_space = AllocatorError::OutOfSpace {
            window: self.name,
            size,
            next: self.next,
            end: self.end,
        };
        let start = self
            .next
            .checked_next_multiple_of(size)
            .ok_or(out_of_space.clone())?;
        let end = start.checked_add(size).ok_or(out_of_space.clone())?;
        if end > self.end {
            return Err(out_of_space);
        }
        self.next = end;
        Ok(start)
    }
}

/// Places BARs: 32-bit BARs in `mmio32`, 64-bit BARs in `mmio64`.
#[derive(Debug)]
pub struct BarAllocator {
    mmio32: BumpWindow,
    mmio64: BumpWindow,
}

impl BarAllocator {
    /// `mmio32` must end at or below 4 GiB (e.g. the hole from `layout::PCI_MMIO32_START` up to
    /// the ECAM window); `mmio64` starts above RAM.
    pub fn new(mmio32: Window, mmio64: Window) -> Result<Self, AllocatorError> {
        Ok(Self {
            mmio32: BumpWindow::new("32-bit MMIO", mmio32, true)?,
            mmio64: BumpWindow::new("64-bit MMIO", mmio64, false)?,
        })
    }

    /// A naturally aligned address for `bar` in the window its kind calls for.
    pub fn allocate(&mut self, bar: &Bar) -> Result<u64, AllocatorError> {
        match bar.kind {
            BarKind::Memory32 { .. } => self.mmio32.allocate(bar.size),
            BarKind::Memory64 { .. } => self.mmio64.allocate(bar.size),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MMIO32: Window = Window {
        base: 0xc000_0000,
        size: 0x2000_0000,
    };
    const MMIO64: Window = Window {
        base: 0x1_4000_0000,
        size: 0x10_0000_0000,
    };

    fn bar(size: u64, is_64: bool) -> Bar {
        let kind = if is_64 {
            BarKind::Memory64 {
                prefetchable: false,
            }
        } else {
            BarKind::Memory32 {
                prefetchable: false,
            }
        };
        Bar {
            index: 0,
            size,
            kind,
        }
    }

    #[test]
    fn places_naturally_aligned_in_the_right_window() {
        let mut a = BarAllocator::new(MMIO32, MMIO64).unwrap();
        assert_eq!(a.allocate(&bar(0x1000, false)).unwrap(), 0xc000_0000);
        assert_eq!(a.allocate(&bar(0x10_0000, false)).unwrap(), 0xc010_0000);
        assert_eq!(a.allocate(&bar(0x1000, false)).unwrap(), 0xc020_0000);
        assert_eq!(a.allocate(&bar(0x4000, true)).unwrap(), 0x1_4000_0000);
        // 4 GiB BAR: aligned up to 8 GiB.
        assert_eq!(a.allocate(&bar(1 << 32, true)).unwrap(), 0x2_0000_0000);
        assert_eq!(a.allocate(&bar(0x4000, true)).unwrap(), 0x3_0000_0000);
    }

    #[test]
    fn refuses_when_full_or_misconfigured() {
        let mut a = BarAllocator::new(MMIO32, MMIO64).unwrap();
        assert_eq!(a.allocate(&bar(0x1000_0000, false)).unwrap(), 0xc000_0000);
        assert_eq!(a.allocate(&bar(0x1000_0000, false)).unwrap(), 0xd000_0000);
        let err = a.allocate(&bar(0x10, false)).unwrap_err();
        assert!(matches!(err, AllocatorError::OutOfSpace { .. }), "{err}");
        assert!(matches!(
            a.allocate(&bar(0x20_0000_0000, true)),
            Err(AllocatorError::OutOfSpace { .. })
        ));
        assert!(matches!(
            a.allocate(&bar(0x3000, true)),
            Err(AllocatorError::BadSize { size: 0x3000 })
        ));
        let high32 = Window {
            base: 0xf000_0000,
            size: 0x2000_0000,
        };
        assert!(matches!(
            BarAllocator::new(high32, MMIO64),
            Err(AllocatorError::BadWindow { .. })
        ));
        let empty = Window { base: 0, size: 0 };
        assert!(BarAllocator::new(MMIO32, empty).is_err());
        let wrap = Window {
            base: u64::MAX,
            size: 2,
        };
        assert!(BarAllocator::new(MMIO32, wrap).is_err());
    }
}
