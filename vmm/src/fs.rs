//! Plugging an `--fs` into the VM: connect to its vhost-user-fs backend, put the virtio-fs
//! device behind the virtio-pci transport on the root bus, register each queue's notify address
//! as a KVM ioeventfd (which the backend then waits on) and give each queue an MSI-X vector whose
//! irqfd the backend signals.

use crate::threads::{self, ThreadCategory};
use crate::virtio_plug::{self, PciContext, PlugError};
use devices::virtio::fs::link::LinkError;
use devices::virtio::fs::{Backend, BackendError, Fs};
pub use devices::virtio::fs::{FsConfig, FsError};
use devices::virtio::{JoinWorker, WorkerSpawner};
use std::path::PathBuf;
use std::sync::Arc;
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
    Plug { tag: String, source: PlugError },
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
pub fn attach(pci: &mut PciContext<'_>, spec: &FsSpec) -> Result<(), FsAttachError> {
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
    virtio_plug::plug(pci, Box::new(fs))
        .map_err(|source| FsAttachError::Plug { tag: tag(), source })?;
    Ok(())
}
