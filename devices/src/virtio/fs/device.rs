//! The virtio-fs device model: configuration space and the [`VirtioDevice`] hooks, which hand
//! the rings to the backend through the device's link thread.

use std::sync::Arc;
use std::time::Duration;

use virtio_queue::QueueT;

use super::backend::Backend;
use super::link::{Link, LinkError, LinkRequest, QueueStart};
use super::TAG_LEN;
use crate::virtio::{ActivateError, Activation, VirtioDevice, WorkerSpawner, TYPE_FS};

/// How long the driver's DRIVER_OK or reset may wait for the backend. Each backend message has
/// its own socket timeout below this; this bounds a link thread that stopped answering.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FsError {
    #[error(
        "tag is empty: give the name the guest mounts, e.g. tag=data (mount -t virtiofs data /mnt)"
    )]
    EmptyTag,
    #[error(
        "tag `{tag}` is {len} bytes, more than the {TAG_LEN} virtio-fs allows: use a shorter tag"
    )]
    TagTooLong { tag: String, len: usize },
    #[error("tag `{0}` contains a NUL byte: use printable characters")]
    TagNul(String),
    #[error("queues=0: give at least one request queue")]
    NoQueues,
    #[error("queues={0} is too many: at most 1022 request queues fit a virtio-pci function")]
    TooManyQueues(usize),
    #[error("queue_size={0}: give a power of two from 1 to 32768")]
    QueueSize(u32),
}

/// A validated virtio-fs configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsConfig {
    pub tag: String,
    /// Request queues; the device has one high-priority queue more.
    pub request_queues: usize,
    pub queue_size: u16,
}

impl FsConfig {
    pub fn new(tag: &str, request_queues: usize, queue_size: u32) -> Result<Self, FsError> {
        if tag.is_empty() {
            return Err(FsError::EmptyTag);
        }
        if tag.len() > TAG_LEN {
            return Err(FsError::TagTooLong {
                tag: tag.to_string(),
                len: tag.len(),
            });
        }
        if tag.contains('\0') {
            return Err(FsError::TagNul(tag.to_string()));
        }
        if request_queues == 0 {
            return Err(FsError::NoQueues);
        }
        // The transport's limit (1023 queues) less the high-priority queue.
        if request_queues > crate::virtio::pci::MAX_QUEUES - 1 {
            return Err(FsError::TooManyQueues(request_queues));
        }
        if !queue_size.is_power_of_two() || queue_size > 32768 {
            return Err(FsError::QueueSize(queue_size));
        }
        Ok(Self {
            tag: tag.to_string(),
            request_queues,
            queue_size: queue_size as u16,
        })
    }

    /// Queues of the device: the high-priority queue, then the request queues.
    pub fn queues(&self) -> usize {
        self.request_queues + 1
    }

    /// `struct virtio_fs_config`: tag[36], le32 num_request_queues.
    fn space(&self) -> [u8; TAG_LEN + 4] {
        let mut space = [0u8; TAG_LEN + 4];
        space[..self.tag.len()].copy_from_slice(self.tag.as_bytes());
        space[TAG_LEN..].copy_from_slice(&(self.request_queues as u32).to_le_bytes());
        space
    }
}

/// A virtio-fs device served by a vhost-user backend.
pub struct Fs {
    config: FsConfig,
    space: [u8; TAG_LEN + 4],
    features: u64,
    link: Link,
}

impl Fs {
    /// Starts the device's link thread with `spawner`; `backend` is connected and negotiated.
    pub fn new(
        config: FsConfig,
        backend: Backend,
        spawner: Arc<dyn WorkerSpawner>,
    ) -> Result<Self, LinkError> {
        let features = backend.guest_features();
        let name = format!("virtio-fs tag={}", config.tag);
        let link = Link::start(name, backend, spawner.as_ref())?;
        Ok(Self {
            space: config.space(),
            config,
            features,
            link,
        })
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    /// Whether the backend hung up (the device then needs a reset that cannot succeed).
    pub fn backend_gone(&self) -> bool {
        self.link.backend_gone()
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![self.config.queue_size; self.config.queues()]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let start = offset as usize;
        if let Some(src) = self.space.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio-fs tag={}: {}-byte write at {offset:#x} to the read-only configuration ignored",
            self.config.tag,
            data.len()
        );
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let mut queues = Vec::new();
        for (index, q) in activation.queues.into_iter().enumerate() {
            if !q.queue.ready() {
                continue;
            }
            let call = activation
                .interrupt
                .irqfd(q.vector)
                .ok_or_else(|| ActivateError::BadQueue {
                    index,
                    reason: format!(
                        "it has no MSI-X vector with an irqfd (vector {:#x}): the backend needs one to interrupt the guest",
                        q.vector
                    ),
                })?;
            queues.push(QueueStart {
                index,
                queue: q.queue,
                kick: q.notify,
                call,
            });
        }
        let request = LinkRequest::Activate {
            queues,
            acked_features: activation.acked_features,
            mem: activation.mem,
            interrupt: activation.interrupt,
        };
        self.link
            .call(request, REPLY_TIMEOUT)
            .map_err(|e| ActivateError::Device(format!("virtio-fs tag={}: {e}", self.config.tag)))
    }

    fn reset(&mut self) {
        if let Err(e) = self.link.call(LinkRequest::Reset, REPLY_TIMEOUT) {
            log::error!("virtio-fs tag={}: reset: {e}", self.config.tag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_holds_tag_and_queue_count() {
        let c = FsConfig::new("data", 2, 1024).unwrap();
        let space = c.space();
        assert_eq!(&space[..4], b"data");
        assert!(space[4..TAG_LEN].iter().all(|&b| b == 0));
        assert_eq!(&space[TAG_LEN..], &2u32.to_le_bytes());
        assert_eq!(c.queues(), 3);
        let full = "t".repeat(TAG_LEN);
        assert_eq!(
            &FsConfig::new(&full, 1, 8).unwrap().space()[..TAG_LEN],
            full.as_bytes()
        );
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert_eq!(FsConfig::new("", 1, 1024), Err(FsError::EmptyTag));
        let long = "x".repeat(TAG_LEN + 1);
        assert_eq!(
            FsConfig::new(&long, 1, 1024),
            Err(FsError::TagTooLong {
                tag: long.clone(),
                len: 37
            })
        );
        assert_eq!(
            FsConfig::new("a\0b", 1, 1024),
            Err(FsError::TagNul("a\0b".into()))
        );
        assert_eq!(FsConfig::new("t", 0, 1024), Err(FsError::NoQueues));
        assert_eq!(
            FsConfig::new("t", 1023, 1024),
            Err(FsError::TooManyQueues(1023))
        );
        assert_eq!(FsConfig::new("t", 1, 1000), Err(FsError::QueueSize(1000)));
        assert_eq!(FsConfig::new("t", 1, 65536), Err(FsError::QueueSize(65536)));
        assert!(FsConfig::new("t", 1022, 32768).is_ok());
    }
}
