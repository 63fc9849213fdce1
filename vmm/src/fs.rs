//! Plugging an `--fs` into the VM: connect to its vhost-user-fs backend, put the virtio-fs
//! device behind the virtio-pci transport on the root bus, register each queue's notify address
//! as a KVM ioeventfd (which the backend then waits on) and give each queue an MSI-X vector whose
//! irqfd the backend signals.

use crate::interrupts::{GsiRouting, InterruptsError};
use crate::memory::GuestMemoryMmap;
use crate::threads::{self, ThreadCategory};
use devices::pci::{BarAllocator, PciRoot};
use devices::virtio::fs::link::LinkError;
use devices::virtio::fs::{Backend, BackendError, Fs};
pub use devices::virtio::fs::{FsConfig, FsError};
use devices::virtio::{JoinWorker, VirtioDevice, VirtioPciDevice, VirtioPciError, WorkerSpawner};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long one backend reply may take before the backend counts as stuck.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(10);

/// One `--fs`: the share's tag and the vhost-user-fs backend's socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsSpec {
    pub config: FsConfig,
    pub socket: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum FsAttachError {
    #[error("--fs tag={tag}: {source}")]
    Backend { tag: String, source: BackendError },
    #[error("--fs tag={tag}: {source}")]
    Link { tag: String, source: LinkError },
    #[error("--fs tag={tag}: {source}")]
    Transport { tag: String, source: VirtioPciError },
    #[error("--fs tag={tag}: {source}")]
    Interrupts {
        tag: String,
        source: InterruptsError,
    },
    #[error("--fs tag={tag}: plugging it into the PCI bus: {reason}")]
    Plug { tag: String, reason: String },
    #[error("--fs tag={tag}: queue {queue} has no notify address (its BAR was not placed)")]
    Unplaced { tag: String, queue: u16 },
    #[error("--fs tag={tag}: KVM_IOEVENTFD for queue {queue}: {source}")]
    Ioeventfd {
        tag: String,
        queue: u16,
        source: kvm_ioctls::Error,
    },
    #[error("--fs tag={tag}: the tag is used by another --fs: give each share its own tag")]
    DuplicateTag { tag: String },
}

/// The device's backend link runs as a `vhost-user` thread, under that category's filter.
struct VhostUserThreads;

impl WorkerSpawner for VhostUserThreads {
    fn spawn(&self, name: String, work: Box<dyn FnOnce() + Send>) -> std::io::Result<JoinWorker> {
        let handle = threads::spawn(ThreadCategory::VhostUser, name.clone(), work)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Box::new(move || {
            if handle.join().is_err() {
                log::error!("{name} panicked");
            }
        }))
    }
}

/// Everything one `--fs` needs from the VM being built.
pub struct FsContext<'a> {
    pub vm: &'a VmFd,
    pub routing: &'a Arc<GsiRouting>,
    pub pci: &'a PciRoot,
    pub allocator: &'a mut BarAllocator,
    pub mem: &'a GuestMemoryMmap,
}

/// Refuses two shares with one tag: the guest could mount only one of them.
pub fn check_tags(specs: &[FsSpec]) -> Result<(), FsAttachError> {
    for (i, spec) in specs.iter().enumerate() {
        if specs[..i].iter().any(|s| s.config.tag == spec.config.tag) {
            return Err(FsAttachError::DuplicateTag {
                tag: spec.config.tag.clone(),
            });
        }
    }
    Ok(())
}

/// Connects to the backend and plugs the device into the root bus.
pub fn attach(ctx: &mut FsContext<'_>, spec: &FsSpec) -> Result<(), FsAttachError> {
    let tag = || spec.config.tag.clone();
    let backend = Backend::connect(&spec.socket, spec.config.queues(), BACKEND_TIMEOUT)
        .map_err(|source| FsAttachError::Backend { tag: tag(), source })?;
    log::info!(
        "--fs tag={}: connected to the vhost-user-fs backend on {}",
        spec.config.tag,
        spec.socket.display()
    );
    let fs = Fs::new(spec.config.clone(), backend, Arc::new(VhostUserThreads))
        .map_err(|source| FsAttachError::Link { tag: tag(), source })?;
    // The transport gives every queue a vector plus one for configuration changes.
    let vectors = fs.queue_max_sizes().len() as u16 + 1;
    let routes = ctx
        .routing
        .msi_vectors(vectors)
        .map_err(|source| FsAttachError::Interrupts { tag: tag(), source })?;
    let device = VirtioPciDevice::new(Box::new(fs), ctx.mem.clone(), Arc::new(routes))
        .map_err(|source| FsAttachError::Transport { tag: tag(), source })?;
    let device = Arc::new(Mutex::new(device));
    ctx.pci
        .add_device(device.clone(), ctx.allocator)
        .map_err(|e| FsAttachError::Plug {
            tag: tag(),
            reason: e.to_string(),
        })?;
    let notifiers = device
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .queue_notifiers()
        .map_err(|source| FsAttachError::Transport { tag: tag(), source })?;
    for n in notifiers {
        let addr = n.addr.ok_or(FsAttachError::Unplaced {
            tag: tag(),
            queue: n.queue,
        })?;
        ctx.vm
            .register_ioevent(&n.event, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|source| FsAttachError::Ioeventfd {
                tag: tag(),
                queue: n.queue,
                source,
            })?;
    }
    Ok(())
}
