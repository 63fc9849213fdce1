//! The virtio-pci modern transport (virtio 1.2, 4.1; no legacy interface).
//!
//! One 64-bit memory BAR holds every region the driver uses:
//!
//! | offset   | region                                               |
//! |----------|------------------------------------------------------|
//! | 0x0000   | common configuration (cfg_type 1)                    |
//! | 0x1000   | ISR status (cfg_type 3)                              |
//! | 0x2000   | device-specific configuration (cfg_type 4)           |
//! | 0x3000   | notifications, 4 bytes per queue (cfg_type 2)        |
//! | 0x4000   | MSI-X table (one vector per queue + config)          |
//! | 0x8000   | MSI-X pending-bit array                              |
//!
//! Queue notifications normally never reach this code: the VMM registers each queue's
//! [`QueueNotifier::event`] as a KVM ioeventfd on its address. A notify that does arrive as an
//! MMIO write is forwarded to the same eventfd.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    feature, Activation, QueueActivation, SharedStatus, VirtioDevice, VirtioInterrupt, F_VERSION_1,
    NO_VECTOR, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};
use crate::interrupt::MsiInterruptRoutes;
use crate::pci::config::{ConfigError, PciConfig, PciIds};
use crate::pci::{Bar, BarKind, BarReprogram, Msix, MsixError, MsixLayout, MsixVectors, PciDevice};

pub const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
/// Modern (non-transitional) device ids are 0x1040 + device type.
pub const DEVICE_ID_BASE: u16 = 0x1040;
pub const REVISION: u8 = 1;

/// The BAR holding every virtio region and the MSI-X structures.
pub const BAR_INDEX: u8 = 0;
pub const BAR_SIZE: u64 = 0x1_0000;
pub const COMMON_OFFSET: u64 = 0;
/// Common configuration up to queue_device (virtio 1.0/1.1 layout; no queue_reset).
pub const COMMON_LEN: u64 = 0x38;
pub const ISR_OFFSET: u64 = 0x1000;
pub const ISR_LEN: u64 = 4;
pub const DEVICE_CONFIG_OFFSET: u64 = 0x2000;
pub const DEVICE_CONFIG_LEN: u64 = 0x1000;
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notify addresses: each queue has its own (one ioeventfd each).
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
pub const MSIX_TABLE_OFFSET: u32 = 0x4000;
pub const MSIX_PBA_OFFSET: u32 = 0x8000;
/// Queues that fit the notify region and the MSI-X table (one vector each, plus config).
pub const MAX_QUEUES: usize = 1023;

/// Vendor-specific capability id and the virtio structure types it points at.
const CAP_VENDOR: u8 = 0x09;
pub const CFG_TYPE_COMMON: u8 = 1;
pub const CFG_TYPE_NOTIFY: u8 = 2;
pub const CFG_TYPE_ISR: u8 = 3;
pub const CFG_TYPE_DEVICE: u8 = 4;

/// Common configuration field offsets.
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    #[error("a virtio-pci device has 1 to {MAX_QUEUES} queues, this one declares {0}: lower the queue count")]
    QueueCount(usize),
    #[error(
        "virtio queue {index} has maximum size {size}: it must be a power of two from 1 to 32768"
    )]
    QueueSize { index: usize, size: u16 },
    #[error(
        "the virtio device does not offer VIRTIO_F_VERSION_1: only modern virtio is supported"
    )]
    NotModern,
    #[error("cannot build the virtio-pci configuration space: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot set up MSI-X for the virtio-pci device: {0}")]
    Msix(#[from] MsixError),
    #[error("cannot create the notify eventfd of queue {index}: {source}")]
    EventFd {
        index: usize,
        source: std::io::Error,
    },
}

/// How the VMM wires one queue's notification: register `event` as an ioeventfd (no datamatch)
/// on `addr`, the absolute MMIO address (None until the BAR is placed). `offset` is relative to
/// the BAR, so the VMM can re-register when the guest moves the BAR.
pub struct QueueNotifier {
    pub queue: u16,
    pub offset: u64,
    pub addr: Option<u64>,
    pub event: EventFd,
}

/// What the driver programmed for one queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct QueueConfig {
    max_size: u16,
    size: u16,
    vector: u16,
    enabled: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            vector: NO_VECTOR,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// A virtio device behind the modern PCI transport.
pub struct VirtioPciDevice {
    config: PciConfig,
    msix: Arc<Mutex<Msix>>,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    queues: Vec<QueueConfig>,
    notify: Vec<EventFd>,
    shared: Arc<SharedStatus>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    queue_select: u16,
    active: bool,
}

fn class_code(device_type: u32) -> u32 {
    match device_type {
        super::TYPE_NET => 0x02_00_00,
        // Mass storage, other (what QEMU's vhost-user-fs-pci reports).
        super::TYPE_FS => 0x01_80_00,
        // Anything else: "other" of the unclassified base class; drivers bind by id.
        _ => 0xff_00_00,
    }
}

impl VirtioPciDevice {
    /// Wraps `device`; MSI-X routes go to `routes` (the VMM's KVM GSI routing).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        routes: Arc<dyn MsiInterruptRoutes>,
    ) -> Result<Self, VirtioPciError> {
        let sizes = device.queue_max_sizes();
        if sizes.is_empty() || sizes.len() > MAX_QUEUES {
            return Err(VirtioPciError::QueueCount(sizes.len()));
        }
        for (index, &size) in sizes.iter().enumerate() {
            if !size.is_power_of_two() || size > 32768 {
                return Err(VirtioPciError::QueueSize { index, size });
            }
        }
        if device.features() & feature(F_VERSION_1) == 0 {
            return Err(VirtioPciError::NotModern);
        }
        let device_type = device.device_type();
        let mut config = PciConfig::new(&PciIds {
            vendor: VIRTIO_PCI_VENDOR,
            device: DEVICE_ID_BASE + device_type as u16,
            class: class_code(device_type),
            revision: REVISION,
            subsystem_vendor: VIRTIO_PCI_VENDOR,
            subsystem: 0x40 + device_type as u16,
        });
        config.add_bar(Bar {
            index: BAR_INDEX,
            size: BAR_SIZE,
            kind: BarKind::Memory64 {
                prefetchable: false,
            },
        })?;
        let regions = [
            (CFG_TYPE_COMMON, COMMON_OFFSET, COMMON_LEN),
            (CFG_TYPE_ISR, ISR_OFFSET, ISR_LEN),
            (CFG_TYPE_DEVICE, DEVICE_CONFIG_OFFSET, DEVICE_CONFIG_LEN),
        ];
        for (cfg_type, offset, len) in regions {
            config.add_capability(CAP_VENDOR, &virtio_cap(cfg_type, offset, len, None))?;
        }
        let notify_len = sizes.len() as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
        config.add_capability(
            CAP_VENDOR,
            &virtio_cap(
                CFG_TYPE_NOTIFY,
                NOTIFY_OFFSET,
                notify_len,
                Some(NOTIFY_OFF_MULTIPLIER),
            ),
        )?;
        let layout = MsixLayout {
            bar: BAR_INDEX,
            vectors: sizes.len() as u16 + 1,
            table_offset: MSIX_TABLE_OFFSET,
            pba_offset: MSIX_PBA_OFFSET,
        };
        let mut msix = Msix::new(layout, routes)?;
        msix.add_capability(&mut config)?;
        let notify = (0..sizes.len())
            .map(|index| {
                EventFd::new(EFD_NONBLOCK)
                    .map_err(|source| VirtioPciError::EventFd { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let shared = Arc::new(SharedStatus::default());
        shared.config_vector.store(NO_VECTOR, Ordering::SeqCst);
        Ok(Self {
            config,
            msix: Arc::new(Mutex::new(msix)),
            device,
            mem,
            queues: sizes.into_iter().map(QueueConfig::new).collect(),
            notify,
            shared,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            active: false,
        })
    }

    /// One entry per queue: the eventfd the device waits on and where the guest writes to
    /// notify it. Register each with `register_ioevent(&event, &IoEventAddress::Mmio(addr),
    /// NoDatamatch)`; when the guest moves BAR 0, the VMM's BarMapper moves them (it finds them
    /// through `PciDevice::visit_ioevents`).
    pub fn queue_notifiers(&self) -> Result<Vec<QueueNotifier>, VirtioPciError> {
        let base = self.config.bar_mapping(BAR_INDEX);
        self.notify
            .iter()
            .enumerate()
            .map(|(index, event)| {
                let offset = notify_offset(index as u16);
                Ok(QueueNotifier {
                    queue: index as u16,
                    offset,
                    addr: base.map(|b| b + offset),
                    event: event
                        .try_clone()
                        .map_err(|source| VirtioPciError::EventFd { index, source })?,
                })
            })
            .collect()
    }

    /// The function's MSI-X vectors, as device models trigger them.
    pub fn msix_vectors(&self) -> MsixVectors {
        MsixVectors(self.msix.clone())
    }

    pub fn device_status(&self) -> u8 {
        self.shared.device_status.load(Ordering::SeqCst)
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn vector_count(&self) -> u16 {
        self.msix
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .layout()
            .vectors
    }

    /// A vector number the driver asked for, or NO_VECTOR when the function has no such vector
    /// (the driver reads the field back to see whether the assignment took).
    fn checked_vector(&self, vector: u16) -> u16 {
        if vector < self.vector_count() {
            vector
        } else {
            NO_VECTOR
        }
    }

    fn common_image(&self) -> [u8; COMMON_LEN as usize] {
        let mut image = [0u8; COMMON_LEN as usize];
        let mut put = |offset: u64, bytes: &[u8]| {
            let at = offset as usize;
            image[at..at + bytes.len()].copy_from_slice(bytes);
        };
        let features = self.device.features();
        let word = match self.device_feature_select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        let driver_word = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        put(
            DEVICE_FEATURE_SELECT,
            &self.device_feature_select.to_le_bytes(),
        );
        put(DEVICE_FEATURE, &word.to_le_bytes());
        put(
            DRIVER_FEATURE_SELECT,
            &self.driver_feature_select.to_le_bytes(),
        );
        put(DRIVER_FEATURE, &driver_word.to_le_bytes());
        put(
            CONFIG_MSIX_VECTOR,
            &self
                .shared
                .config_vector
                .load(Ordering::SeqCst)
                .to_le_bytes(),
        );
        put(NUM_QUEUES, &(self.queues.len() as u16).to_le_bytes());
        put(DEVICE_STATUS, &[self.device_status()]);
        put(
            CONFIG_GENERATION,
            &[self.shared.config_generation.load(Ordering::SeqCst)],
        );
        put(QUEUE_SELECT, &self.queue_select.to_le_bytes());
        if let Some(q) = self.queues.get(usize::from(self.queue_select)) {
            // An out-of-range queue_select reads size 0: "this queue is unavailable".
            put(QUEUE_SIZE, &q.size.to_le_bytes());
            put(QUEUE_MSIX_VECTOR, &q.vector.to_le_bytes());
            put(QUEUE_ENABLE, &u16::from(q.enabled).to_le_bytes());
            put(QUEUE_NOTIFY_OFF, &self.queue_select.to_le_bytes());
            put(QUEUE_DESC, &q.desc.to_le_bytes());
            put(QUEUE_DRIVER, &q.driver.to_le_bytes());
            put(QUEUE_DEVICE, &q.device.to_le_bytes());
        }
        image
    }

    fn read_common(&self, offset: u64, data: &mut [u8]) {
        let image = self.common_image();
        let start = offset as usize;
        match image.get(start..start + data.len()) {
            Some(bytes) => data.copy_from_slice(bytes),
            None => data.fill(0),
        }
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 8];
        let Some(dst) = bytes.get_mut(..data.len()) else {
            return;
        };
        dst.copy_from_slice(data);
        let value = u64::from_le_bytes(bytes);
        let queues_frozen = self.device_status() & STATUS_DRIVER_OK != 0;
        match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = value as u32,
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = value as u32,
            (DRIVER_FEATURE, 4) => self.write_driver_features(value as u32),
            (CONFIG_MSIX_VECTOR, 2) => {
                let vector = self.checked_vector(value as u16);
                self.shared.config_vector.store(vector, Ordering::SeqCst);
            }
            (DEVICE_STATUS, 1) => self.write_status(value as u8),
            (QUEUE_SELECT, 2) => self.queue_select = value as u16,
            _ if queues_frozen => {
                log::debug!("virtio-pci: queue write at {offset:#x} after DRIVER_OK ignored");
            }
            (QUEUE_SIZE, 2) => {
                let size = value as u16;
                if let Some(q) = self.selected_queue() {
                    if size.is_power_of_two() && size <= q.max_size && !q.enabled {
                        q.size = size;
                    } else {
                        log::warn!(
                            "virtio-pci: queue size {size} refused (maximum {}, power of two, before enable)",
                            q.max_size
                        );
                    }
                }
            }
            (QUEUE_MSIX_VECTOR, 2) => {
                let vector = self.checked_vector(value as u16);
                if let Some(q) = self.selected_queue() {
                    q.vector = vector;
                }
            }
            (QUEUE_ENABLE, 2) => {
                if let Some(q) = self.selected_queue() {
                    // Drivers only write 1; disabling one queue needs VIRTIO_F_RING_RESET.
                    if value == 1 {
                        q.enabled = true;
                    }
                }
            }
            (QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE, 4 | 8) | (0x24 | 0x2c | 0x34, 4) => {
                self.write_queue_address(offset, data.len(), value)
            }
            _ => log::debug!(
                "virtio-pci: ignored {}-byte common configuration write at {offset:#x}",
                data.len()
            ),
        }
    }

    fn write_queue_address(&mut self, offset: u64, len: usize, value: u64) {
        let Some(q) = self.selected_queue() else {
            return;
        };
        if q.enabled {
            log::warn!("virtio-pci: queue address changed after enable: ignored");
            return;
        }
        let field_start = offset & !0x7;
        let field = match field_start {
            QUEUE_DESC => &mut q.desc,
            QUEUE_DRIVER => &mut q.driver,
            _ => &mut q.device,
        };
        *field = match (len, offset & 0x4) {
            (8, _) => value,
            (_, 0) => (*field & !0xffff_ffff) | (value & 0xffff_ffff),
            _ => (*field & 0xffff_ffff) | (value << 32),
        };
    }

    fn write_driver_features(&mut self, word: u32) {
        if self.device_status() & STATUS_FEATURES_OK != 0 {
            log::warn!("virtio-pci: driver features written after FEATURES_OK: ignored");
            return;
        }
        match self.driver_feature_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(word),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(word) << 32)
            }
            select => log::debug!("virtio-pci: driver feature word {select} does not exist"),
        }
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.features();
        let unknown = self.driver_features & !offered;
        if unknown != 0 {
            log::warn!("virtio-pci: driver accepted features {unknown:#x} the device never offered: FEATURES_OK refused");
            return false;
        }
        if self.driver_features & feature(F_VERSION_1) == 0 {
            log::warn!("virtio-pci: driver did not accept VIRTIO_F_VERSION_1 (a legacy driver): FEATURES_OK refused");
            return false;
        }
        true
    }

    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.device_status();
        let driver_old = old & !STATUS_DEVICE_NEEDS_RESET;
        if value & driver_old != driver_old {
            log::warn!(
                "virtio-pci: driver cleared status bits ({old:#x} -> {value:#x}) without a reset: ignored"
            );
            return;
        }
        let mut value = value & !STATUS_DEVICE_NEEDS_RESET;
        let added = value & !driver_old;
        if added & STATUS_FEATURES_OK != 0 && !self.features_acceptable() {
            value &= !STATUS_FEATURES_OK;
        }
        let activate = added & STATUS_DRIVER_OK != 0;
        if activate && value & STATUS_FEATURES_OK == 0 {
            log::warn!("virtio-pci: DRIVER_OK without FEATURES_OK: device left inactive");
        }
        self.shared
            .device_status
            .store(value | (old & STATUS_DEVICE_NEEDS_RESET), Ordering::SeqCst);
        if activate && value & STATUS_FEATURES_OK != 0 && !self.active {
            self.activate();
        }
    }

    fn build_queue(&self, index: usize, config: &QueueConfig) -> Result<Queue, String> {
        let mut queue = Queue::new(config.max_size).map_err(|e| e.to_string())?;
        if !config.enabled {
            return Ok(queue);
        }
        queue.try_set_size(config.size).map_err(|e| e.to_string())?;
        queue
            .try_set_desc_table_address(vm_memory::GuestAddress(config.desc))
            .map_err(|e| e.to_string())?;
        queue
            .try_set_avail_ring_address(vm_memory::GuestAddress(config.driver))
            .map_err(|e| e.to_string())?;
        queue
            .try_set_used_ring_address(vm_memory::GuestAddress(config.device))
            .map_err(|e| e.to_string())?;
        queue.set_event_idx(self.driver_features & feature(super::F_RING_EVENT_IDX) != 0);
        queue.set_ready(true);
        if !queue.is_valid(&self.mem) {
            return Err(format!(
                "queue {index} rings (desc {:#x}, driver {:#x}, device {:#x}, size {}) are not in guest RAM",
                config.desc, config.driver, config.device, config.size
            ));
        }
        Ok(queue)
    }

    fn activate(&mut self) {
        let interrupt = VirtioInterrupt::new(Arc::new(self.msix_vectors()), self.shared.clone());
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, config) in self.queues.iter().enumerate() {
            let prepared = self.build_queue(index, config).and_then(|queue| {
                let notify = self.notify[index]
                    .try_clone()
                    .map_err(|e| format!("cannot clone the notify eventfd: {e}"))?;
                Ok(QueueActivation {
                    queue,
                    notify,
                    vector: config.vector,
                })
            });
            match prepared {
                Ok(q) => queues.push(q),
                Err(reason) => {
                    log::error!("virtio-pci: cannot activate the device: queue {index}: {reason}");
                    self.fail(&interrupt);
                    return;
                }
            }
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            interrupt: interrupt.clone(),
            acked_features: self.driver_features,
        };
        match self.device.activate(activation) {
            Ok(()) => self.active = true,
            Err(e) => {
                log::error!("virtio-pci: cannot activate the device: {e}");
                self.fail(&interrupt);
            }
        }
    }

    fn fail(&self, interrupt: &VirtioInterrupt) {
        if let Err(e) = interrupt.set_needs_reset() {
            log::warn!("virtio-pci: cannot signal DEVICE_NEEDS_RESET: {e}");
        }
    }

    /// Status 0: the device forgets everything the driver set up.
    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max_size);
        }
        // Notifications the old driver left in the eventfds stay: a device reads them at its
        // next activation as one spurious kick, which finds nothing new, and the vCPU thread
        // doing this reset makes no read of its own.
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.shared.isr.store(0, Ordering::SeqCst);
        self.shared.config_vector.store(NO_VECTOR, Ordering::SeqCst);
        self.shared.device_status.store(0, Ordering::SeqCst);
    }
}

/// Offset of queue `index`'s notify address inside the BAR.
pub fn notify_offset(index: u16) -> u64 {
    NOTIFY_OFFSET + u64::from(index) * u64::from(NOTIFY_OFF_MULTIPLIER)
}

/// Body of a `virtio_pci_cap` (after the capability id and next pointer).
fn virtio_cap(cfg_type: u8, offset: u64, len: u64, multiplier: Option<u32>) -> Vec<u8> {
    let cap_len: u8 = if multiplier.is_some() { 20 } else { 16 };
    let mut body = vec![cap_len, cfg_type, BAR_INDEX, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(len as u32).to_le_bytes());
    if let Some(m) = multiplier {
        body.extend_from_slice(&m.to_le_bytes());
    }
    body
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn write_config(&mut self, offset: u16, data: &[u8]) -> Vec<BarReprogram> {
        let moved = self.config.write(offset, data);
        let mut msix = self.msix.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = msix.config_written(&self.config, offset, data.len()) {
            log::warn!("virtio-pci: MSI-X control update failed: {e}");
        }
        moved
    }

    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != BAR_INDEX {
            return;
        }
        if self
            .msix
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read_bar(offset, data)
        {
            return;
        }
        let end = offset.saturating_add(data.len() as u64);
        if end <= COMMON_OFFSET + COMMON_LEN {
            self.read_common(offset - COMMON_OFFSET, data);
        } else if (ISR_OFFSET..ISR_OFFSET + ISR_LEN).contains(&offset) {
            // Reading the ISR acknowledges it.
            data[0] = self.shared.isr.swap(0, Ordering::SeqCst);
        } else if offset >= DEVICE_CONFIG_OFFSET && end <= DEVICE_CONFIG_OFFSET + DEVICE_CONFIG_LEN
        {
            self.device.read_config(offset - DEVICE_CONFIG_OFFSET, data);
        }
    }

    /// The queue notify addresses, so the VMM's ioeventfds follow the BAR when the guest moves it.
    fn visit_ioevents(&self, bar: u8, visit: &mut dyn FnMut(u64, &EventFd)) {
        if bar != BAR_INDEX {
            return;
        }
        for (index, event) in self.notify.iter().enumerate() {
            visit(notify_offset(index as u16), event);
        }
    }

    /// The device model stops its workers as on a driver reset; the transport's registers no
    /// longer matter.
    fn stop(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar != BAR_INDEX {
            return;
        }
        match self
            .msix
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_bar(offset, data)
        {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                log::warn!("virtio-pci: MSI-X table write failed: {e}");
                return;
            }
        }
        let end = offset.saturating_add(data.len() as u64);
        let notify_end = notify_offset(self.queues.len() as u16);
        if end <= COMMON_OFFSET + COMMON_LEN {
            self.write_common(offset - COMMON_OFFSET, data);
        } else if offset >= DEVICE_CONFIG_OFFSET && end <= DEVICE_CONFIG_OFFSET + DEVICE_CONFIG_LEN
        {
            self.device
                .write_config(offset - DEVICE_CONFIG_OFFSET, data);
        } else if (NOTIFY_OFFSET..notify_end).contains(&offset) {
            let index = ((offset - NOTIFY_OFFSET) / u64::from(NOTIFY_OFF_MULTIPLIER)) as usize;
            if let Err(e) = self.notify[index].write(1) {
                log::warn!("virtio-pci: cannot signal queue {index}'s notify eventfd: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
