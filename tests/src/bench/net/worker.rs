//! `paddock-bench net worker`: frames through Paddock's virtio-net worker and a real tap, against a
//! plain `writev`/`readv` loop on the same tap with the same frames (the limit: what any user
//! space reader or writer of that tap can reach).
//!
//! TX (guest -> tap): a synthetic driver keeps the TX ring full of chains (virtio-net header plus
//! frame, in guest memory); the worker `writev`s each one into the tap. A tap write runs the frame
//! through the namespace's receive path in the writer's own context (there is no queue to overflow
//! on this side), where it is dropped as addressed to another host. The frames counted are the
//! ones the kernel accepted from the tap (its rx_packets counter), so a frame the worker lost or
//! the tap refused does not count.
//!
//! RX (tap -> guest): an AF_PACKET socket on the tap injects frames into the tap's queue from a
//! thread of its own (frames above 1514 bytes whole, within the tap's MTU of 65521: see `inject`),
//! keeping a window of frames outstanding (256 frames or 2 MiB, whichever is less: fewer than the
//! queue holds, so none is dropped); the worker `readv`s them into mergeable RX buffers; the driver
//! checks each frame's length and headers, recycles the buffers and reports what it consumed to
//! the injector. The plain loop `readv`s into the same page-sized buffers in turn.
//! The frames counted are the ones the driver received intact.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::virtio::net::tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};
use devices::virtio::net::{Tap, VNET_HDR_LEN};
use serde::Serialize;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::cpus::{pin, CpuSplit, Side, ThreadCpu};
use super::frames::{is_test_frame, tcp_frame, vnet_header, MAX_FRAME};
use super::netns::{link_counters, LinkCounters, PacketInjector};
use super::rig::{self, Rig, RigSpec};
use super::ring::{DESC_F_NEXT, DESC_F_WRITE};
use crate::bench::stats::Summary;

/// The benchmark device's name; its worker thread is `{RIG_NAME}-qp0`.
const RIG_NAME: &str = "bench-net";
/// Ring size of both queues: what Linux's virtio-net uses by default and Paddock offers.
pub const QUEUE_SIZE: u16 = 256;
/// Guest buffers are page-sized: a TX frame is split at 4 KiB like an skb's pages, RX buffers are
/// one page each.
const PAGE: u64 = 4096;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x4000;
const DATA: u64 = 0x10_0000;
const MEM_SIZE: usize = 16 << 20;
/// Frames the RX injector keeps outstanding: below the tap queue's 500 so none is dropped, and
/// at most WINDOW_BYTES, so that big frames wait in the cache rather than in DRAM.
const WINDOW: u64 = 256;
const WINDOW_BYTES: u64 = 2 << 20;

fn window(frame_len: usize) -> u64 {
    (WINDOW_BYTES / frame_len as u64).clamp(2 * INJECT_BATCH as u64, WINDOW)
}
const INJECT_BATCH: usize = 32;
/// A plain RX loop tells the injector what it consumed every this many frames.
const PLAIN_CONSUMED_BATCH: u64 = 32;
/// The wait for progress after which a run gives up.
const STALL: Duration = Duration::from_secs(5);
/// Offloads the plain loop sets on the tap: the same the device sets for the features acked here.
const PLAIN_OFFLOAD: u32 = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;

#[derive(Debug, thiserror::Error)]
pub enum WorkerBenchError {
    #[error(transparent)]
    Netns(#[from] super::netns::NetnsError),
    #[error(transparent)]
    Ring(#[from] super::ring::RingError),
    #[error(transparent)]
    Rig(#[from] super::rig::RigError),
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("virtio-net device: {0}")]
    Device(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{what}: no progress for {STALL:?} ({done} frames so far)")]
    Stalled { what: String, done: u64 },
    #[error("{what}: received a frame of {got} bytes, sent {want}")]
    BadFrame {
        what: String,
        got: usize,
        want: usize,
    },
    #[error("the worker marked the device broken (DEVICE_NEEDS_RESET) during {0}")]
    DeviceBroken(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Guest -> tap.
    Tx,
    /// Tap -> guest.
    Rx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Paddock's virtio-net worker between the tap and a synthetic driver.
    Worker,
    /// `writev`/`readv` on the tap in a loop: the limit.
    Plain,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Tx => "tx",
            Direction::Rx => "rx",
        }
    }
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Worker => "worker",
            Mode::Plain => "plain",
        }
    }
}

/// One timed run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    pub frames: u64,
    pub seconds: f64,
    pub frames_per_s: f64,
    pub gbit_per_s: f64,
    /// RX: frames the tap's queue dropped during the run (its tx_dropped); TX: frames the tap
    /// refused (its rx_dropped). Zero in a sound run.
    pub dropped: u64,
    /// CPU time the measured thread (the worker, or the plain loop) ran per frame, in ns: the
    /// cost of a frame whatever else the machine runs.
    pub cpu_ns_per_frame: f64,
    /// RX only: share of the injector's turns that found its window of frames outstanding, i.e. the
    /// reader, not the injector, set the pace (near 1 is what a reader measurement needs).
    pub injector_waited: Option<f64>,
}

impl Sample {
    fn new(frames: u64, bytes_per_frame: usize, seconds: f64, dropped: u64, cpu_ns: u64) -> Self {
        Self {
            frames,
            seconds,
            frames_per_s: frames as f64 / seconds,
            gbit_per_s: frames as f64 * bytes_per_frame as f64 * 8.0 / seconds / 1e9,
            cpu_ns_per_frame: cpu_ns as f64 / frames.max(1) as f64,
            dropped,
            injector_waited: None,
        }
    }
}

/// Timing of one run.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub warmup: Duration,
    pub measure: Duration,
}

/// The measured window of a run: after the warm-up, for `measure`.
struct Window {
    start: Instant,
    timing: Timing,
}

impl Window {
    fn new(timing: Timing) -> Self {
        Self {
            start: Instant::now(),
            timing,
        }
    }
    fn warm(&self) -> bool {
        self.start.elapsed() >= self.timing.warmup
    }
    fn over(&self) -> bool {
        self.start.elapsed() >= self.timing.warmup + self.timing.measure
    }
}

fn memory() -> Result<GuestMemoryMmap, WorkerBenchError> {
    Ok(rig::memory(MEM_SIZE, None)?)
}

/// Where TX frame `slot` lives: its 12-byte header followed by the frame, split into page-sized
/// descriptors. Returns (address, length) of each segment.
fn tx_segments(slot: usize, frame_len: usize) -> Vec<(u64, u32)> {
    let total = (VNET_HDR_LEN + frame_len) as u64;
    let pages = total.div_ceil(PAGE);
    let base = DATA + slot as u64 * pages * PAGE;
    (0..pages)
        .map(|p| (base + p * PAGE, (total - p * PAGE).min(PAGE) as u32))
        .collect()
}

/// TX chains in flight at once: the ring's descriptors divided among frames.
fn tx_slots(frame_len: usize) -> usize {
    let pages = ((VNET_HDR_LEN + frame_len) as u64).div_ceil(PAGE) as usize;
    usize::from(QUEUE_SIZE) / pages
}

/// Writes every TX slot's header and frame into guest memory.
fn fill_tx_frames(mem: &GuestMemoryMmap, frame_len: usize) -> Result<(), WorkerBenchError> {
    let mut bytes = vnet_header(frame_len, true).to_vec();
    bytes.extend_from_slice(&[0, 0]); // num_buffers, unused on TX
    bytes.extend_from_slice(&tcp_frame(frame_len, 1));
    for slot in 0..tx_slots(frame_len) {
        let base = tx_segments(slot, frame_len)[0].0;
        mem.write_slice(&bytes, GuestAddress(base))
            .map_err(|e| WorkerBenchError::Memory(e.to_string()))?;
    }
    Ok(())
}

/// One run; the namespace and the tap `tap` exist. With a `split`, the worker or the plain loop
/// runs on a CPU of its own and the driver and injector on the others (see `cpus`).
pub fn run_once(
    tap: &str,
    direction: Direction,
    mode: Mode,
    frame_len: usize,
    timing: Timing,
    split: Option<&CpuSplit>,
) -> Result<Sample, WorkerBenchError> {
    let _unpin = Unpin(split);
    match (direction, mode) {
        (Direction::Tx, Mode::Worker) => tx_worker(tap, frame_len, timing, split),
        (Direction::Tx, Mode::Plain) => tx_plain(tap, frame_len, timing, split),
        (Direction::Rx, mode) => rx(tap, mode, frame_len, timing, split),
    }
}

/// Gives the calling thread all its CPUs back when a run ends, however it ends.
struct Unpin<'a>(Option<&'a CpuSplit>);

impl Drop for Unpin<'_> {
    fn drop(&mut self) {
        if let Err(e) = pin(self.0, Side::All) {
            eprintln!("net worker bench: cannot unpin the main thread: {e}");
        }
    }
}

/// The benchmark's device: the rings at the start of memory, every feature a Linux guest acks.
const RIG: RigSpec = RigSpec {
    name: RIG_NAME,
    mem_size: MEM_SIZE,
    split_at: None,
    queue_size: QUEUE_SIZE,
    rx_ring: RX_RING,
    tx_ring: TX_RING,
    refused: 0,
};

fn check_healthy(rig: &Rig, what: &str) -> Result<(), WorkerBenchError> {
    if rig.broken() {
        return Err(WorkerBenchError::DeviceBroken(what.to_string()));
    }
    Ok(())
}

fn tx_worker(
    tap: &str,
    frame_len: usize,
    timing: Timing,
    split: Option<&CpuSplit>,
) -> Result<Sample, WorkerBenchError> {
    let what = format!("tx worker {frame_len} B");
    // The worker thread starts with the CPUs of the thread that activates the device.
    pin(split, Side::Measured)?;
    let mut rig = Rig::new(tap, &RIG)?;
    pin(split, Side::Others)?;
    fill_tx_frames(&rig.mem, frame_len)?;
    let slots = tx_slots(frame_len);
    let mut heads = Vec::with_capacity(slots);
    for slot in 0..slots {
        let segments = tx_segments(slot, frame_len);
        let first = (slot * segments.len()) as u16;
        for (i, (addr, len)) in segments.iter().enumerate() {
            let index = first + i as u16;
            let last = i + 1 == segments.len();
            let (flags, next) = if last {
                (0, 0)
            } else {
                (DESC_F_NEXT, index + 1)
            };
            rig.tx.set_desc(index, *addr, *len, flags, next)?;
        }
        heads.push(first);
    }
    let cpu = ThreadCpu::named(&format!("{RIG_NAME}-qp0"))?;
    let window = Window::new(timing);
    let mut before: Option<(Instant, LinkCounters, u64)> = None;
    let mut used = Vec::with_capacity(usize::from(QUEUE_SIZE));
    let mut last_progress = Instant::now();
    rig.tx.publish(&heads)?;
    while !window.over() {
        if before.is_none() && window.warm() {
            before = Some((Instant::now(), link_counters(tap)?, cpu.ns()?));
        }
        used.clear();
        if rig.tx.take_used(&mut used)? > 0 {
            heads.clear();
            heads.extend(used.iter().map(|(h, _)| *h));
            rig.tx.publish(&heads)?;
            last_progress = Instant::now();
        } else {
            if last_progress.elapsed() > STALL {
                check_healthy(&rig, &what)?;
                return Err(WorkerBenchError::Stalled { what, done: 0 });
            }
            // Like Linux's virtio-net when its TX ring is full: a delayed interrupt, once three
            // quarters of what is in flight came back.
            let delay = (rig.tx.in_flight() * 3 / 4).max(1);
            rig.tx.wait_used(delay, Duration::from_millis(100))?;
        }
    }
    let after = (Instant::now(), link_counters(tap)?, cpu.ns()?);
    check_healthy(&rig, &what)?;
    drop(rig);
    let (t0, c0, cpu0) = before.unwrap_or(after);
    let seconds = after.0.duration_since(t0).as_secs_f64();
    Ok(Sample::new(
        after.1.rx_packets - c0.rx_packets,
        frame_len,
        seconds,
        after.1.rx_dropped - c0.rx_dropped,
        after.2 - cpu0,
    ))
}

/// A tap queue set up as the device sets it: 12-byte virtio-net header, the same offloads.
fn plain_tap(tap: &str) -> Result<Tap, WorkerBenchError> {
    let dev = |e: String| WorkerBenchError::Device(e);
    let mut queues = Tap::open_queues(tap, 1).map_err(|e| dev(e.to_string()))?;
    let q = queues.pop().expect("one queue");
    q.set_vnet_hdr_size(VNET_HDR_LEN as i32)
        .map_err(|e| dev(e.to_string()))?;
    q.set_offload(PLAIN_OFFLOAD)
        .map_err(|e| dev(e.to_string()))?;
    Ok(q)
}

fn tx_plain(
    tap: &str,
    frame_len: usize,
    timing: Timing,
    split: Option<&CpuSplit>,
) -> Result<Sample, WorkerBenchError> {
    pin(split, Side::Measured)?;
    let mem = memory()?;
    fill_tx_frames(&mem, frame_len)?;
    let queue = plain_tap(tap)?;
    // The very same buffers the worker sends from, as iovecs.
    let mut frames: Vec<Vec<libc::iovec>> = Vec::new();
    for slot in 0..tx_slots(frame_len) {
        let mut iov = Vec::new();
        for (addr, len) in tx_segments(slot, frame_len) {
            let host = mem
                .get_host_address(GuestAddress(addr))
                .map_err(|e| WorkerBenchError::Memory(e.to_string()))?;
            iov.push(libc::iovec {
                iov_base: host.cast(),
                iov_len: len as usize,
            });
        }
        frames.push(iov);
    }
    let cpu = ThreadCpu::current();
    let window = Window::new(timing);
    let mut before: Option<(Instant, LinkCounters, u64)> = None;
    let mut next = 0;
    while !window.over() {
        if before.is_none() && window.warm() {
            before = Some((Instant::now(), link_counters(tap)?, cpu.ns()?));
        }
        for _ in 0..64 {
            let iov = &frames[next];
            next = (next + 1) % frames.len();
            // SAFETY: the iovecs point into `mem`, mapped for this whole function; writev only
            // reads them.
            let ret =
                unsafe { libc::writev(queue.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
            if ret < 0 {
                return Err(std::io::Error::last_os_error().into());
            }
        }
    }
    let after = (Instant::now(), link_counters(tap)?, cpu.ns()?);
    let (t0, c0, cpu0) = before.unwrap_or(after);
    Ok(Sample::new(
        after.1.rx_packets - c0.rx_packets,
        frame_len,
        after.0.duration_since(t0).as_secs_f64(),
        after.1.rx_dropped - c0.rx_dropped,
        after.2 - cpu0,
    ))
}

/// What the RX injector and the reader share.
#[derive(Default)]
struct Flow {
    sent: AtomicU64,
    consumed: AtomicU64,
    stop: AtomicBool,
    turns: AtomicU64,
    waits: AtomicU64,
}

/// Keeps the tap's queue supplied: up to `window()` frames not yet consumed by the reader.
fn inject(tap: &str, frame_len: usize, flow: Arc<Flow>) -> Result<(), WorkerBenchError> {
    let injector = PacketInjector::open(tap)?;
    // No GSO on injection: the kernel marks a GSO frame from a packet socket untrusted and cuts
    // it into MTU-sized frames before the tap (the tap cannot take untrusted GSO). A frame above
    // 1514 bytes goes in whole, within the tap's MTU of 65521; the worker moves the same bytes
    // either way, as it does not look into the header.
    let header = vnet_header(frame_len, false);
    let frame = tcp_frame(frame_len, 7);
    // Its short sleeps when the window is full should be short indeed.
    // SAFETY: PR_SET_TIMERSLACK changes only this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000u64) };
    let window = window(frame_len);
    let (mut turns, mut waits) = (0u64, 0u64);
    while !flow.stop.load(Ordering::Relaxed) {
        turns += 1;
        let sent = flow.sent.load(Ordering::Relaxed);
        let outstanding = sent - flow.consumed.load(Ordering::Acquire);
        let room = window.saturating_sub(outstanding) as usize;
        if room < INJECT_BATCH {
            waits += 1;
            std::thread::sleep(Duration::from_micros(20));
            continue;
        }
        match injector.send(&header, &frame, INJECT_BATCH) {
            Ok(n) => {
                flow.sent.store(sent + n as u64, Ordering::Relaxed);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                std::thread::sleep(Duration::from_micros(20))
            }
            Err(e) => {
                flow.stop.store(true, Ordering::Relaxed);
                return Err(e.into());
            }
        }
    }
    flow.turns.store(turns, Ordering::Relaxed);
    flow.waits.store(waits, Ordering::Relaxed);
    Ok(())
}

fn rx(
    tap: &str,
    mode: Mode,
    frame_len: usize,
    timing: Timing,
    split: Option<&CpuSplit>,
) -> Result<Sample, WorkerBenchError> {
    let what = format!("rx {} {frame_len} B", mode.name());
    // The reader is in place before the first frame, so none goes to a tap without readers.
    // The worker thread starts with the CPUs of the thread that activates the device.
    pin(split, Side::Measured)?;
    let mut reader = match mode {
        Mode::Worker => RxReader::Worker(Box::new(RxWorker::new(tap)?)),
        Mode::Plain => RxReader::Plain(RxPlain::new(tap)?),
    };
    pin(split, Side::Others)?;
    let flow = Arc::new(Flow::default());
    let injector = {
        let tap = tap.to_string();
        let flow = flow.clone();
        std::thread::Builder::new()
            .name("bench-inject".into())
            .spawn(move || inject(&tap, frame_len, flow))?
    };
    // This thread is the plain reader itself, or the worker's driver.
    if mode == Mode::Plain {
        pin(split, Side::Measured)?;
    }
    let result = reader.read_for(tap, frame_len, timing, &flow, &what);
    flow.stop.store(true, Ordering::Relaxed);
    let injected = injector
        .join()
        .map_err(|_| WorkerBenchError::Device("the injector thread panicked".into()))?;
    let mut sample = result?;
    injected?;
    let turns = flow.turns.load(Ordering::Relaxed).max(1);
    sample.injector_waited = Some(flow.waits.load(Ordering::Relaxed) as f64 / turns as f64);
    Ok(sample)
}

enum RxReader {
    Worker(Box<RxWorker>),
    Plain(RxPlain),
}

impl RxReader {
    fn read_for(
        &mut self,
        tap: &str,
        frame_len: usize,
        timing: Timing,
        flow: &Flow,
        what: &str,
    ) -> Result<Sample, WorkerBenchError> {
        let cpu = match self {
            RxReader::Worker(_) => ThreadCpu::named(&format!("{RIG_NAME}-qp0"))?,
            RxReader::Plain(_) => ThreadCpu::current(),
        };
        let window = Window::new(timing);
        let mut before: Option<(Instant, u64, LinkCounters, u64)> = None;
        let mut frames = 0u64;
        let mut last_progress = Instant::now();
        while !window.over() {
            if before.is_none() && window.warm() {
                before = Some((Instant::now(), frames, link_counters(tap)?, cpu.ns()?));
            }
            if flow.stop.load(Ordering::Relaxed) {
                // The injector failed; its error is reported by the caller.
                break;
            }
            let got = match self {
                RxReader::Worker(w) => w.receive(frame_len, what)?,
                RxReader::Plain(p) => p.receive(frame_len, what)?,
            };
            if got > 0 {
                frames += got;
                flow.consumed.store(frames, Ordering::Release);
                last_progress = Instant::now();
            } else if last_progress.elapsed() > STALL {
                if let RxReader::Worker(w) = self {
                    check_healthy(&w.rig, what)?;
                }
                return Err(WorkerBenchError::Stalled {
                    what: what.to_string(),
                    done: frames,
                });
            }
        }
        let (t1, c1, cpu1) = (Instant::now(), link_counters(tap)?, cpu.ns()?);
        let (t0, f0, c0, cpu0) = before.unwrap_or((t1, frames, c1, cpu1));
        if let RxReader::Worker(w) = self {
            check_healthy(&w.rig, what)?;
        }
        Ok(Sample::new(
            frames - f0,
            frame_len,
            t1.duration_since(t0).as_secs_f64(),
            c1.tx_dropped - c0.tx_dropped,
            cpu1 - cpu0,
        ))
    }
}

/// The driver's RX side: page-sized mergeable buffers, each its own chain.
struct RxWorker {
    rig: Rig,
    used: Vec<(u16, u32)>,
    heads: Vec<u16>,
    /// A frame whose buffers are partly seen: (buffers still to come, bytes so far).
    partial: Option<(u16, usize)>,
}

impl RxWorker {
    fn new(tap: &str) -> Result<Self, WorkerBenchError> {
        let mut rig = Rig::new(tap, &RIG)?;
        let heads: Vec<u16> = (0..QUEUE_SIZE).collect();
        for &h in &heads {
            rig.rx
                .set_desc(h, DATA + u64::from(h) * PAGE, PAGE as u32, DESC_F_WRITE, 0)?;
        }
        rig.rx.publish(&heads)?;
        Ok(Self {
            rig,
            used: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            heads: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            partial: None,
        })
    }

    /// Takes what the device used, checks every complete frame, gives the buffers back.
    /// Returns the number of frames completed.
    fn receive(&mut self, frame_len: usize, what: &str) -> Result<u64, WorkerBenchError> {
        self.used.clear();
        if self.rig.rx.take_used(&mut self.used)? == 0 {
            self.rig.rx.wait_used(1, Duration::from_millis(100))?;
            return Ok(0);
        }
        let mut frames = 0;
        let want = VNET_HDR_LEN + frame_len;
        self.heads.clear();
        for &(head, len) in &self.used {
            let buffer = GuestAddress(DATA + u64::from(head) * PAGE);
            let (left, bytes) = match self.partial.take() {
                Some(p) => p,
                None => {
                    // The first buffer of a frame: its header says how many buffers it spans,
                    // and the Ethernet/IP/TCP headers must be ours.
                    let mut start = [0u8; VNET_HDR_LEN + 54];
                    self.rig
                        .mem
                        .read_slice(&mut start, buffer)
                        .map_err(|e| WorkerBenchError::Memory(e.to_string()))?;
                    if !is_test_frame(&start[VNET_HDR_LEN..]) {
                        return Err(WorkerBenchError::BadFrame {
                            what: format!("{what} (not the injected frame)"),
                            got: len as usize,
                            want,
                        });
                    }
                    (u16::from_le_bytes([start[10], start[11]]), 0)
                }
            };
            let bytes = bytes + len as usize;
            if left <= 1 {
                if bytes != want {
                    return Err(WorkerBenchError::BadFrame {
                        what: what.to_string(),
                        got: bytes,
                        want,
                    });
                }
                frames += 1;
            } else {
                self.partial = Some((left - 1, bytes));
            }
            self.heads.push(head);
        }
        self.rig.rx.publish(&self.heads)?;
        Ok(frames)
    }
}

/// A plain reader of the tap into the very buffers the worker fills: the RX ring's page-sized
/// buffers in turn, each read offered as many as the largest frame needs (as the worker offers
/// the mergeable buffers it holds), moving on by the pages the frame took. One buffer read
/// over and over would stay in the cache, which no reader handing frames on can count on.
struct RxPlain {
    queue: Tap,
    /// Owns the buffers `pages` points into.
    _mem: GuestMemoryMmap,
    /// Where each ring buffer is, as the start of its header.
    pages: Vec<libc::iovec>,
    iovecs: Vec<libc::iovec>,
    /// The buffer the next frame starts in.
    next: usize,
    pending: u64,
}

/// Buffers one read offers: enough for the largest frame with its header.
const PLAIN_SPAN: usize = (VNET_HDR_LEN + MAX_FRAME).div_ceil(PAGE as usize);

impl RxPlain {
    fn new(tap: &str) -> Result<Self, WorkerBenchError> {
        let mem = memory()?;
        let mut pages = Vec::with_capacity(usize::from(QUEUE_SIZE));
        for head in 0..u64::from(QUEUE_SIZE) {
            let host = mem
                .get_host_address(GuestAddress(DATA + head * PAGE))
                .map_err(|e| WorkerBenchError::Memory(e.to_string()))?;
            pages.push(libc::iovec {
                iov_base: host.cast(),
                iov_len: PAGE as usize,
            });
        }
        Ok(Self {
            queue: plain_tap(tap)?,
            _mem: mem,
            pages,
            iovecs: Vec::with_capacity(PLAIN_SPAN),
            next: 0,
            pending: 0,
        })
    }

    /// Reads frames until the tap is empty or a batch is done; returns the frames read, once
    /// per batch like the worker's driver does.
    fn receive(&mut self, frame_len: usize, what: &str) -> Result<u64, WorkerBenchError> {
        let want = VNET_HDR_LEN + frame_len;
        loop {
            self.iovecs.clear();
            let ring = self.pages.len();
            self.iovecs
                .extend((0..PLAIN_SPAN).map(|i| self.pages[(self.next + i) % ring]));
            // SAFETY: every iovec is a page of `_mem`, mapped while self lives; readv writes
            // only into them.
            let n = unsafe {
                libc::readv(
                    self.queue.as_raw_fd(),
                    self.iovecs.as_ptr(),
                    self.iovecs.len() as libc::c_int,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    return Err(e.into());
                }
                if self.pending > 0 {
                    return Ok(std::mem::take(&mut self.pending));
                }
                let mut pfd = libc::pollfd {
                    fd: self.queue.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; poll writes only `revents`.
                unsafe { libc::poll(&mut pfd, 1, 100) };
                return Ok(0);
            }
            let n = n as usize;
            let first = self.iovecs[0];
            // SAFETY: the first iovec is a whole page of `_mem`, longer than the headers read.
            let start = unsafe {
                std::slice::from_raw_parts(first.iov_base.cast::<u8>(), VNET_HDR_LEN + 54)
            };
            if n != want || !is_test_frame(&start[VNET_HDR_LEN..]) {
                return Err(WorkerBenchError::BadFrame {
                    what: what.to_string(),
                    got: n,
                    want,
                });
            }
            self.next = (self.next + n.div_ceil(PAGE as usize)) % ring;
            self.pending += 1;
            if self.pending == PLAIN_CONSUMED_BATCH {
                return Ok(std::mem::take(&mut self.pending));
            }
        }
    }
}

/// Every sample of one (direction, frame size, mode), summarised.
#[derive(Clone, Debug, Serialize)]
pub struct Series {
    pub direction: Direction,
    pub frame_bytes: usize,
    pub mode: Mode,
    pub frames_per_s: Option<Summary>,
    pub gbit_per_s: Option<Summary>,
    pub cpu_ns_per_frame: Option<Summary>,
    pub samples: Vec<Sample>,
    /// Runs that produced no number, and why.
    pub failures: Vec<String>,
}

impl Series {
    pub fn new(direction: Direction, frame_bytes: usize, mode: Mode) -> Self {
        Self {
            direction,
            frame_bytes,
            mode,
            frames_per_s: None,
            gbit_per_s: None,
            cpu_ns_per_frame: None,
            samples: Vec::new(),
            failures: Vec::new(),
        }
    }

    pub fn summarise(&mut self) {
        let f: Vec<f64> = self.samples.iter().map(|s| s.frames_per_s).collect();
        let g: Vec<f64> = self.samples.iter().map(|s| s.gbit_per_s).collect();
        self.frames_per_s = Summary::of(&f);
        self.gbit_per_s = Summary::of(&g);
        let c: Vec<f64> = self.samples.iter().map(|s| s.cpu_ns_per_frame).collect();
        self.cpu_ns_per_frame = Summary::of(&c);
    }
}
