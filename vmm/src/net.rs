//! Plugging a `--net` into the VM: its tap queues, the virtio-net device behind the virtio-pci
//! transport on the root bus, one ioeventfd per queue and one MSI-X vector (GSI + irqfd) per queue.

use crate::pinning::Placement;
use crate::threads::{self, ThreadCategory};
use crate::virtio_plug::{self, PciContext, PlugError};
use devices::virtio::net::{Net, NetConfig, NetError, Tap, TapError};
use devices::virtio::{JoinWorker, WorkerSpawner};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

/// Descriptors per RX/TX queue.
const QUEUE_SIZE: u16 = 256;

/// Where a device's tap queues come from.
#[derive(Debug)]
pub enum TapSource {
    /// An existing tap, opened once per queue pair.
    Name(String),
    /// Tap queues opened by a parent (a node agent) and inherited: one per queue pair.
    Fds(Vec<OwnedFd>),
}

impl std::fmt::Display for TapSource {
    /// As on the command line: `tap=NAME` or `fd=3,fd=4`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TapSource::Name(name) => write!(f, "tap={name}"),
            TapSource::Fds(fds) => {
                let list: Vec<String> = fds
                    .iter()
                    .map(|fd| format!("fd={}", fd.as_raw_fd()))
                    .collect();
                f.write_str(&list.join(","))
            }
        }
    }
}

/// One `--net`: the tap, how many queue pairs (None: one per vCPU, or one per inherited fd),
/// and the MAC.
#[derive(Debug)]
pub struct NetSpec {
    pub tap: TapSource,
    pub queue_pairs: Option<usize>,
    pub mac: Option<[u8; 6]>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetAttachError {
    #[error("--net {net}: queues={asked} is more than the {vcpus} vCPUs (a queue pair per vCPU at most): lower queues= or raise --cpus")]
    TooManyPairs {
        net: String,
        asked: usize,
        vcpus: usize,
    },
    #[error("--net {net}: {fds} inherited tap fds are more than the {vcpus} vCPUs (one fd per queue pair, a queue pair per vCPU at most): pass fewer fds or raise --cpus")]
    TooManyFds {
        net: String,
        fds: usize,
        vcpus: usize,
    },
    #[error("--net {net}: queues={asked} does not match the {fds} fds given (one fd per queue pair): drop queues= or pass {asked} fds")]
    FdCountMismatch {
        net: String,
        asked: usize,
        fds: usize,
    },
    #[error("--net {net}: queues=0: give at least one queue pair")]
    NoPairs { net: String },
    #[error("--net {net}: {source}")]
    Tap { net: String, source: TapError },
    #[error("--net {net}: {source}")]
    Device { net: String, source: NetError },
    #[error("--net {net}: {source}")]
    Plug { net: String, source: PlugError },
}

/// Queue workers start through `threads::spawn_pinned`, so each runs under the net-worker filter
/// even though activation happens on a vCPU thread, and worker i on vCPU i's CPUs when pinned.
struct NetWorkerThreads {
    placement: Arc<Placement>,
}

impl NetWorkerThreads {
    fn start(
        &self,
        pair: Option<usize>,
        name: String,
        work: Box<dyn FnOnce() + Send>,
    ) -> std::io::Result<JoinWorker> {
        let pin = pair.and_then(|p| self.placement.net_worker(p));
        let handle = threads::spawn_pinned(ThreadCategory::NetWorker, name.clone(), pin, work)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Box::new(move || {
            if handle.join().is_err() {
                log::error!("net worker {name} panicked");
            }
        }))
    }
}

impl WorkerSpawner for NetWorkerThreads {
    fn spawn(&self, name: String, work: Box<dyn FnOnce() + Send>) -> std::io::Result<JoinWorker> {
        self.start(None, name, work)
    }

    fn spawn_for_pair(
        &self,
        pair: usize,
        name: String,
        work: Box<dyn FnOnce() + Send>,
    ) -> std::io::Result<JoinWorker> {
        self.start(Some(pair), name, work)
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

/// What one `--net` needs beyond the bus: the vCPU count (the default pair count) and where
/// the queue workers run.
pub struct NetContext<'a> {
    pub vcpus: usize,
    pub placement: &'a Arc<Placement>,
}

/// The queue pairs `spec` gets with `vcpus` vCPUs: one per vCPU (or per inherited fd) unless
/// given, never more than the vCPUs. `paddock run` and `paddock check` both ask this.
pub fn queue_pairs(spec: &NetSpec, vcpus: usize) -> Result<usize, NetAttachError> {
    let net = || spec.tap.to_string();
    match &spec.tap {
        TapSource::Name(_) => {
            let pairs = spec.queue_pairs.unwrap_or(vcpus);
            if pairs == 0 {
                return Err(NetAttachError::NoPairs { net: net() });
            }
            if pairs > vcpus {
                return Err(NetAttachError::TooManyPairs {
                    net: net(),
                    asked: pairs,
                    vcpus,
                });
            }
            Ok(pairs)
        }
        TapSource::Fds(fds) => {
            if let Some(asked) = spec.queue_pairs.filter(|&q| q != fds.len()) {
                return Err(NetAttachError::FdCountMismatch {
                    net: net(),
                    asked,
                    fds: fds.len(),
                });
            }
            if fds.len() > vcpus {
                return Err(NetAttachError::TooManyFds {
                    net: net(),
                    fds: fds.len(),
                    vcpus,
                });
            }
            Ok(fds.len())
        }
    }
}

/// The tap queues of one `--net`: opened by name, one per pair, or adopted from inherited fds.
pub fn tap_queues(spec: NetSpec, vcpus: usize) -> Result<Vec<Tap>, NetAttachError> {
    let net = spec.tap.to_string();
    let pairs = queue_pairs(&spec, vcpus)?;
    match spec.tap {
        TapSource::Name(name) => Tap::open_queues(&name, pairs),
        TapSource::Fds(fds) => Tap::from_fds(fds),
    }
    .map_err(|source| NetAttachError::Tap { net, source })
}

/// Opens (or adopts) the tap's queues and plugs device `net{index}` into the root bus.
pub fn attach(
    pci: &mut PciContext<'_>,
    ctx: &NetContext<'_>,
    index: usize,
    spec: NetSpec,
) -> Result<(), NetAttachError> {
    let label = spec.tap.to_string();
    let tap = || label.clone();
    let mac = spec.mac;
    let taps = tap_queues(spec, ctx.vcpus)?;
    let config = NetConfig {
        mac: mac.unwrap_or_else(|| default_mac(index)),
        queue_size: QUEUE_SIZE,
        name: format!("net{index}"),
    };
    let workers = NetWorkerThreads {
        placement: ctx.placement.clone(),
    };
    let net = Net::new(config, taps, Arc::new(workers))
        .map_err(|source| NetAttachError::Device { net: tap(), source })?;
    virtio_plug::plug(pci, Box::new(net))
        .map_err(|source| NetAttachError::Plug { net: tap(), source })?;
    Ok(())
}
