//! The root PCI bus: bus 0, 32 device slots (function 0 only), a host bridge at 00:00.0, and the
//! two ways a guest reaches configuration space: the type-1 ports 0xCF8/0xCFC and ECAM (MMIO).
//!
//! Config accesses to absent devices, functions or buses read all ones. When a configuration
//! write moves a BAR, the root tells its [`BarMapper`], which re-maps the BAR on the MMIO bus.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::allocator::{AllocatorError, BarAllocator};
use super::config::{Bar, BarReprogram, ConfigError, PciConfig, PciIds};
use crate::bus::{Bus, BusDevice, BusError};

/// Devices on the root bus, including the host bridge at slot 0.
pub const SLOTS: usize = 32;
/// Ports of the type-1 mechanism: address at 0xCF8, data at 0xCFC..=0xCFF.
pub const CONFIG_IO_PORT: u16 = 0xcf8;
pub const CONFIG_IO_PORT_SPAN: u64 = 8;
/// Bytes of ECAM per bus (32 devices x 8 functions x 4 KiB).
pub const ECAM_BUS_SIZE: u64 = 1 << 20;

/// The host bridge's identity: Red Hat's id for a generic virtual PCIe host bridge, which no
/// guest driver binds to or applies quirks for; class 06/00/00 (host bridge).
pub const HOST_BRIDGE_IDS: PciIds = PciIds {
    vendor: 0x1b36,
    device: 0x0008,
    class: 0x060000,
    revision: 0,
    subsystem_vendor: 0x1b36,
    subsystem: 0x0008,
};

/// Type-1 address register: enable bit, bus/device/function/register fields.
const ADDRESS_ENABLE: u32 = 1 << 31;
const ADDRESS_WRITABLE: u32 = ADDRESS_ENABLE | 0x00ff_fffc;

#[derive(Debug, thiserror::Error)]
pub enum PciBusError {
    #[error("all {SLOTS} PCI slots of bus 0 are taken: remove a device")]
    NoFreeSlot,
    #[error("cannot place BAR {bar} of PCI device {slot:02x}: {source}")]
    Allocate {
        slot: u8,
        bar: u8,
        source: AllocatorError,
    },
    #[error("cannot program BAR {bar} of PCI device {slot:02x}: {source}")]
    Program {
        slot: u8,
        bar: u8,
        source: ConfigError,
    },
    #[error("cannot map BAR {bar} of PCI device {slot:02x} at {addr:#x}: {source}")]
    Map {
        slot: u8,
        bar: u8,
        addr: u64,
        source: BarMapError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BarMapError {
    #[error("{0}")]
    Bus(#[from] BusError),
    #[error("{0}")]
    Other(String),
}

/// A PCI function on the root bus.
pub trait PciDevice: Send {
    fn config(&self) -> &PciConfig;
    fn config_mut(&mut self) -> &mut PciConfig;

    /// Guest configuration read (1, 2 or 4 bytes at `offset` < 4096).
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        self.config().read(offset, data);
    }

    /// Guest configuration write. Returns the BARs the write moved (see [`PciConfig::write`]);
    /// devices with capabilities override this to react (e.g. MSI-X enable) and pass them on.
    fn write_config(&mut self, offset: u16, data: &[u8]) -> Vec<BarReprogram> {
        self.config_mut().write(offset, data)
    }

    /// Guest access at `offset` inside BAR `bar`.
    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]);
    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]);

    /// The VM is ending (its vCPUs have stopped): stop the threads the device runs, and return
    /// once they have ended.
    fn stop(&mut self) {}

    /// Calls `visit(offset, event)` for each eventfd the VMM registers as a KVM ioeventfd (no
    /// datamatch) at `offset` inside BAR `bar`, so that a [`BarMapper`] can move them with it.
    fn visit_ioevents(&self, _bar: u8, _visit: &mut dyn FnMut(u64, &EventFd)) {}
}

/// Puts BARs where the guest sees them (implemented by the VMM, or [`MmioBarMapper`]).
pub trait BarMapper: Send + Sync {
    /// First placement of `bar` of the device in `slot` at `addr`.
    fn map(
        &self,
        slot: u8,
        device: &Arc<Mutex<dyn PciDevice>>,
        bar: Bar,
        addr: u64,
    ) -> Result<(), BarMapError>;
    /// The guest moved a BAR.
    fn moved(
        &self,
        slot: u8,
        device: &Arc<Mutex<dyn PciDevice>>,
        moved: BarReprogram,
    ) -> Result<(), BarMapError>;
}

/// The host bridge at 00:00.0: a header and nothing behind it.
pub struct PciHostBridge {
    config: PciConfig,
}

impl PciHostBridge {
    pub fn new() -> Self {
        Self {
            config: PciConfig::new(&HOST_BRIDGE_IDS),
        }
    }
}

impl Default for PciHostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for PciHostBridge {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn read_bar(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write_bar(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
}

type SharedDevice = Arc<Mutex<dyn PciDevice>>;

/// Bus 0 and its devices.
pub struct PciRoot {
    slots: Mutex<[Option<SharedDevice>; SLOTS]>,
    mapper: Arc<dyn BarMapper>,
}

impl PciRoot {
    /// A root bus with the host bridge in slot 0.
    pub fn new(mapper: Arc<dyn BarMapper>) -> Self {
        let mut slots: [Option<SharedDevice>; SLOTS] = Default::default();
        slots[0] = Some(Arc::new(Mutex::new(PciHostBridge::new())));
        Self {
            slots: Mutex::new(slots),
            mapper,
        }
    }

    /// Plugs `device` into the lowest free slot, places each of its BARs with `allocator`,
    /// programs the addresses and maps them. Returns the slot (device number).
    pub fn add_device(
        &self,
        device: SharedDevice,
        allocator: &mut BarAllocator,
    ) -> Result<u8, PciBusError> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciBusError::NoFreeSlot)? as u8;
        let bars: Vec<Bar> = lock(&device).config().bars().collect();
        for bar in bars {
            let addr = allocator
                .allocate(&bar)
                .map_err(|source| PciBusError::Allocate {
                    slot,
                    bar: bar.index,
                    source,
                })?;
            lock(&device)
                .config_mut()
                .place_bar(bar.index, addr)
                .map_err(|source| PciBusError::Program {
                    slot,
                    bar: bar.index,
                    source,
                })?;
            self.mapper
                .map(slot, &device, bar, addr)
                .map_err(|source| PciBusError::Map {
                    slot,
                    bar: bar.index,
                    addr,
                    source,
                })?;
        }
        slots[usize::from(slot)] = Some(device);
        Ok(slot)
    }

    /// Stops every device (see [`PciDevice::stop`]); called once the vCPUs have stopped.
    pub fn stop_devices(&self) {
        let devices: Vec<SharedDevice> = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flatten()
            .cloned()
            .collect();
        for device in devices {
            lock(&device).stop();
        }
    }

    fn device(&self, bus: u8, slot: u8, function: u8) -> Option<SharedDevice> {
        if bus != 0 || function != 0 {
            return None;
        }
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.get(usize::from(slot))?.clone()
    }

    /// Configuration read of `data.len()` bytes at `reg` of bus:slot.function.
    pub fn config_read(&self, bus: u8, slot: u8, function: u8, reg: u16, data: &mut [u8]) {
        match self.device(bus, slot, function) {
            Some(device) => lock(&device).read_config(reg, data),
            None => data.fill(0xff),
        }
    }

    /// Configuration write; re-maps the BARs it moved.
    pub fn config_write(&self, bus: u8, slot: u8, function: u8, reg: u16, data: &[u8]) {
        let Some(device) = self.device(bus, slot, function) else {
            return;
        };
        // The device lock is released before mapping: the mapper touches the MMIO bus, which
        // other vCPUs reach while holding this device's BAR windows.
        let moved = lock(&device).write_config(reg, data);
        for event in moved {
            if let Err(e) = self.mapper.moved(slot, &device, event) {
                // The BAR stays mapped where it was; a later write or decode enable retries.
                lock(&device)
                    .config_mut()
                    .set_bar_mapping(event.bar, event.old);
                log::warn!(
                    "PCI device {slot:02x}: BAR {} moved from {:#x} to {:#x} but cannot be re-mapped: {e}",
                    event.bar,
                    event.old,
                    event.new
                );
            }
        }
    }
}

fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn PciDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

/// The type-1 configuration mechanism, for the port-I/O bus at [`CONFIG_IO_PORT`] with length
/// [`CONFIG_IO_PORT_SPAN`].
pub struct PciConfigIo {
    root: Arc<PciRoot>,
    address: u32,
}

impl PciConfigIo {
    pub fn new(root: Arc<PciRoot>) -> Self {
        Self { root, address: 0 }
    }

    /// Bus, device, function and register of the current address, or None when disabled.
    fn target(&self, data_offset: u64) -> Option<(u8, u8, u8, u16)> {
        if self.address & ADDRESS_ENABLE == 0 {
            return None;
        }
        let bus = (self.address >> 16) as u8;
        let slot = ((self.address >> 11) & 0x1f) as u8;
        let function = ((self.address >> 8) & 0x7) as u8;
        let reg = (self.address & 0xfc) as u16 + data_offset as u16;
        Some((bus, slot, function, reg))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0..4 => {
                let bytes = self.address.to_le_bytes();
                let start = offset as usize;
                for (i, b) in data.iter_mut().enumerate() {
                    *b = bytes.get(start + i).copied().unwrap_or(0xff);
                }
            }
            _ => match self.target(offset - 4) {
                Some((bus, slot, function, reg)) if usize::from(reg % 4) + data.len() <= 4 => {
                    self.root.config_read(bus, slot, function, reg, data)
                }
                _ => data.fill(0xff),
            },
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            // Only dword writes set the address (byte writes to 0xCF9 are a chipset reset
            // register on real PCs, not part of the address).
            (0, 4) => {
                let mut bytes = [0u8; 4];
                bytes.copy_from_slice(data);
                self.address = u32::from_le_bytes(bytes) & ADDRESS_WRITABLE;
            }
            (0..4, _) => {}
            _ => {
                if let Some((bus, slot, function, reg)) = self.target(offset - 4) {
                    if usize::from(reg % 4) + data.len() <= 4 {
                        self.root.config_write(bus, slot, function, reg, data);
                    }
                }
            }
        }
    }
}

/// ECAM: configuration space as MMIO, `offset = bus << 20 | device << 15 | function << 12 | reg`.
/// Insert it on the MMIO bus at the ECAM base with the window's length.
pub struct PciConfigMmio {
    root: Arc<PciRoot>,
}

impl PciConfigMmio {
    pub fn new(root: Arc<PciRoot>) -> Self {
        Self { root }
    }
}

fn ecam_decode(offset: u64) -> (u8, u8, u8, u16) {
    (
        (offset >> 20) as u8,
        ((offset >> 15) & 0x1f) as u8,
        ((offset >> 12) & 0x7) as u8,
        (offset & 0xfff) as u16,
    )
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 256 * ECAM_BUS_SIZE {
            data.fill(0xff);
            return;
        }
        let (bus, slot, function, reg) = ecam_decode(offset);
        self.root.config_read(bus, slot, function, reg, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= 256 * ECAM_BUS_SIZE {
            return;
        }
        let (bus, slot, function, reg) = ecam_decode(offset);
        self.root.config_write(bus, slot, function, reg, data);
    }
}

/// One BAR of a device, as a device on the MMIO bus.
pub struct BarWindow {
    device: SharedDevice,
    bar: u8,
}

impl BarWindow {
    pub fn new(device: SharedDevice, bar: u8) -> Self {
        Self { device, bar }
    }
}

impl BusDevice for BarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.device).read_bar(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.device).write_bar(self.bar, offset, data);
    }
}

/// Maps BARs as [`BarWindow`]s on the VMM's MMIO bus and moves them when the guest does.
pub struct MmioBarMapper {
    bus: Arc<Bus>,
}

impl MmioBarMapper {
    pub fn new(bus: Arc<Bus>) -> Self {
        Self { bus }
    }
}

impl BarMapper for MmioBarMapper {
    fn map(
        &self,
        _slot: u8,
        device: &Arc<Mutex<dyn PciDevice>>,
        bar: Bar,
        addr: u64,
    ) -> Result<(), BarMapError> {
        let window = Arc::new(Mutex::new(BarWindow::new(device.clone(), bar.index)));
        self.bus.insert(window, addr, bar.size)?;
        Ok(())
    }

    fn moved(
        &self,
        _slot: u8,
        _device: &Arc<Mutex<dyn PciDevice>>,
        moved: BarReprogram,
    ) -> Result<(), BarMapError> {
        let window = self
            .bus
            .remove(moved.old)
            .ok_or_else(|| BarMapError::Other(format!("nothing mapped at {:#x}", moved.old)))?;
        if let Err(e) = self.bus.insert(window.clone(), moved.new, moved.len) {
            // Keep the BAR reachable where it was rather than losing it.
            self.bus.insert(window, moved.old, moved.len)?;
            return Err(e.into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::allocator::Window;
    use crate::pci::config::{BarKind, COMMAND, COMMAND_MEMORY_SPACE};

    /// A device with a 32-bit BAR 0 that stores what is written and a 64-bit BAR 2.
    struct Scratch {
        config: PciConfig,
        memory: Vec<u8>,
    }

    impl Scratch {
        fn new() -> Self {
            let mut config = PciConfig::new(&PciIds {
                vendor: 0x1af4,
                device: 0x1041,
                class: 0x020000,
                revision: 1,
                subsystem_vendor: 0x1af4,
                subsystem: 1,
            });
            config
                .add_bar(Bar {
                    index: 0,
                    size: 0x1000,
                    kind: BarKind::Memory32 {
                        prefetchable: false,
                    },
                })
                .unwrap();
            config
                .add_bar(Bar {
                    index: 2,
                    size: 0x4000,
                    kind: BarKind::Memory64 {
                        prefetchable: false,
                    },
                })
                .unwrap();
            Self {
                config,
                memory: vec![0; 0x1000],
            }
        }
    }

    impl PciDevice for Scratch {
        fn config(&self) -> &PciConfig {
            &self.config
        }
        fn config_mut(&mut self) -> &mut PciConfig {
            &mut self.config
        }
        fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
            let at = offset as usize;
            match bar {
                0 => data.copy_from_slice(&self.memory[at..at + data.len()]),
                _ => data.fill(bar),
            }
        }
        fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
            if bar == 0 {
                let at = offset as usize;
                self.memory[at..at + data.len()].copy_from_slice(data);
            }
        }
    }

    struct Fixture {
        root: Arc<PciRoot>,
        mmio: Arc<Bus>,
        pio: Bus,
    }

    fn fixture() -> Fixture {
        let mmio = Arc::new(Bus::new());
        let root = Arc::new(PciRoot::new(Arc::new(MmioBarMapper::new(mmio.clone()))));
        let pio = Bus::new();
        pio.insert(
            Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
            u64::from(CONFIG_IO_PORT),
            CONFIG_IO_PORT_SPAN,
        )
        .unwrap();
        mmio.insert(
            Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))),
            0xe000_0000,
            0x1000_0000,
        )
        .unwrap();
        Fixture { root, mmio, pio }
    }

    fn allocator() -> BarAllocator {
        BarAllocator::new(
            Window {
                base: 0xc000_0000,
                size: 0x2000_0000,
            },
            Window {
                base: 0x1_0000_0000,
                size: 0x1_0000_0000,
            },
        )
        .unwrap()
    }

    fn type1_read(pio: &Bus, bus: u8, dev: u8, reg: u8) -> u32 {
        let addr = ADDRESS_ENABLE
            | (u32::from(bus) << 16)
            | (u32::from(dev) << 11)
            | u32::from(reg & 0xfc);
        assert!(pio.write(0xcf8, &addr.to_le_bytes()));
        let mut b = [0u8; 4];
        assert!(pio.read(0xcfc, &mut b));
        u32::from_le_bytes(b)
    }

    fn type1_write(pio: &Bus, dev: u8, reg: u8, value: u32) {
        let addr = ADDRESS_ENABLE | (u32::from(dev) << 11) | u32::from(reg);
        pio.write(0xcf8, &addr.to_le_bytes());
        pio.write(0xcfc, &value.to_le_bytes());
    }

    fn ecam_read(mmio: &Bus, bus: u64, dev: u64, func: u64, reg: u64) -> u32 {
        let mut b = [0u8; 4];
        assert!(mmio.read(
            0xe000_0000 + (bus << 20 | dev << 15 | func << 12 | reg),
            &mut b
        ));
        u32::from_le_bytes(b)
    }

    #[test]
    fn host_bridge_and_empty_slots_through_type1() {
        let f = fixture();
        assert_eq!(type1_read(&f.pio, 0, 0, 0), 0x0008_1b36);
        assert_eq!(type1_read(&f.pio, 0, 0, 8) >> 8, 0x060000);
        assert_eq!(type1_read(&f.pio, 0, 1, 0), u32::MAX);
        assert_eq!(type1_read(&f.pio, 1, 0, 0), u32::MAX);
        // The address register reads back; disabled addresses read ones.
        let mut b = [0u8; 4];
        f.pio.read(0xcf8, &mut b);
        assert_eq!(u32::from_le_bytes(b), ADDRESS_ENABLE | (1 << 16));
        f.pio.write(0xcf8, &0u32.to_le_bytes());
        f.pio.read(0xcfc, &mut b);
        assert_eq!(b, [0xff; 4]);
        // Byte and word reads at 0xCFD..: the register's other lanes.
        f.pio.write(0xcf8, &ADDRESS_ENABLE.to_le_bytes());
        let mut w = [0u8; 2];
        f.pio.read(0xcfe, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0008);
        let mut one = [0u8; 1];
        f.pio.read(0xcfd, &mut one);
        assert_eq!(one[0], 0x1b);
    }

    #[test]
    fn devices_get_bars_and_are_reachable_through_both_mechanisms() {
        let f = fixture();
        let mut alloc = allocator();
        let slot = f
            .root
            .add_device(Arc::new(Mutex::new(Scratch::new())), &mut alloc)
            .unwrap();
        assert_eq!(slot, 1);
        assert_eq!(type1_read(&f.pio, 0, 1, 0), 0x1041_1af4);
        assert_eq!(ecam_read(&f.mmio, 0, 1, 0, 0), 0x1041_1af4);
        assert_eq!(ecam_read(&f.mmio, 0, 1, 1, 0), u32::MAX, "function 1");
        assert_eq!(ecam_read(&f.mmio, 3, 1, 0, 0), u32::MAX, "bus 3");
        assert_eq!(type1_read(&f.pio, 0, 1, 0x10), 0xc000_0000);
        assert_eq!(type1_read(&f.pio, 0, 1, 0x18), 0x0000_0004);
        assert_eq!(type1_read(&f.pio, 0, 1, 0x1c), 0x1);
        // The extended space is only reachable through ECAM.
        assert_eq!(ecam_read(&f.mmio, 0, 1, 0, 0x100), 0);

        assert!(f.mmio.write(0xc000_0010, &[1, 2, 3, 4]));
        let mut b = [0u8; 4];
        assert!(f.mmio.read(0xc000_0010, &mut b));
        assert_eq!(b, [1, 2, 3, 4]);
        assert!(f.mmio.read(0x1_0000_0000, &mut b));
        assert_eq!(b, [2; 4]);
    }

    #[test]
    fn guest_moving_a_bar_remaps_it_on_the_mmio_bus() {
        let f = fixture();
        let mut alloc = allocator();
        f.root
            .add_device(Arc::new(Mutex::new(Scratch::new())), &mut alloc)
            .unwrap();
        f.mmio.write(0xc000_0000, &[9]);

        // Like Linux: decoding off, size, program, decoding on.
        type1_write(&f.pio, 1, 0x10, u32::MAX);
        assert_eq!(type1_read(&f.pio, 0, 1, 0x10), 0xffff_f000);
        type1_write(&f.pio, 1, 0x10, 0xd000_0000);
        let mut b = [0u8; 1];
        assert!(f.mmio.read(0xc000_0000, &mut b), "still at the old place");
        type1_write(
            &f.pio,
            1,
            u8::try_from(COMMAND).unwrap(),
            u32::from(COMMAND_MEMORY_SPACE),
        );
        assert!(!f.mmio.read(0xc000_0000, &mut b), "old place is empty");
        assert!(f.mmio.read(0xd000_0000, &mut b));
        assert_eq!(b[0], 9);

        // ECAM writes move BARs too.
        let bar0 = 0xe000_0000 + (1 << 15) + 0x10;
        assert!(f.mmio.write(bar0, &0xd100_0000u32.to_le_bytes()));
        assert!(f.mmio.read(0xd100_0000, &mut b));
        assert_eq!(b[0], 9);
        // A move onto the ECAM window fails and leaves the BAR where it was; ECAM still works,
        // and a later move starts from where the BAR really is.
        assert!(f.mmio.write(bar0, &0xe000_0000u32.to_le_bytes()));
        assert!(f.mmio.read(0xd100_0000, &mut b));
        assert_eq!(b[0], 9);
        assert_eq!(ecam_read(&f.mmio, 0, 0, 0, 0), 0x0008_1b36);
        assert!(f.mmio.write(bar0, &0xd200_0000u32.to_le_bytes()));
        assert!(f.mmio.read(0xd200_0000, &mut b));
        assert_eq!(b[0], 9);
        assert!(!f.mmio.read(0xd100_0000, &mut b));
    }

    /// A function whose 64-bit BAR 0 holds an MSI-X table at 0 and its PBA at 0x800.
    struct MsixFunction {
        config: PciConfig,
        msix: Arc<Mutex<crate::pci::Msix>>,
    }

    impl PciDevice for MsixFunction {
        fn config(&self) -> &PciConfig {
            &self.config
        }
        fn config_mut(&mut self) -> &mut PciConfig {
            &mut self.config
        }
        fn write_config(&mut self, offset: u16, data: &[u8]) -> Vec<BarReprogram> {
            let moved = self.config.write(offset, data);
            let mut msix = self.msix.lock().unwrap();
            msix.config_written(&self.config, offset, data.len())
                .unwrap();
            moved
        }
        fn read_bar(&mut self, _bar: u8, offset: u64, data: &mut [u8]) {
            if !self.msix.lock().unwrap().read_bar(offset, data) {
                data.fill(0);
            }
        }
        fn write_bar(&mut self, _bar: u8, offset: u64, data: &[u8]) {
            self.msix.lock().unwrap().write_bar(offset, data).unwrap();
        }
    }

    #[test]
    fn msix_programmed_by_the_guest_through_ecam_and_the_bar() {
        use crate::interrupt::{RecordingInterrupts, VectorInterrupts};
        use crate::pci::{MsixLayout, MsixVectors};

        let f = fixture();
        let rec = Arc::new(RecordingInterrupts::new());
        let layout = MsixLayout {
            bar: 0,
            vectors: 2,
            table_offset: 0,
            pba_offset: 0x800,
        };
        let msix = Arc::new(Mutex::new(
            crate::pci::Msix::new(layout, rec.clone()).unwrap(),
        ));
        let mut config = PciConfig::new(&HOST_BRIDGE_IDS);
        config
            .add_bar(Bar {
                index: 0,
                size: 0x1000,
                kind: BarKind::Memory64 {
                    prefetchable: false,
                },
            })
            .unwrap();
        let cap = msix.lock().unwrap().add_capability(&mut config).unwrap();
        let device = Arc::new(Mutex::new(MsixFunction {
            config,
            msix: msix.clone(),
        }));
        let slot = f.root.add_device(device, &mut allocator()).unwrap();
        let ecam = 0xe000_0000 + (u64::from(slot) << 15);

        // The guest finds the capability through the list, then programs vector 1 and enables.
        assert_eq!(ecam_read(&f.mmio, 0, u64::from(slot), 0, 0x34) & 0xff, 0x40);
        assert_eq!(ecam_read(&f.mmio, 0, u64::from(slot), 0, 0x40) & 0xff, 0x11);
        let table = 0x1_0000_0000u64;
        assert!(f.mmio.write(table + 16, &0xfee0_0000u64.to_le_bytes()));
        assert!(f.mmio.write(table + 24, &0x45u32.to_le_bytes()));
        assert!(f.mmio.write(
            ecam + u64::from(cap) + 2,
            &crate::pci::msix::CONTROL_ENABLE.to_le_bytes()
        ));
        let vectors = MsixVectors(msix);
        vectors.trigger(1).unwrap();
        assert!(rec.triggered().is_empty(), "vector 1 is still masked");
        let mut pba = [0u8; 8];
        assert!(f.mmio.read(table + 0x800, &mut pba));
        assert_eq!(u64::from_le_bytes(pba), 0b10);
        assert!(f.mmio.write(table + 28, &0u32.to_le_bytes()));
        assert_eq!(rec.triggered(), vec![1]);
        vectors.trigger(1).unwrap();
        assert_eq!(rec.triggered(), vec![1, 1]);
    }

    #[test]
    fn slots_run_out() {
        let f = fixture();
        let mut alloc = allocator();
        for expected in 1..SLOTS as u8 {
            let slot = f
                .root
                .add_device(Arc::new(Mutex::new(Scratch::new())), &mut alloc)
                .unwrap();
            assert_eq!(slot, expected);
        }
        let err = f
            .root
            .add_device(Arc::new(Mutex::new(Scratch::new())), &mut alloc)
            .unwrap_err();
        assert!(matches!(err, PciBusError::NoFreeSlot), "{err}");
    }
}
