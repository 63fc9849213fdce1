//! The connection to a vhost-user-fs backend (virtiofsd, `paddock virtiofsd`): connecting with
//! errors that say what to do, the feature handshake, the guest RAM table, and starting and
//! stopping the backend's rings. Every call blocks on the socket for at most the timeout given at
//! connection, so a stuck backend cannot stall its caller for good.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::virtio::{feature, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1};

/// The features Paddock passes between guest and backend: the backend implements them on the
/// rings; the transport needs nothing for them. Anything else the backend offers (packed rings,
/// device-specific bits such as the notification queue) is withheld from the guest.
pub const GUEST_FEATURES: u64 =
    feature(F_VERSION_1) | feature(F_RING_INDIRECT_DESC) | feature(F_RING_EVENT_IDX);

/// Protocol features Paddock uses: MQ to learn the backend's queue count, REPLY_ACK so that every
/// set-up message is confirmed (a failure shows up where it happens, not as a silent guest hang).
const WANTED_PROTOCOL: VhostUserProtocolFeatures =
    VhostUserProtocolFeatures::MQ.union(VhostUserProtocolFeatures::REPLY_ACK);

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{path} does not exist: start the vhost-user-fs backend first (e.g. `virtiofsd --socket-path {path} --shared-dir DIR`)")]
    Missing { path: PathBuf },
    #[error("{path} is not a Unix socket: give the socket a vhost-user-fs backend listens on")]
    NotSocket { path: PathBuf },
    #[error("{path}: connection refused, no backend listens there (it exited, or served another VM): start the backend again")]
    Refused { path: PathBuf },
    #[error("{path}: permission denied: make the socket (and its directory) accessible to the user Paddock runs as")]
    Permission { path: PathBuf },
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the backend on {path} does not offer {what}, which Paddock needs: use a vhost-user-fs backend that does (virtiofsd and `paddock virtiofsd` do)")]
    Lacks { path: PathBuf, what: &'static str },
    #[error("the backend on {path} serves at most {max} queues, the device needs {needed} (queues= request queues + 1 high-priority queue): lower queues= or start the backend with more")]
    TooFewQueues {
        path: PathBuf,
        max: u64,
        needed: usize,
    },
    #[error("guest RAM at {addr:#x} is not backed by a file, so the backend cannot map it: vhost-user needs shared, fd-backed RAM")]
    NoFile { addr: u64 },
    #[error("guest RAM has {0} regions, more than one vhost-user message carries (8)")]
    TooManyRegions(usize),
    #[error("ring address {addr:#x} of queue {queue} is not in guest RAM")]
    RingAddress { queue: usize, addr: u64 },
    #[error("the backend on {path} failed {what}: {source}")]
    Protocol {
        path: PathBuf,
        what: &'static str,
        source: vhost::Error,
    },
}

/// One queue as the driver configured it, ready to be handed to the backend.
pub struct RingSetup<'a> {
    pub index: usize,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// The queue's notify eventfd (registered as a KVM ioeventfd): guest kicks reach the
    /// backend without passing through Paddock.
    pub kick: &'a EventFd,
    /// The irqfd of the queue's MSI-X vector: the backend's interrupts reach KVM directly.
    pub call: &'a EventFd,
}

/// A connected, owned vhost-user-fs backend.
pub struct Backend {
    path: PathBuf,
    frontend: Frontend,
    /// Virtio features the backend offers.
    features: u64,
    protocol: VhostUserProtocolFeatures,
}

impl Backend {
    /// Connects to `path` and negotiates: SET_OWNER, GET_FEATURES (VIRTIO_F_VERSION_1 and
    /// VHOST_USER_F_PROTOCOL_FEATURES required), protocol features (MQ, REPLY_ACK), and with MQ
    /// checks that the backend serves `queues` queues. Replies are awaited for at most `timeout`.
    pub fn connect(path: &Path, queues: usize, timeout: Duration) -> Result<Self, BackendError> {
        let p = || path.to_path_buf();
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BackendError::Missing { path: p() })
            }
            Ok(m) if !m.file_type().is_socket() => {
                return Err(BackendError::NotSocket { path: p() })
            }
            _ => {}
        }
        let stream = UnixStream::connect(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => BackendError::Missing { path: p() },
            std::io::ErrorKind::ConnectionRefused => BackendError::Refused { path: p() },
            std::io::ErrorKind::PermissionDenied => BackendError::Permission { path: p() },
            _ => BackendError::Connect { path: p(), source },
        })?;
        for set in [UnixStream::set_read_timeout, UnixStream::set_write_timeout] {
            set(&stream, Some(timeout))
                .map_err(|source| BackendError::Connect { path: p(), source })?;
        }
        let mut backend = Self {
            path: p(),
            frontend: Frontend::from_stream(stream, queues as u64),
            features: 0,
            protocol: VhostUserProtocolFeatures::empty(),
        };
        backend.handshake(queues)?;
        Ok(backend)
    }

    fn protocol_error(&self, what: &'static str) -> impl FnOnce(vhost::Error) -> BackendError {
        let path = self.path.clone();
        move |source| BackendError::Protocol { path, what, source }
    }

    fn handshake(&mut self, queues: usize) -> Result<(), BackendError> {
        self.frontend
            .set_owner()
            .map_err(self.protocol_error("SET_OWNER"))?;
        self.features = self
            .frontend
            .get_features()
            .map_err(self.protocol_error("GET_FEATURES"))?;
        if self.features & feature(F_VERSION_1) == 0 {
            return Err(BackendError::Lacks {
                path: self.path.clone(),
                what: "VIRTIO_F_VERSION_1 (modern virtio)",
            });
        }
        if self.features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            return Err(BackendError::Lacks {
                path: self.path.clone(),
                what: "VHOST_USER_F_PROTOCOL_FEATURES",
            });
        }
        let offered = self
            .frontend
            .get_protocol_features()
            .map_err(self.protocol_error("GET_PROTOCOL_FEATURES"))?;
        self.protocol = offered & WANTED_PROTOCOL;
        self.frontend
            .set_protocol_features(self.protocol)
            .map_err(self.protocol_error("SET_PROTOCOL_FEATURES"))?;
        if self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if self.protocol.contains(VhostUserProtocolFeatures::MQ) {
            let max = self
                .frontend
                .get_queue_num()
                .map_err(self.protocol_error("GET_QUEUE_NUM"))?;
            if max < queues as u64 {
                return Err(BackendError::TooFewQueues {
                    path: self.path.clone(),
                    max,
                    needed: queues,
                });
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The features to offer the guest: what the backend offers of [`GUEST_FEATURES`].
    pub fn guest_features(&self) -> u64 {
        self.features & GUEST_FEATURES
    }

    /// The socket, to watch for the backend hanging up.
    pub fn socket_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }

    /// SET_MEM_TABLE: every guest RAM region as (fd, offset), which the backend maps shared.
    pub fn set_mem_table(&self, mem: &GuestMemoryMmap) -> Result<(), BackendError> {
        let regions = mem
            .iter()
            .map(|r| {
                let file = r.file_offset().ok_or(BackendError::NoFile {
                    addr: r.start_addr().0,
                })?;
                Ok(VhostUserMemoryRegionInfo {
                    guest_phys_addr: r.start_addr().0,
                    memory_size: r.len(),
                    userspace_addr: r.as_ptr() as u64,
                    mmap_offset: file.start(),
                    mmap_handle: file.file().as_raw_fd(),
                })
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        if regions.len() > 8 {
            return Err(BackendError::TooManyRegions(regions.len()));
        }
        self.frontend
            .set_mem_table(&regions)
            .map(|_| ())
            .map_err(self.protocol_error("SET_MEM_TABLE"))
    }

    /// SET_FEATURES with what the driver accepted (plus the protocol-features bit).
    pub fn set_features(&self, acked: u64) -> Result<(), BackendError> {
        let features = (acked & self.features) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        self.frontend
            .set_features(features)
            .map_err(self.protocol_error("SET_FEATURES"))
    }

    /// Hands one ring to the backend and enables it. Ring addresses go as this process's
    /// virtual addresses, which the backend translates through the memory table.
    pub fn start_ring(
        &mut self,
        mem: &GuestMemoryMmap,
        ring: &RingSetup<'_>,
    ) -> Result<(), BackendError> {
        let host = |addr: u64| {
            mem.get_host_address(GuestAddress(addr))
                .map(|p| p as u64)
                .map_err(|_| BackendError::RingAddress {
                    queue: ring.index,
                    addr,
                })
        };
        let config = VringConfigData {
            queue_max_size: ring.size,
            queue_size: ring.size,
            flags: 0,
            desc_table_addr: host(ring.desc)?,
            used_ring_addr: host(ring.used)?,
            avail_ring_addr: host(ring.avail)?,
            log_addr: None,
        };
        let i = ring.index;
        self.frontend
            .set_vring_num(i, ring.size)
            .map_err(self.protocol_error("SET_VRING_NUM"))?;
        self.frontend
            .set_vring_addr(i, &config)
            .map_err(self.protocol_error("SET_VRING_ADDR"))?;
        self.frontend
            .set_vring_base(i, 0)
            .map_err(self.protocol_error("SET_VRING_BASE"))?;
        self.frontend
            .set_vring_call(i, ring.call)
            .map_err(self.protocol_error("SET_VRING_CALL"))?;
        self.frontend
            .set_vring_kick(i, ring.kick)
            .map_err(self.protocol_error("SET_VRING_KICK"))?;
        self.frontend
            .set_vring_enable(i, true)
            .map_err(self.protocol_error("SET_VRING_ENABLE"))
    }

    /// Disables ring `index` and stops it (GET_VRING_BASE), after which the backend no longer
    /// touches it. Returns the next available index the backend would have read.
    pub fn stop_ring(&mut self, index: usize) -> Result<u32, BackendError> {
        self.frontend
            .set_vring_enable(index, false)
            .map_err(self.protocol_error("SET_VRING_ENABLE"))?;
        self.frontend
            .get_vring_base(index)
            .map_err(self.protocol_error("GET_VRING_BASE"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    const GET_FEATURES: u32 = 1;
    const SET_OWNER: u32 = 3;
    const GET_PROTOCOL_FEATURES: u32 = 15;
    const SET_PROTOCOL_FEATURES: u32 = 16;
    const GET_QUEUE_NUM: u32 = 17;
    const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;

    /// A scripted backend: answers the handshake with `features` and `queue_num`, and records
    /// the requests it got.
    fn fake_backend(
        dir: &Path,
        features: u64,
        queue_num: u64,
    ) -> (PathBuf, std::thread::JoinHandle<Vec<u32>>) {
        let path = dir.join("fake.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let mut header = [0u8; 12];
            while s.read_exact(&mut header).is_ok() {
                let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap());
                let (request, size) = (word(0), word(8));
                let mut body = vec![0u8; size as usize];
                s.read_exact(&mut body).unwrap();
                seen.push(request);
                let answer = match request {
                    GET_FEATURES => Some(features),
                    GET_PROTOCOL_FEATURES => Some(
                        (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK)
                            .bits(),
                    ),
                    GET_QUEUE_NUM => Some(queue_num),
                    _ => None,
                };
                if let Some(value) = answer {
                    let mut reply = Vec::new();
                    reply.extend_from_slice(&request.to_le_bytes());
                    // Version 1, reply.
                    reply.extend_from_slice(&0x5u32.to_le_bytes());
                    reply.extend_from_slice(&8u32.to_le_bytes());
                    reply.extend_from_slice(&value.to_le_bytes());
                    s.write_all(&reply).unwrap();
                }
            }
            seen
        });
        (path, handle)
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[test]
    fn missing_plain_file_and_refused_sockets_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let nope = dir.path().join("nope.sock");
        let err = Backend::connect(&nope, 2, TIMEOUT).err().unwrap();
        assert!(matches!(err, BackendError::Missing { .. }), "{err}");
        assert!(err
            .to_string()
            .contains("start the vhost-user-fs backend first"));

        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"").unwrap();
        let err = Backend::connect(&plain, 2, TIMEOUT).err().unwrap();
        assert!(matches!(err, BackendError::NotSocket { .. }), "{err}");

        // A socket file nobody listens on any more (a backend that was killed).
        let stale = dir.path().join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        let err = Backend::connect(&stale, 2, TIMEOUT).err().unwrap();
        assert!(matches!(err, BackendError::Refused { .. }), "{err}");
        assert!(err.to_string().contains(&stale.display().to_string()));
    }

    #[test]
    fn a_backend_without_version_1_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, backend) = fake_backend(dir.path(), PROTOCOL_FEATURES_BIT, 2);
        let err = Backend::connect(&path, 2, TIMEOUT).err().unwrap();
        assert!(
            matches!(err, BackendError::Lacks { what, .. } if what.contains("VERSION_1")),
            "{err}"
        );
        assert_eq!(backend.join().unwrap(), vec![SET_OWNER, GET_FEATURES]);
    }

    #[test]
    fn handshake_negotiates_and_checks_the_queue_count() {
        let dir = tempfile::tempdir().unwrap();
        let offered = feature(F_VERSION_1) | feature(F_RING_EVENT_IDX) | PROTOCOL_FEATURES_BIT;
        let (path, fake) = fake_backend(dir.path(), offered, 1);
        let err = Backend::connect(&path, 2, TIMEOUT).err().unwrap();
        assert!(
            matches!(
                err,
                BackendError::TooFewQueues {
                    max: 1,
                    needed: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            fake.join().unwrap(),
            vec![
                SET_OWNER,
                GET_FEATURES,
                GET_PROTOCOL_FEATURES,
                SET_PROTOCOL_FEATURES,
                GET_QUEUE_NUM
            ]
        );

        let dir = tempfile::tempdir().unwrap();
        let (path, _fake) = fake_backend(dir.path(), offered, 2);
        let backend = Backend::connect(&path, 2, TIMEOUT).unwrap();
        // The protocol-features bit is the frontend's business, never the guest's.
        assert_eq!(
            backend.guest_features(),
            feature(F_VERSION_1) | feature(F_RING_EVENT_IDX)
        );
    }
}
