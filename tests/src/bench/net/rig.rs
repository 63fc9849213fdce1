//! A real virtio-net device (`devices::virtio::net::Net`) on a tap queue, activated with an RX
//! and a TX ring that the calling thread drives as the guest's driver would: the worker
//! benchmark and the worker integrity test both run the device this way, with no guest.

use std::sync::Arc;

use devices::interrupt::{InterruptError, VectorInterrupts};
use devices::virtio::net::device::{F_CTRL_VQ, F_MQ};
use devices::virtio::net::{Net, NetConfig, Tap};
use devices::virtio::{
    feature, Activation, QueueActivation, SharedStatus, StdThreads, VirtioDevice, VirtioInterrupt,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::ring::{ring_bytes, DriverRing, RingError};

#[derive(Debug, thiserror::Error)]
pub enum RigError {
    #[error("guest memory of {size} bytes: {why}")]
    Memory { size: usize, why: String },
    #[error("the rings at {rx:#x} and {tx:#x} do not fit {size} bytes of guest memory")]
    Layout { rx: u64, tx: u64, size: usize },
    #[error("virtio-net device: {0}")]
    Device(String),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// Where the rings go and what the driver acks.
#[derive(Clone, Copy, Debug)]
pub struct RigSpec {
    /// The device's threads are `{name}-qp0`.
    pub name: &'static str,
    /// Guest RAM, from address 0.
    pub mem_size: usize,
    /// Where guest RAM is cut into two separately mapped regions (contiguous in guest
    /// addresses, not in the VMM's), so a buffer across the cut maps to two host pieces.
    pub split_at: Option<u64>,
    pub queue_size: u16,
    pub rx_ring: u64,
    pub tx_ring: u64,
    /// Feature bits the driver does not ack, on top of the control queue and multi-queue
    /// (this rig has one queue pair and no control queue).
    pub refused: u64,
}

/// Interrupt vectors as eventfds, the way a KVM irqfd receives them.
struct EventFdVectors(Vec<EventFd>);

impl VectorInterrupts for EventFdVectors {
    fn trigger(&self, vector: u16) -> Result<(), InterruptError> {
        let event = self
            .0
            .get(usize::from(vector))
            .ok_or(InterruptError::NoSuchVector {
                vector,
                count: self.0.len() as u16,
            })?;
        event
            .write(1)
            .map_err(|source| InterruptError::Signal { vector, source })
    }
}

/// Anonymous guest RAM of `size` bytes at address 0, in two regions if `split_at` says where.
pub fn memory(size: usize, split_at: Option<u64>) -> Result<GuestMemoryMmap, RigError> {
    let ranges = match split_at {
        Some(cut) if cut > 0 && (cut as usize) < size => vec![
            (GuestAddress(0), cut as usize),
            (GuestAddress(cut), size - cut as usize),
        ],
        _ => vec![(GuestAddress(0), size)],
    };
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| RigError::Memory {
        size,
        why: e.to_string(),
    })
}

/// A Net device over one queue of a tap, its worker running, and the driver's side of its RX
/// and TX rings.
pub struct Rig {
    /// Owns the worker thread: dropping it (or `stop`) stops and joins the worker.
    net: Net,
    pub mem: GuestMemoryMmap,
    pub rx: DriverRing,
    pub tx: DriverRing,
    pub interrupt: VirtioInterrupt,
    /// The features the driver acked.
    pub acked: u64,
}

impl Rig {
    pub fn new(tap: &str, spec: &RigSpec) -> Result<Self, RigError> {
        let dev = |e: String| RigError::Device(e);
        let ring_end = |base: u64| base + ring_bytes(spec.queue_size);
        if ring_end(spec.rx_ring).max(ring_end(spec.tx_ring)) > spec.mem_size as u64 {
            return Err(RigError::Layout {
                rx: spec.rx_ring,
                tx: spec.tx_ring,
                size: spec.mem_size,
            });
        }
        let mem = memory(spec.mem_size, spec.split_at)?;
        let mut net = Net::new(
            NetConfig {
                mac: [0x02, 0, 0, 0, 0, 0x01],
                queue_size: spec.queue_size,
                name: spec.name.into(),
            },
            Tap::open_queues(tap, 1).map_err(|e| dev(e.to_string()))?,
            Arc::new(StdThreads),
        )
        .map_err(|e| dev(e.to_string()))?;
        let acked = net.features() & !(feature(F_CTRL_VQ) | feature(F_MQ) | spec.refused);
        let mut vectors = Vec::new();
        let mut queues = Vec::new();
        let mut rings = Vec::new();
        for (vector, base) in [spec.rx_ring, spec.tx_ring].into_iter().enumerate() {
            let kick = EventFd::new(EFD_NONBLOCK).map_err(RigError::EventFd)?;
            let irq = EventFd::new(EFD_NONBLOCK).map_err(RigError::EventFd)?;
            let ring = DriverRing::new(
                &mem,
                GuestAddress(base),
                spec.queue_size,
                kick.try_clone().map_err(RigError::EventFd)?,
                irq.try_clone().map_err(RigError::EventFd)?,
            )?;
            queues.push(QueueActivation {
                queue: ring.device_queue()?,
                notify: kick,
                vector: vector as u16,
            });
            vectors.push(irq);
            rings.push(ring);
        }
        let interrupt = VirtioInterrupt::new(
            Arc::new(EventFdVectors(vectors)),
            Arc::new(SharedStatus::default()),
        );
        net.activate(Activation {
            mem: mem.clone(),
            queues,
            interrupt: interrupt.clone(),
            acked_features: acked,
        })
        .map_err(|e| dev(e.to_string()))?;
        let tx = rings.pop().expect("two rings");
        let rx = rings.pop().expect("two rings");
        Ok(Self {
            net,
            mem,
            rx,
            tx,
            interrupt,
            acked,
        })
    }

    /// Whether the worker marked the device DEVICE_NEEDS_RESET.
    pub fn broken(&self) -> bool {
        self.interrupt.needs_reset()
    }

    /// Stops and joins the worker (as a device reset does); the rings and memory stay.
    pub fn stop(&mut self) {
        self.net.reset();
    }
}
