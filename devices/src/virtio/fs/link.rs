//! The thread that owns a virtio-fs device's backend connection.
//!
//! The driver's DRIVER_OK and reset arrive on a vCPU thread; rather than giving vCPU threads the
//! socket calls, the device passes them here and waits (bounded) for the result. Between
//! requests the thread sleeps in `poll` on its wake-up eventfd and on the socket's hang-up: the
//! backend only ever writes to the socket in answer to a request, so the socket has nothing to
//! say while idle except that the backend went away. Then the thread logs it once, sets
//! DEVICE_NEEDS_RESET, and from then on answers every request the guest queues with EIO
//! ([`super::orphans`]).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{Backend, RingSetup};
use super::orphans;
use crate::virtio::{VirtioInterrupt, WorkerSpawner};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot create the link thread's eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot start the vhost-user thread: {0}")]
    Spawn(std::io::Error),
    #[error("the vhost-user thread ended")]
    Ended,
    #[error("the vhost-user thread did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Backend(String),
}

/// One enabled queue for the backend.
pub struct QueueStart {
    pub index: usize,
    pub queue: Queue,
    pub kick: EventFd,
    pub call: EventFd,
}

pub enum LinkRequest {
    /// DRIVER_OK: features, memory table, every enabled ring.
    Activate {
        queues: Vec<QueueStart>,
        acked_features: u64,
        mem: GuestMemoryMmap,
        interrupt: VirtioInterrupt,
    },
    /// Status 0: stop every ring the backend runs.
    Reset,
}

struct Envelope {
    request: LinkRequest,
    reply: SyncSender<Result<(), String>>,
}

/// The device's end: sends requests and waits for their outcome.
pub struct Link {
    requests: Sender<Envelope>,
    wake: EventFd,
    gone: Arc<AtomicBool>,
}

impl Link {
    /// Starts the thread that owns `backend`, named `name` in logs.
    pub fn start(
        name: String,
        backend: Backend,
        spawner: &dyn WorkerSpawner,
    ) -> Result<Self, LinkError> {
        let wake = EventFd::new(EFD_NONBLOCK).map_err(LinkError::EventFd)?;
        let (requests, inbox) = mpsc::channel();
        let gone = Arc::new(AtomicBool::new(false));
        let thread = LinkThread {
            name,
            backend,
            inbox,
            wake: wake.try_clone().map_err(LinkError::EventFd)?,
            gone: gone.clone(),
            running: Vec::new(),
            active: None,
        };
        // The thread lives as long as the process: it ends when the device (and its sender) is
        // dropped; nobody waits for it, so a stuck backend cannot hold up the VMM's exit.
        let _detached = spawner
            .spawn("vhost-user".into(), Box::new(move || thread.run()))
            .map_err(LinkError::Spawn)?;
        Ok(Self {
            requests,
            wake,
            gone,
        })
    }

    pub fn backend_gone(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }

    /// Hands `request` to the thread and waits at most `timeout` for its outcome.
    pub fn call(&self, request: LinkRequest, timeout: Duration) -> Result<(), LinkError> {
        let (reply, outcome) = mpsc::sync_channel(1);
        self.requests
            .send(Envelope { request, reply })
            .map_err(|_| LinkError::Ended)?;
        self.wake.write(1).map_err(|_| LinkError::Ended)?;
        match outcome.recv_timeout(timeout) {
            Ok(res) => res.map_err(LinkError::Backend),
            Err(RecvTimeoutError::Timeout) => Err(LinkError::Timeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => Err(LinkError::Ended),
        }
    }
}

/// What the guest's driver set up last, kept for answering requests after a hang-up.
struct Active {
    mem: GuestMemoryMmap,
    interrupt: VirtioInterrupt,
    queues: Vec<QueueStart>,
}

struct LinkThread {
    name: String,
    backend: Backend,
    inbox: Receiver<Envelope>,
    wake: EventFd,
    gone: Arc<AtomicBool>,
    /// Rings the backend runs now.
    running: Vec<usize>,
    active: Option<Active>,
}

/// What woke the thread.
const WAKE: usize = 0;
const SOCKET: usize = 1;

impl LinkThread {
    fn run(mut self) {
        loop {
            let mut fds = vec![pollfd(self.wake.as_raw_fd(), libc::POLLIN)];
            let gone = self.gone.load(Ordering::SeqCst);
            if !gone {
                // Only hang-up: the backend writes nothing unasked.
                fds.push(pollfd(self.backend.socket_fd(), libc::POLLRDHUP));
            } else if let Some(active) = &self.active {
                fds.extend(
                    active
                        .queues
                        .iter()
                        .map(|q| pollfd(q.kick.as_raw_fd(), libc::POLLIN)),
                );
            }
            // SAFETY: `fds` is a valid, initialized array of pollfd that outlives the call.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("{}: poll failed, the link thread stops: {e}", self.name);
                    return;
                }
                continue;
            }
            if !gone && fds[SOCKET].revents != 0 {
                self.hang_up();
            }
            if gone {
                let ready: Vec<usize> = fds[SOCKET..]
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.revents & libc::POLLIN != 0)
                    .map(|(i, _)| i)
                    .collect();
                self.answer_orphans(&ready);
            }
            if fds[WAKE].revents != 0 {
                let _ = self.wake.read();
                loop {
                    match self.inbox.try_recv() {
                        Ok(envelope) => {
                            let outcome = self.handle(envelope.request);
                            // The caller may have timed out and left: nothing to tell then.
                            let _ = envelope.reply.send(outcome);
                        }
                        Err(mpsc::TryRecvError::Empty) => break,
                        // The device is gone: so is this thread's job.
                        Err(mpsc::TryRecvError::Disconnected) => return,
                    }
                }
            }
        }
    }

    fn handle(&mut self, request: LinkRequest) -> Result<(), String> {
        match request {
            LinkRequest::Activate {
                queues,
                acked_features,
                mem,
                interrupt,
            } => self.activate(queues, acked_features, mem, interrupt),
            LinkRequest::Reset => {
                self.stop_rings();
                self.active = None;
                Ok(())
            }
        }
    }

    fn activate(
        &mut self,
        queues: Vec<QueueStart>,
        acked_features: u64,
        mem: GuestMemoryMmap,
        interrupt: VirtioInterrupt,
    ) -> Result<(), String> {
        self.stop_rings();
        if self.gone.load(Ordering::SeqCst) {
            return Err(format!(
                "the backend on {} hung up earlier: restart the VM with the backend running",
                self.backend.path().display()
            ));
        }
        self.backend
            .set_features(acked_features)
            .map_err(|e| e.to_string())?;
        self.backend
            .set_mem_table(&mem)
            .map_err(|e| e.to_string())?;
        for q in &queues {
            let ring = RingSetup {
                index: q.index,
                size: q.queue.size(),
                desc: q.queue.desc_table(),
                avail: q.queue.avail_ring(),
                used: q.queue.used_ring(),
                kick: &q.kick,
                call: &q.call,
            };
            self.backend
                .start_ring(&mem, &ring)
                .map_err(|e| e.to_string())?;
            self.running.push(q.index);
        }
        log::info!(
            "{}: {} queue(s) handed to the backend on {}",
            self.name,
            queues.len(),
            self.backend.path().display()
        );
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
        });
        Ok(())
    }

    /// Stops every ring the backend runs (a reset, or a new activation).
    fn stop_rings(&mut self) {
        for index in std::mem::take(&mut self.running) {
            if self.gone.load(Ordering::SeqCst) {
                break;
            }
            if let Err(e) = self.backend.stop_ring(index) {
                log::warn!("{}: stopping queue {index}: {e}", self.name);
            }
        }
    }

    /// The backend closed its end: report it once, flag the device, fail what it left behind.
    fn hang_up(&mut self) {
        self.gone.store(true, Ordering::SeqCst);
        self.running.clear();
        log::error!(
            "{}: the vhost-user backend on {} hung up: requests on this share now fail with EIO; the VM goes on (restart the backend and the VM to use the share again)",
            self.name,
            self.backend.path().display()
        );
        let Some(active) = &mut self.active else {
            return;
        };
        if let Err(e) = active.interrupt.set_needs_reset() {
            log::warn!("{}: cannot signal DEVICE_NEEDS_RESET: {e}", self.name);
        }
        for q in &mut active.queues {
            orphans::adopt(&mut q.queue, &active.mem);
        }
        let all: Vec<usize> = (0..active.queues.len()).collect();
        self.answer_orphans(&all);
    }

    /// Answers, with EIO, every request queued on the given queues (indices into the active
    /// queues) since the backend left.
    fn answer_orphans(&mut self, which: &[usize]) {
        let Some(active) = &mut self.active else {
            return;
        };
        for &i in which {
            let Some(q) = active.queues.get_mut(i) else {
                continue;
            };
            let _ = q.kick.read();
            match orphans::fail_requests(&mut q.queue, &active.mem) {
                Ok(0) => {}
                Ok(n) => {
                    log::debug!(
                        "{}: queue {}: {n} request(s) failed with EIO",
                        self.name,
                        q.index
                    );
                    if let Err(e) = q.call.write(1) {
                        log::warn!("{}: cannot interrupt the guest: {e}", self.name);
                    }
                }
                Err(e) => log::warn!("{}: queue {}: {e}", self.name, q.index),
            }
        }
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}
