//! One worker per queue pair: moves frames between its tap queue and the guest's RX/TX rings
//! with `readv`/`writev` straight on guest memory. Worker 0 also serves the control queue.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::ctrl::{handle_ctrl_chain, CtrlContext};
use super::tap::{Tap, TapError, IFF_DETACH_QUEUE};
use super::VNET_HDR_LEN;
use crate::virtio::queue::{map_chain_into, ChainBuffers, Direction, MAX_IOVECS};
use crate::virtio::{QueueActivation, VirtioInterrupt};

/// Offset of `num_buffers` inside the 12-byte virtio-net header.
const NUM_BUFFERS_OFFSET: usize = 10;
/// Frames moved per wake-up before the worker looks at its other queues.
const BATCH: usize = 256;

const TOKEN_TAP: u64 = 0;
const TOKEN_RX: u64 = 1;
const TOKEN_TX: u64 = 2;
const TOKEN_CTRL: u64 = 3;
const TOKEN_WAKE: u64 = 4;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("epoll on the net worker's descriptors failed: {0}")]
    Epoll(io::Error),
    #[error(transparent)]
    Tap(#[from] TapError),
}

/// State of one queue pair shared by its worker, the control-queue handler and the device.
pub struct PairShared {
    pub tap: Tap,
    attached: AtomicBool,
    stop: AtomicBool,
    wake: EventFd,
}

impl PairShared {
    pub fn new(tap: Tap) -> io::Result<Self> {
        // An inherited queue may arrive detached; the flag must say what the kernel has, or
        // the first attach would be skipped as a no-op.
        let attached = tap
            .flags()
            .map_or(true, |flags| flags & IFF_DETACH_QUEUE == 0);
        Ok(Self {
            tap,
            attached: AtomicBool::new(attached),
            stop: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    pub fn attached(&self) -> bool {
        self.attached.load(Ordering::SeqCst)
    }

    /// Attaches or detaches the tap queue (only when that changes), then tells the worker so
    /// it starts or stops polling the tap.
    pub fn set_attached(&self, attached: bool) -> Result<(), TapError> {
        if self.attached() != attached {
            self.tap.set_attached(attached)?;
            self.attached.store(attached, Ordering::SeqCst);
        }
        self.kick();
        Ok(())
    }

    /// Asks the worker to exit.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.kick();
    }

    /// Lets a new worker run; its first step drains the previous run's wake-ups.
    pub fn clear_stop(&self) {
        self.stop.store(false, Ordering::SeqCst);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn kick(&self) {
        if let Err(e) = self.wake.write(1) {
            log::warn!(
                "net: cannot wake the worker of tap {}: {e}",
                self.tap.name()
            );
        }
    }
}

/// What a device reports once, whichever of its workers meets it first: a guest that keeps
/// sending bad chains (or resets and breaks its rings again) cannot flood the log.
#[derive(Debug, Default)]
pub struct ReportedOnce {
    malformed: AtomicBool,
    broken: AtomicBool,
}

impl ReportedOnce {
    fn first(flag: &AtomicBool) -> bool {
        !flag.swap(true, Ordering::SeqCst)
    }
}

/// A queue the worker serves.
struct WorkQueue {
    queue: Queue,
    notify: EventFd,
    vector: u16,
}

impl From<QueueActivation> for WorkQueue {
    fn from(q: QueueActivation) -> Self {
        Self {
            queue: q.queue,
            notify: q.notify,
            vector: q.vector,
        }
    }
}

impl WorkQueue {
    /// Raises the queue's interrupt if the driver wants one for what was used since the last
    /// look (once per batch: an interrupt per frame would cost the worker a wake-up of the
    /// driver per frame). Err: the ring is unreadable.
    fn notify_driver(
        &mut self,
        mem: &GuestMemoryMmap,
        interrupt: &VirtioInterrupt,
        name: &str,
    ) -> Result<(), String> {
        match self.queue.needs_notification(mem) {
            Ok(true) => {
                if let Err(e) = interrupt.signal_queue(self.vector) {
                    log::warn!("{name}: cannot raise the queue interrupt: {e}");
                }
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The tap settings of one activation, applied by worker 0 as its first step, before it serves
/// any control request (which would otherwise race with the initial attach state).
pub struct TapSetup {
    /// Every queue pair's tap, in pair order.
    pub pairs: Vec<Arc<PairShared>>,
    /// TUN_F_* offloads the guest accepts.
    pub offload: u32,
    /// Pairs below this index start attached, the rest detached (the driver starts with 1).
    pub attached: usize,
}

/// What a worker needs; built by the device at activation, with no system call, so that
/// activation on the vCPU thread that wrote DRIVER_OK does no I/O of its own.
pub struct WorkerSetup {
    pub name: String,
    pub mem: GuestMemoryMmap,
    pub rx: QueueActivation,
    pub tx: QueueActivation,
    pub ctrl: Option<(QueueActivation, CtrlContext)>,
    pub pair: Arc<PairShared>,
    pub interrupt: VirtioInterrupt,
    pub mergeable_rx: bool,
    /// Bytes a received frame may need: header plus the largest frame the guest accepts.
    pub rx_frame_max: usize,
    /// Shared by every worker of the device.
    pub reported: Arc<ReportedOnce>,
    /// Worker 0's: the device-wide tap settings.
    pub tap_setup: Option<TapSetup>,
}

pub struct Worker {
    name: String,
    mem: GuestMemoryMmap,
    rx: WorkQueue,
    tx: WorkQueue,
    ctrl: Option<(WorkQueue, CtrlContext)>,
    pair: Arc<PairShared>,
    interrupt: VirtioInterrupt,
    mergeable_rx: bool,
    rx_frame_max: usize,
    tap_setup: Option<TapSetup>,
    /// Created by the worker itself as it starts.
    epoll: Option<Epoll>,
    tap_polled: bool,
    /// The guest gave too few RX buffers for the next frame: stop polling the tap until it
    /// adds more.
    rx_starved: bool,
    rx_held: RxHeld,
    /// The TX chain being sent, and its I/O vector: reused, so a frame allocates nothing.
    tx_buffers: ChainBuffers,
    tx_iovecs: IoVecs,
    broken: bool,
    reported: Arc<ReportedOnce>,
}

/// An I/O vector into guest memory, kept from frame to frame.
#[derive(Default)]
struct IoVecs(Vec<libc::iovec>);

// SAFETY: the pointers point into guest memory, which stays mapped while the worker that owns
// the vector holds its GuestMemoryMmap (as for `Segment`); an iovec has no thread-affine state.
unsafe impl Send for IoVecs {}

/// RX buffers taken from the ring ahead of the frames that will fill them. They stay taken
/// across reads, so a frame costs the chains it fills, not a worst-case set taken and given
/// back each time.
#[derive(Default)]
struct RxHeld {
    chains: VecDeque<ChainBuffers>,
    /// Every held chain's buffers as one I/O vector, in ring order.
    iovecs: IoVecs,
    /// Bytes the held chains take.
    capacity: usize,
    /// Emptied chains whose allocations the next ones reuse.
    spare: Vec<ChainBuffers>,
}

impl RxHeld {
    /// Whether the held buffers take any frame: all of `frame_max` with mergeable buffers (the
    /// tap says a frame's size only by reading it, and a frame that does not fit is lost), one
    /// chain without (the driver sized each for a whole frame). A vector at the readv limit
    /// is as much as one read can take.
    fn ready(&self, mergeable: bool, frame_max: usize) -> bool {
        if mergeable {
            self.capacity >= frame_max || self.iovecs.0.len() >= MAX_IOVECS
        } else {
            !self.chains.is_empty()
        }
    }

    fn push(&mut self, chain: ChainBuffers) {
        chain.push_iovecs(&mut self.iovecs.0);
        self.capacity += chain.len;
        self.chains.push_back(chain);
    }

    /// Forgets the first `count` chains, which a frame filled.
    fn consume(&mut self, count: usize) {
        let mut segments = 0;
        for chain in self.chains.drain(..count) {
            segments += chain.segments.len();
            self.capacity -= chain.len;
            self.spare.push(chain);
        }
        self.iovecs.0.drain(..segments);
    }
}

/// Outcome of taking the next chain from a ring.
enum Next<'a> {
    Chain(DescriptorChain<&'a GuestMemoryMmap>),
    Empty,
    Broken(String),
}

fn next_chain<'a>(queue: &mut Queue, mem: &'a GuestMemoryMmap) -> Next<'a> {
    match queue.iter(mem) {
        Ok(mut iter) => match iter.next() {
            Some(chain) => Next::Chain(chain),
            None => Next::Empty,
        },
        Err(e) => Next::Broken(e.to_string()),
    }
}

/// Writes one TX frame (virtio-net header and all) to the tap, straight from guest memory.
fn write_frame(tap: RawFd, buffers: &ChainBuffers, iovecs: &mut Vec<libc::iovec>, name: &str) {
    iovecs.clear();
    buffers.push_iovecs(iovecs);
    // SAFETY: every iovec points into guest memory that stays mapped while this worker runs
    // (the worker holds the GuestMemoryMmap); writev only reads from it.
    let ret = unsafe { libc::writev(tap, iovecs.as_ptr(), iovecs.len() as libc::c_int) };
    if ret < 0 {
        // A down, detached or full tap drops the frame, as a real link would.
        log::debug!(
            "{name}: tap write failed, frame dropped: {}",
            io::Error::last_os_error()
        );
    }
}

impl Worker {
    pub fn new(setup: WorkerSetup) -> Self {
        Self {
            name: setup.name,
            mem: setup.mem,
            rx: setup.rx.into(),
            tx: setup.tx.into(),
            ctrl: setup.ctrl.map(|(q, c)| (q.into(), c)),
            pair: setup.pair,
            interrupt: setup.interrupt,
            mergeable_rx: setup.mergeable_rx,
            rx_frame_max: setup.rx_frame_max,
            tap_setup: setup.tap_setup,
            epoll: None,
            tap_polled: false,
            rx_starved: false,
            rx_held: RxHeld::default(),
            tx_buffers: ChainBuffers::default(),
            tx_iovecs: IoVecs::default(),
            broken: false,
            reported: setup.reported,
        }
    }

    /// The worker's own set-up, on its own thread: its epoll set, and for worker 0 the tap
    /// queues' offloads and attach state.
    fn set_up(&mut self) -> Result<(), WorkerError> {
        self.epoll = Some(Epoll::new().map_err(WorkerError::Epoll)?);
        self.watch(self.rx.notify.as_raw_fd(), TOKEN_RX)?;
        self.watch(self.tx.notify.as_raw_fd(), TOKEN_TX)?;
        self.watch(self.pair.wake.as_raw_fd(), TOKEN_WAKE)?;
        if let Some((ctrl, _)) = &self.ctrl {
            self.watch(ctrl.notify.as_raw_fd(), TOKEN_CTRL)?;
        }
        if let Some(setup) = self.tap_setup.take() {
            for (index, pair) in setup.pairs.iter().enumerate() {
                pair.tap.set_offload(setup.offload)?;
                pair.set_attached(index < setup.attached)?;
            }
        }
        Ok(())
    }

    fn watch(&self, fd: i32, token: u64) -> Result<(), WorkerError> {
        let Some(epoll) = &self.epoll else {
            return Ok(());
        };
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(WorkerError::Epoll)
    }

    /// Polls the tap only while it is attached and the guest has RX buffers: a detached tap
    /// reports EPOLLERR forever and a starved RX ring would spin on a readable tap.
    fn update_tap_interest(&mut self) -> Result<(), WorkerError> {
        let want = self.pair.attached() && !self.rx_starved && !self.broken;
        if want == self.tap_polled {
            return Ok(());
        }
        let fd = self.pair.tap.as_raw_fd();
        if want {
            self.watch(fd, TOKEN_TAP)?;
        } else if let Some(epoll) = &self.epoll {
            epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default())
                .map_err(WorkerError::Epoll)?;
        }
        self.tap_polled = want;
        Ok(())
    }

    /// Sets itself up, then moves frames until asked to stop. A failure is logged, and marks
    /// the device DEVICE_NEEDS_RESET when the worker cannot go on.
    pub fn run(mut self) {
        // Wake-ups left from the previous run; a stop asked since then is still in the flag.
        let _ = self.pair.wake.read();
        if self.pair.stopping() {
            return;
        }
        if let Err(e) = self.set_up() {
            log::error!("{}: cannot start: {e}: device needs reset", self.name);
            self.broken = true;
            if let Err(e) = self.interrupt.set_needs_reset() {
                log::warn!("{}: cannot signal DEVICE_NEEDS_RESET: {e}", self.name);
            }
            return;
        }
        match self.serve() {
            Ok(()) => log::info!("{}: stopped", self.name),
            Err(e) => log::error!("{}: {e}; the queue pair is no longer served", self.name),
        }
    }

    fn serve(&mut self) -> Result<(), WorkerError> {
        self.update_tap_interest()?;
        // Buffers and frames the guest queued before the worker started.
        self.process_tx();
        self.process_rx();
        self.process_ctrl();
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            self.update_tap_interest()?;
            let waited = match &self.epoll {
                Some(epoll) => epoll.wait(-1, &mut events),
                None => return Ok(()),
            };
            let n = match waited {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(WorkerError::Epoll(e)),
            };
            for event in &events[..n] {
                match event.data() {
                    TOKEN_WAKE => {
                        let _ = self.pair.wake.read();
                        if self.pair.stopping() {
                            return Ok(());
                        }
                    }
                    TOKEN_TAP => self.process_rx(),
                    TOKEN_RX => {
                        let _ = self.rx.notify.read();
                        self.rx_starved = false;
                        self.process_rx();
                    }
                    TOKEN_TX => {
                        let _ = self.tx.notify.read();
                        self.process_tx();
                    }
                    TOKEN_CTRL => {
                        if let Some((ctrl, _)) = &self.ctrl {
                            let _ = ctrl.notify.read();
                        }
                        self.process_ctrl();
                    }
                    _ => {}
                }
            }
        }
    }

    fn malformed(&self, what: &str) {
        if ReportedOnce::first(&self.reported.malformed) {
            log::warn!(
                "{}: malformed descriptor chain dropped ({what}); further ones on this device are dropped silently",
                self.name
            );
        }
    }

    /// The ring itself is corrupt (e.g. an available index that runs ahead of the ring): the
    /// worker stops serving it and the device asks the driver to reset it.
    fn mark_broken(&mut self, what: &str) {
        if self.broken {
            return;
        }
        self.broken = true;
        if ReportedOnce::first(&self.reported.broken) {
            log::error!(
                "{}: virtqueue is broken ({what}): device needs reset",
                self.name
            );
        }
        if let Err(e) = self.interrupt.set_needs_reset() {
            log::warn!("{}: cannot signal DEVICE_NEEDS_RESET: {e}", self.name);
        }
    }

    fn signal(&mut self, which: u64) {
        let q = if which == TOKEN_RX {
            &mut self.rx
        } else {
            &mut self.tx
        };
        if let Err(what) = q.notify_driver(&self.mem, &self.interrupt, &self.name) {
            self.mark_broken(&what);
        }
    }

    /// Guest -> tap: every chain available (up to BATCH), then one look at whether the
    /// driver wants an interrupt.
    pub fn process_tx(&mut self) {
        if self.broken {
            return;
        }
        let mut frames = 0;
        loop {
            if let Err(e) = self.tx.queue.disable_notification(&self.mem) {
                return self.mark_broken(&e.to_string());
            }
            match self.send_available(BATCH - frames) {
                Ok(sent) => frames += sent,
                Err(what) => return self.mark_broken(&what),
            }
            if frames == BATCH {
                // Come back after the other queues had a turn.
                let _ = self.tx.notify.write(1);
                self.signal(TOKEN_TX);
                return;
            }
            match self.tx.queue.enable_notification(&self.mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => return self.mark_broken(&e.to_string()),
            }
        }
        if frames > 0 {
            self.signal(TOKEN_TX);
        }
    }

    /// Writes the chains available now, at most `budget`, to the tap (one read of the
    /// available index for all of them) and returns each to the guest. Returns how many.
    fn send_available(&mut self, budget: usize) -> Result<usize, String> {
        let mem = &self.mem;
        let chains: Vec<DescriptorChain<&GuestMemoryMmap>> = match self.tx.queue.iter(mem) {
            Ok(iter) => iter.take(budget).collect(),
            Err(e) => return Err(e.to_string()),
        };
        let count = chains.len();
        for chain in chains {
            let head = chain.head_index();
            match map_chain_into(mem, chain, Direction::Readable, &mut self.tx_buffers) {
                Ok(()) if self.tx_buffers.len > VNET_HDR_LEN => write_frame(
                    self.pair.tap.as_raw_fd(),
                    &self.tx_buffers,
                    &mut self.tx_iovecs.0,
                    &self.name,
                ),
                Ok(()) => self.malformed("TX frame no longer than the virtio-net header"),
                Err(e) => self.malformed(&e.to_string()),
            }
            self.tx
                .queue
                .add_used(mem, head, 0)
                .map_err(|e| e.to_string())?;
        }
        Ok(count)
    }

    /// Tap -> guest: frames until the tap is empty, the guest's buffers run short or BATCH
    /// is done, then one look at whether the driver wants an interrupt.
    pub fn process_rx(&mut self) {
        if self.broken || !self.pair.attached() {
            return;
        }
        if let Err(e) = self.rx.queue.disable_notification(&self.mem) {
            return self.mark_broken(&e.to_string());
        }
        let mut used = 0;
        let mut frames = 0;
        while frames < BATCH {
            match self.receive_frame(&mut used) {
                Ok(true) => frames += 1,
                Ok(false) => break,
                Err(what) => {
                    self.mark_broken(&what);
                    break;
                }
            }
        }
        if used > 0 {
            self.signal(TOKEN_RX);
        }
    }

    /// Takes chains from the RX ring until the held ones take any frame. Bad chains go back
    /// unused (counted in `used`). Returns false when the ring ran dry first: the worker then
    /// waits for the guest to add buffers.
    fn hold_rx_buffers(&mut self, used: &mut usize) -> Result<bool, String> {
        let (mergeable, frame_max) = (self.mergeable_rx, self.rx_frame_max);
        while !self.rx_held.ready(mergeable, frame_max) {
            let mem = &self.mem;
            let mut taken = 0;
            let mut bad: Vec<u16> = Vec::new();
            let mut malformed = None;
            {
                let mut iter = self.rx.queue.iter(mem).map_err(|e| e.to_string())?;
                while !self.rx_held.ready(mergeable, frame_max) {
                    let Some(chain) = iter.next() else {
                        break;
                    };
                    taken += 1;
                    let head = chain.head_index();
                    let mut buffers = self.rx_held.spare.pop().unwrap_or_default();
                    match map_chain_into(mem, chain, Direction::Writable, &mut buffers) {
                        Ok(()) if buffers.len >= VNET_HDR_LEN => {
                            self.rx_held.push(buffers);
                            continue;
                        }
                        Ok(()) => {
                            malformed =
                                Some("RX buffer smaller than the virtio-net header".to_string())
                        }
                        Err(e) => malformed = Some(e.to_string()),
                    }
                    self.rx_held.spare.push(buffers);
                    bad.push(head);
                }
            }
            if let Some(what) = malformed {
                self.malformed(&what);
            }
            for head in bad {
                self.rx
                    .queue
                    .add_used(mem, head, 0)
                    .map_err(|e| e.to_string())?;
                *used += 1;
            }
            if taken == 0 {
                // Ask for a notification, then look once more (the guest may have added
                // buffers in between).
                let more = self
                    .rx
                    .queue
                    .enable_notification(&self.mem)
                    .map_err(|e| e.to_string())?;
                if !more {
                    self.rx_starved = true;
                    return Ok(false);
                }
                self.rx
                    .queue
                    .disable_notification(&self.mem)
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(true)
    }

    /// Reads one frame from the tap into the held guest buffers. Ok(false): nothing more to
    /// do now.
    fn receive_frame(&mut self, used: &mut usize) -> Result<bool, String> {
        if !self.hold_rx_buffers(used)? {
            return Ok(false);
        }
        let held = &self.rx_held;
        let count = held.iovecs.0.len().min(MAX_IOVECS);
        // SAFETY: the iovecs point into guest RAM that stays mapped while the worker holds
        // `mem`; the driver gave these buffers to the device, so writing them is allowed.
        let ret = unsafe {
            libc::readv(
                self.pair.tap.as_raw_fd(),
                held.iovecs.0.as_ptr(),
                count as libc::c_int,
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::WouldBlock {
                log::debug!("{}: tap read failed: {err}", self.name);
            }
            return Ok(false);
        }
        // The chains the frame filled, in order; at least the first, which has the header.
        let mut left = ret as usize;
        let mut filled = 0;
        for chain in &held.chains {
            filled += 1;
            left = left.saturating_sub(chain.len);
            if left == 0 {
                break;
            }
        }
        // num_buffers goes in before the used entries make the frame visible.
        let num_buffers = (filled as u16).to_le_bytes();
        if !held.chains[0].write_at(&self.mem, NUM_BUFFERS_OFFSET, &num_buffers) {
            self.malformed("RX header not writable");
        }
        let mut left = ret as usize;
        for chain in self.rx_held.chains.iter().take(filled) {
            let take = left.min(chain.len);
            left -= take;
            self.rx
                .queue
                .add_used(&self.mem, chain.head, take as u32)
                .map_err(|e| e.to_string())?;
        }
        *used += filled;
        self.rx_held.consume(filled);
        Ok(true)
    }

    fn process_ctrl(&mut self) {
        let Some((mut ctrl, context)) = self.ctrl.take() else {
            return;
        };
        let handled = self.serve_ctrl(&mut ctrl, &context);
        if handled > 0 {
            match ctrl.queue.needs_notification(&self.mem) {
                Ok(true) => {
                    if let Err(e) = self.interrupt.signal_queue(ctrl.vector) {
                        log::warn!(
                            "{}: cannot raise the control queue interrupt: {e}",
                            self.name
                        );
                    }
                }
                Ok(false) => {}
                Err(e) => self.mark_broken(&e.to_string()),
            }
        }
        self.ctrl = Some((ctrl, context));
    }

    /// Answers every queued control request. With EVENT_IDX the driver kicks only when the
    /// device asked for it (avail_event), so notifications are re-enabled before the ring is
    /// found empty, as on TX; a driver that polls for its ack would otherwise wait forever.
    fn serve_ctrl(&mut self, ctrl: &mut WorkQueue, context: &CtrlContext) -> usize {
        let mut handled = 0;
        if self.broken {
            return handled;
        }
        loop {
            if let Err(e) = ctrl.queue.disable_notification(&self.mem) {
                self.mark_broken(&e.to_string());
                return handled;
            }
            loop {
                let chain = match next_chain(&mut ctrl.queue, &self.mem) {
                    Next::Chain(chain) => chain,
                    Next::Empty => break,
                    Next::Broken(what) => {
                        self.mark_broken(&what);
                        return handled;
                    }
                };
                let head = chain.head_index();
                let written = match handle_ctrl_chain(&self.mem, chain, context) {
                    Ok(n) => n,
                    Err(e) => {
                        self.malformed(&e.to_string());
                        0
                    }
                };
                if let Err(e) = ctrl.queue.add_used(&self.mem, head, written) {
                    self.mark_broken(&e.to_string());
                    return handled;
                }
                handled += 1;
            }
            match ctrl.queue.enable_notification(&self.mem) {
                Ok(true) => continue,
                Ok(false) => return handled,
                Err(e) => {
                    self.mark_broken(&e.to_string());
                    return handled;
                }
            }
        }
    }
}
