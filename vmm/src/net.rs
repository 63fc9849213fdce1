//! Plugging a `--net` into the VM: its tap queues, the virtio-net device behind the virtio-pci
//! transport on the root bus, one ioeventfd per queue and one MSI-X vector (GSI + irqfd) per queue.

use crate::interrupts::{GsiRouting, InterruptsError};
use crate::memory::GuestMemoryMmap;
use crate::threads::{self, ThreadCategory};
use devices::pci::{BarAllocator, PciRoot};
use devices::virtio::net::{Net, NetConfig, NetError, Tap, TapError};
use devices::virtio::{JoinWorker, VirtioDevice, VirtioPciDevice, VirtioPciError, WorkerSpawner};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use std::sync::{Arc, Mutex};

/// Descriptors per RX/TX queue.
const QUEUE_SIZE: u16 = 256;

/// One `--net`: an existing tap, how many queue pairs (None: one per vCPU), and the MAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    pub tap: String,
    pub queue_pairs: Option<usize>,
    pub mac: Option<[u8; 6]>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetAttachError {
    #[error("--net tap={tap}: queues={asked} is more than the {vcpus} vCPUs (a queue pair per vCPU at most): lower queues= or raise --cpus")]
    TooManyPairs {
        tap: String,
        asked: usize,
        vcpus: usize,
    },
    #[error("--net tap={tap}: queues=0: give at least one queue pair")]
    NoPairs { tap: String },
    #[error("--net tap={tap}: {source}")]
    Tap { tap: String, source: TapError },
    #[error("--net tap={tap}: {source}")]
    Device { tap: String, source: NetError },
    #[error("--net tap={tap}: {source}")]
    Transport { tap: String, source: VirtioPciError },
    #[error("--net tap={tap}: {source}")]
    Interrupts {
        tap: String,
        source: InterruptsError,
    },
    #[error("--net tap={tap}: plugging it into the PCI bus: {reason}")]
    Plug { tap: String, reason: String },
    #[error("--net tap={tap}: queue {queue} has no notify address (its BAR was not placed)")]
    Unplaced { tap: String, queue: u16 },
    #[error("--net tap={tap}: KVM_IOEVENTFD for queue {queue}: {source}")]
    Ioeventfd {
        tap: String,
        queue: u16,
        source: kvm_ioctls::Error,
    },
}

/// Queue workers start through `threads::spawn`, so each runs under the net-worker filter even
/// though activation happens on a vCPU thread.
struct NetWorkerThreads;

impl WorkerSpawner for NetWorkerThreads {
    fn spawn(&self, name: String, work: Box<dyn FnOnce() + Send>) -> std::io::Result<JoinWorker> {
        let handle = threads::spawn(ThreadCategory::NetWorker, name.clone(), work)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Box::new(move || {
            if handle.join().is_err() {
                log::error!("net worker {name} panicked");
            }
        }))
    }
}

/// A locally administered unicast MAC, different for each device of the VM.
fn default_mac(index: usize) -> [u8; 6] {
    [
        0x52,
        0x54,
        0x00,
        0x12,
        0x34,
        0x56u8.wrapping_add(index as u8),
    ]
}

/// Everything one `--net` needs from the VM being built.
pub struct NetContext<'a> {
    pub vm: &'a VmFd,
    pub routing: &'a Arc<GsiRouting>,
    pub pci: &'a PciRoot,
    pub allocator: &'a mut BarAllocator,
    pub mem: &'a GuestMemoryMmap,
    pub vcpus: usize,
}

/// Opens the tap's queues and plugs device `net{index}` into the root bus.
pub fn attach(
    ctx: &mut NetContext<'_>,
    index: usize,
    spec: &NetSpec,
) -> Result<(), NetAttachError> {
    let tap = || spec.tap.clone();
    let pairs = spec.queue_pairs.unwrap_or(ctx.vcpus);
    if pairs == 0 {
        return Err(NetAttachError::NoPairs { tap: tap() });
    }
    if pairs > ctx.vcpus {
        return Err(NetAttachError::TooManyPairs {
            tap: tap(),
            asked: pairs,
            vcpus: ctx.vcpus,
        });
    }
    let taps = Tap::open_queues(&spec.tap, pairs)
        .map_err(|source| NetAttachError::Tap { tap: tap(), source })?;
    let config = NetConfig {
        mac: spec.mac.unwrap_or_else(|| default_mac(index)),
        queue_size: QUEUE_SIZE,
        name: format!("net{index}"),
    };
    let net = Net::new(config, taps, Arc::new(NetWorkerThreads))
        .map_err(|source| NetAttachError::Device { tap: tap(), source })?;
    // The transport gives every queue a vector plus one for configuration changes.
    let vectors = net.queue_max_sizes().len() as u16 + 1;
    let routes = ctx
        .routing
        .msi_vectors(vectors)
        .map_err(|source| NetAttachError::Interrupts { tap: tap(), source })?;
    let device = VirtioPciDevice::new(Box::new(net), ctx.mem.clone(), Arc::new(routes))
        .map_err(|source| NetAttachError::Transport { tap: tap(), source })?;
    let device = Arc::new(Mutex::new(device));
    ctx.pci
        .add_device(device.clone(), ctx.allocator)
        .map_err(|e| NetAttachError::Plug {
            tap: tap(),
            reason: e.to_string(),
        })?;
    let notifiers = device
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .queue_notifiers()
        .map_err(|source| NetAttachError::Transport { tap: tap(), source })?;
    for n in notifiers {
        let addr = n.addr.ok_or(NetAttachError::Unplaced {
            tap: tap(),
            queue: n.queue,
        })?;
        // KVM keeps its own reference to the eventfd; the device keeps the other end.
        ctx.vm
            .register_ioevent(&n.event, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|source| NetAttachError::Ioeventfd {
                tap: tap(),
                queue: n.queue,
                source,
            })?;
    }
    Ok(())
}
