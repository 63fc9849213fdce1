//! The vhost-user side: a `VhostUserBackend` with one high-priority queue (FORGETs) and N request
//! queues. Each queue's kick runs on a vring worker thread of vhost-user-backend, which pops
//! descriptor chains and hands them to the FUSE server.

use super::io::{Buffer, Reader, Writer};
use super::server::Server;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::message::VhostUserVirtioFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

pub type Memory = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// Queue size the backend accepts at most (the frontend picks the actual size).
pub const MAX_QUEUE_SIZE: usize = 1024;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

struct Inner {
    server: Server,
    mem: RwLock<Option<Memory>>,
    event_idx: AtomicBool,
    /// 1 (hiprio) + request queues.
    queues: usize,
    /// Worker threads the queues are spread over.
    threads: usize,
    complained: AtomicBool,
}

#[derive(Clone)]
pub struct FsBackend(Arc<Inner>);

impl FsBackend {
    /// `threads == 0`: one worker thread per queue.
    pub fn new(server: Server, request_queues: usize, threads: usize) -> Self {
        let queues = 1 + request_queues.max(1);
        let threads = if threads == 0 {
            queues
        } else {
            threads.min(queues)
        };
        Self(Arc::new(Inner {
            server,
            mem: RwLock::new(None),
            event_idx: AtomicBool::new(false),
            queues,
            threads,
            complained: AtomicBool::new(false),
        }))
    }

    fn complain(&self, what: std::fmt::Arguments<'_>) {
        if !self.0.complained.swap(true, Ordering::Relaxed) {
            log::warn!("virtiofsd: {what}; the request is dropped (further ones are not logged)");
        }
    }

    /// The readable and writable buffers of a chain, or None when the chain is malformed
    /// (outside guest memory, readable after writable, unterminated).
    fn buffers<'m>(
        &self,
        mem: &'m GuestMemoryMmap<()>,
        descs: impl Iterator<Item = Descriptor>,
    ) -> Option<(Vec<Buffer<'m>>, Vec<Buffer<'m>>)> {
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        let mut last_has_next = true;
        for desc in descs {
            last_has_next = desc.has_next();
            if !desc.is_write_only() && !writable.is_empty() {
                self.complain(format_args!("a readable descriptor after a writable one"));
                return None;
            }
            for slice in GuestMemoryBackend::get_slices(mem, desc.addr(), desc.len() as usize) {
                let Ok(slice) = slice else {
                    self.complain(format_args!(
                        "descriptor {:#x}+{:#x} is outside guest memory",
                        desc.addr().0,
                        desc.len()
                    ));
                    return None;
                };
                if desc.is_write_only() {
                    writable.push(slice);
                } else {
                    readable.push(slice);
                }
            }
        }
        if last_has_next {
            self.complain(format_args!(
                "an unterminated (or looping) descriptor chain"
            ));
            return None;
        }
        Some((readable, writable))
    }

    fn process(&self, vring: &VringRwLock<Memory>) -> std::io::Result<()> {
        let Some(atomic) = self.0.mem.read().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Ok(());
        };
        let mem = atomic.memory();
        let event_idx = self.0.event_idx.load(Ordering::Acquire);
        loop {
            if event_idx {
                vring.disable_notification().map_err(io_err)?;
            }
            let mut served = false;
            loop {
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let used = match self.buffers(&mem, chain) {
                    Some((readable, writable)) => self
                        .0
                        .server
                        .handle(Reader::new(readable), Writer::new(writable)),
                    None => 0,
                };
                vring.add_used(head, used as u32).map_err(io_err)?;
                served = true;
            }
            if served {
                let notify = !event_idx || vring.needs_notification().map_err(io_err)?;
                if notify {
                    vring.signal_used_queue()?;
                }
            }
            if !event_idx || !vring.enable_notification().map_err(io_err)? {
                break;
            }
        }
        Ok(())
    }
}

fn io_err(e: virtio_queue::Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl VhostUserBackend for FsBackend {
    type Bitmap = ();
    type Vring = VringRwLock<Memory>;

    fn num_queues(&self) -> usize {
        self.0.queues
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_RING_F_EVENT_IDX
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, enabled: bool) {
        self.0.event_idx.store(enabled, Ordering::Release);
    }

    fn update_memory(&self, mem: Memory) -> std::io::Result<()> {
        *self.0.mem.write().unwrap_or_else(|p| p.into_inner()) = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        let mut masks = vec![0u64; self.0.threads];
        for queue in 0..self.0.queues {
            masks[queue % self.0.threads] |= 1 << queue;
        }
        masks
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock<Memory>],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        if evset != EventSet::IN {
            return Err(std::io::Error::other(format!(
                "unexpected event set {evset:?} on queue event {device_event}"
            )));
        }
        match vrings.get(device_event as usize) {
            Some(vring) => self.process(vring),
            None => Err(std::io::Error::other(format!(
                "event {device_event} names no queue of this thread"
            ))),
        }
    }
}
