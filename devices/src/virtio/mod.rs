//! Virtio 1.x devices, independent of the transport, and the virtio-pci (modern) transport.
//!
//! A device model implements [`VirtioDevice`]: it declares its type, queues, features and
//! configuration space, and when the driver sets DRIVER_OK the transport hands it the guest
//! memory, the configured queues with their notification eventfds, and a [`VirtioInterrupt`]
//! to signal used buffers and configuration changes.

pub mod fs;
pub mod net;
pub mod pci;
pub mod queue;

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::{InterruptError, VectorInterrupts};

pub use pci::{QueueNotifier, VirtioPciDevice, VirtioPciError};

/// Device types (virtio 1.2, 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_FS: u32 = 26;

/// Device status bits (virtio 1.2, 2.1).
pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 0x40;
pub const STATUS_FAILED: u8 = 0x80;

/// Transport-level feature bits.
pub const F_RING_INDIRECT_DESC: u32 = 28;
pub const F_RING_EVENT_IDX: u32 = 29;
pub const F_VERSION_1: u32 = 32;

/// "No MSI-X vector" in the common configuration.
pub const NO_VECTOR: u16 = 0xffff;

/// ISR status bits: a queue was used, the configuration changed.
pub const ISR_QUEUE: u8 = 1;
pub const ISR_CONFIG: u8 = 2;

/// The bit of a feature number as a mask.
pub const fn feature(bit: u32) -> u64 {
    1 << bit
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("virtio queue {index} is not usable: {reason}")]
    BadQueue { index: usize, reason: String },
    #[error("cannot start the device worker {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("cannot activate the virtio device: {0}")]
    Device(String),
}

/// One queue as the driver configured it, handed to the device at activation.
pub struct QueueActivation {
    pub queue: Queue,
    /// Written by the guest's notify (an ioeventfd, or the transport on a plain MMIO write).
    pub notify: EventFd,
    /// The MSI-X vector for used-buffer interrupts, or [`NO_VECTOR`].
    pub vector: u16,
}

/// Everything a device needs to run.
pub struct Activation {
    pub mem: GuestMemoryMmap,
    /// Every queue, in index order; a queue the driver did not enable has `queue.ready() ==
    /// false` and must not be used.
    pub queues: Vec<QueueActivation>,
    pub interrupt: VirtioInterrupt,
    /// The features the driver accepted.
    pub acked_features: u64,
}

/// A virtio device model, transport independent.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Features the device offers (including [`F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Driver read/write of the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The driver wrote status 0: stop every worker and forget the queues.
    fn reset(&mut self);
}

/// Interrupt handle given to an active device: used-buffer and configuration-change interrupts
/// go out through the function's MSI-X vectors; the ISR register records them too.
#[derive(Clone)]
pub struct VirtioInterrupt {
    vectors: Arc<dyn VectorInterrupts>,
    shared: Arc<SharedStatus>,
}

/// State the transport and the device's workers both touch.
#[derive(Default)]
pub struct SharedStatus {
    pub isr: AtomicU8,
    pub device_status: AtomicU8,
    pub config_vector: AtomicU16,
    pub config_generation: AtomicU8,
}

impl VirtioInterrupt {
    pub fn new(vectors: Arc<dyn VectorInterrupts>, shared: Arc<SharedStatus>) -> Self {
        Self { vectors, shared }
    }

    /// The device put buffers in the used ring of a queue whose vector is `vector`.
    pub fn signal_queue(&self, vector: u16) -> Result<(), InterruptError> {
        self.shared.isr.fetch_or(ISR_QUEUE, Ordering::SeqCst);
        if vector == NO_VECTOR {
            return Ok(());
        }
        self.vectors.trigger(vector)
    }

    /// The device configuration changed (link state, needs reset).
    pub fn signal_config(&self) -> Result<(), InterruptError> {
        self.shared.config_generation.fetch_add(1, Ordering::SeqCst);
        self.shared.isr.fetch_or(ISR_CONFIG, Ordering::SeqCst);
        let vector = self.shared.config_vector.load(Ordering::SeqCst);
        if vector == NO_VECTOR {
            return Ok(());
        }
        self.vectors.trigger(vector)
    }

    /// The device hit an error it cannot recover from (a malformed ring): the driver must reset.
    pub fn set_needs_reset(&self) -> Result<(), InterruptError> {
        let before = self
            .shared
            .device_status
            .fetch_or(STATUS_DEVICE_NEEDS_RESET, Ordering::SeqCst);
        if before & STATUS_DEVICE_NEEDS_RESET != 0 {
            return Ok(());
        }
        self.signal_config()
    }

    /// The eventfd that raises `vector` without this process (a KVM irqfd), for a device whose
    /// queues another process serves (vhost-user); `None` when the interrupt path has none.
    pub fn irqfd(&self, vector: u16) -> Option<EventFd> {
        if vector == NO_VECTOR {
            return None;
        }
        self.vectors.irqfd(vector)
    }

    pub fn needs_reset(&self) -> bool {
        self.shared.device_status.load(Ordering::SeqCst) & STATUS_DEVICE_NEEDS_RESET != 0
    }
}

/// Waits for a worker thread to end.
pub type JoinWorker = Box<dyn FnOnce() + Send>;

/// Starts device worker threads. The VMM passes one that installs the thread's seccomp filter
/// first (`vmm::threads::spawn`); [`StdThreads`] just starts a named thread.
pub trait WorkerSpawner: Send + Sync {
    fn spawn(&self, name: String, work: Box<dyn FnOnce() + Send>) -> std::io::Result<JoinWorker>;

    /// Starts the worker of queue pair `pair`, which the VMM may place next to vCPU `pair`.
    fn spawn_for_pair(
        &self,
        _pair: usize,
        name: String,
        work: Box<dyn FnOnce() + Send>,
    ) -> std::io::Result<JoinWorker> {
        self.spawn(name, work)
    }
}

/// Plain named `std::thread`s.
pub struct StdThreads;

impl WorkerSpawner for StdThreads {
    fn spawn(&self, name: String, work: Box<dyn FnOnce() + Send>) -> std::io::Result<JoinWorker> {
        let handle = std::thread::Builder::new().name(name.clone()).spawn(work)?;
        Ok(Box::new(move || {
            if handle.join().is_err() {
                log::error!("device worker {name} panicked");
            }
        }))
    }
}
