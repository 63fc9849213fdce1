//! Tap -> guest. An injector (an AF_PACKET socket on the tap) sends sequence-numbered frames of
//! random sizes; the driver posts RX chains of varied shapes at irregular moments (sometimes
//! starving the ring for a while, sometimes refilling a few chains, sometimes all), takes the
//! used entries, and checks every frame: num_buffers, used lengths, header and bytes, order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use devices::virtio::net::device::F_MRG_RXBUF;
use devices::virtio::net::VNET_HDR_LEN;
use devices::virtio::{feature, F_RING_INDIRECT_DESC};
use vm_memory::GuestMemoryMmap;

use super::chains::{locate, Buffer, ChainPoster, Slot};
use super::memory::Shadow;
use super::{
    first_difference, frame, frame_seq, is_ipv4, random_frame_len, rig_spec, violation,
    IntegrityError, Rng, DATA, MAX_SLOTS, MEM_SIZE, QUEUE_SIZE,
};
use crate::bench::net::frames::vnet_header;
use crate::bench::net::netns::{link_counters, PacketInjector};
use crate::bench::net::rig::Rig;
use crate::bench::net::ring::DESC_F_WRITE;

/// Frames injected and not yet seen by the driver: fewer than the tap queue's 500, so the tap
/// never drops one.
const WINDOW: usize = 128;
/// Bytes a chain must take without mergeable buffers: header plus the largest GSO frame.
const BIG_CHAIN: usize = VNET_HDR_LEN + 65550;
const STALL: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
pub struct RxCase {
    /// The driver acks VIRTIO_NET_F_MRG_RXBUF; without it each chain takes a whole frame.
    pub mergeable: bool,
    /// The driver acks VIRTIO_RING_F_INDIRECT_DESC and posts about half its chains that way.
    pub indirect: bool,
    pub frames: usize,
    pub seed: u64,
}

#[derive(Debug, Default)]
pub struct RxReport {
    pub frames: usize,
    pub bytes: u64,
    pub used_entries: u64,
    pub max_num_buffers: u16,
    /// Times the driver stopped posting for a while.
    pub starve_phases: u64,
    /// Frames that were not IPv4 (the namespace's own traffic), skipped.
    pub stray: u64,
    pub kicks: u64,
    pub interrupts: u64,
    pub seconds: f64,
}

/// Lays out the RX slots: buffers of 100..4096 bytes in chains of 1..3 (sometimes with a first
/// buffer shorter than the header) with mergeable buffers; chains big enough for any frame,
/// of 1500..9000-byte buffers (sometimes with the header alone first, as Linux's big-packet
/// mode posts them) without. Every buffer starts at a random, mostly odd, address after a gap.
fn lay_out(rng: &mut Rng, mergeable: bool) -> Vec<Slot> {
    let count = if mergeable { 400 } else { 40 };
    let mut cursor = DATA;
    let mut slots = Vec::with_capacity(count);
    for _ in 0..count.min(MAX_SLOTS) {
        let mut lens = Vec::new();
        if mergeable {
            let n = match rng.range(0, 99) {
                0..=59 => 1,
                60..=84 => 2,
                _ => 3,
            };
            for i in 0..n {
                let short_first = i == 0 && n > 1 && rng.chance(20);
                lens.push(if short_first {
                    rng.range(1, VNET_HDR_LEN - 1)
                } else {
                    rng.range(100, 4096)
                });
            }
        } else {
            if rng.chance(30) {
                lens.push(VNET_HDR_LEN);
            }
            while lens.iter().sum::<usize>() < BIG_CHAIN {
                lens.push(rng.range(1500, 9000));
            }
        }
        let buffers = lens
            .into_iter()
            .map(|len| {
                cursor += rng.range(1, 64) as u64;
                let b = Buffer {
                    addr: cursor,
                    len: len as u32,
                    flags: DESC_F_WRITE,
                };
                cursor += len as u64;
                b
            })
            .collect();
        slots.push(Slot::new(buffers));
    }
    assert!(cursor < MEM_SIZE as u64, "RX slots overrun guest memory");
    slots
}

/// A used entry not yet part of a checked frame.
struct Used {
    head: u16,
    len: u32,
    slot: usize,
}

struct Driver {
    case: RxCase,
    rng: Rng,
    rig: Rig,
    mem: GuestMemoryMmap,
    shadow: Shadow,
    slots: Vec<Slot>,
    free_slots: Vec<usize>,
    poster: ChainPoster,
    indirect: bool,
    /// Frames injected and not yet received: (seq, length).
    sent: VecDeque<(u32, usize)>,
    pending: VecDeque<Used>,
    report: RxReport,
}

impl Driver {
    /// Posts up to `want` free slots, each at a random place in the free list.
    fn post(&mut self, want: usize) -> Result<(), IntegrityError> {
        for _ in 0..want {
            if self.free_slots.is_empty() {
                break;
            }
            let pick = self.rng.range(0, self.free_slots.len() - 1);
            let slot = self.free_slots.swap_remove(pick);
            let indirect = self.indirect && self.rng.chance(50);
            let buffers = &self.slots[slot].buffers;
            if !self.poster.add(&self.rig.rx, slot, buffers, indirect)? {
                self.free_slots.push(slot);
                break;
            }
        }
        self.poster.publish(&mut self.rig.rx)?;
        Ok(())
    }

    /// Checks the next complete frame among the used entries, if there is one, and gives its
    /// buffers back to the free slots (restored to the background pattern). Ok(false): none
    /// complete yet.
    fn take_frame(&mut self) -> Result<bool, IntegrityError> {
        let Some(first) = self.pending.front() else {
            return Ok(false);
        };
        let (head, slot) = (first.head, first.slot);
        if (first.len as usize) < VNET_HDR_LEN {
            return Err(violation(format!(
                "head {head}: used len {} is shorter than the virtio-net header",
                first.len
            )));
        }
        let header = self.slots[slot].gather(&self.mem, VNET_HDR_LEN)?;
        let num_buffers = u16::from_le_bytes([header[10], header[11]]);
        if num_buffers == 0 || num_buffers > QUEUE_SIZE {
            return Err(violation(format!(
                "head {head}: num_buffers is {num_buffers} (next frame expected: {:?})",
                self.sent.front()
            )));
        }
        if !self.case.mergeable && num_buffers != 1 {
            return Err(violation(format!(
                "head {head}: num_buffers is {num_buffers} without VIRTIO_NET_F_MRG_RXBUF, where \
                 a frame must land in one chain (next frame expected: {:?})",
                self.sent.front()
            )));
        }
        if self.pending.len() < usize::from(num_buffers) {
            return Ok(false);
        }
        let entries: Vec<Used> = self.pending.drain(..usize::from(num_buffers)).collect();
        let mut bytes = Vec::new();
        for e in &entries {
            let slot = &self.slots[e.slot];
            if e.len as usize > slot.capacity {
                return Err(violation(format!(
                    "head {}: used len {} exceeds the {} bytes its chain has",
                    e.head, e.len, slot.capacity
                )));
            }
            bytes.extend(slot.gather(&self.mem, e.len as usize)?);
            // The device wrote exactly `len` bytes from the chain's start, nothing past them.
            for (addr, len) in slot.beyond(e.len as usize) {
                if let Some(c) = self.shadow.changed(&self.mem, addr, len)? {
                    return Err(violation(format!(
                        "head {} (used len {}): byte at {:#x}, past the used length, is {:#04x}, \
                         was {:#04x} ({} bytes changed there); frame expected: {:?}",
                        e.head,
                        e.len,
                        c.addr,
                        c.got,
                        c.expected,
                        c.count,
                        self.sent.front()
                    )));
                }
            }
        }
        let heads: Vec<u16> = entries.iter().map(|e| e.head).collect();
        let lens: Vec<u32> = entries.iter().map(|e| e.len).collect();
        let got_frame = &bytes[VNET_HDR_LEN.min(bytes.len())..];
        if is_ipv4(got_frame) || got_frame.len() < 14 {
            self.check_frame(&bytes, &heads, &lens)?;
        } else {
            self.report.stray += 1;
        }
        self.report.used_entries += entries.len() as u64;
        self.report.max_num_buffers = self.report.max_num_buffers.max(num_buffers);
        for e in entries {
            for b in &self.slots[e.slot].buffers {
                self.shadow.restore(&self.mem, b.addr, b.len as usize)?;
            }
            self.free_slots.push(e.slot);
        }
        Ok(true)
    }

    /// `bytes`: header and frame as the used entries `heads` (used lens `lens`) put them.
    fn check_frame(
        &mut self,
        bytes: &[u8],
        heads: &[u16],
        lens: &[u32],
    ) -> Result<(), IntegrityError> {
        let got = &bytes[VNET_HDR_LEN..];
        let Some((seq, len)) = self.sent.pop_front() else {
            return Err(violation(format!(
                "a frame of {} bytes (seq {:?}) arrived in heads {heads:?} after every injected \
                 frame was received",
                got.len(),
                frame_seq(got)
            )));
        };
        let what = format!("frame seq {seq} ({len} B) in heads {heads:?}, used lens {lens:?}");
        if frame_seq(got) != Some(seq) {
            return Err(violation(format!(
                "{what}: got frame seq {:?} of {} bytes instead (frames lost, reordered or mixed)",
                frame_seq(got),
                got.len()
            )));
        }
        if got.len() != len {
            return Err(violation(format!(
                "{what}: the used lens add up to {} bytes, expected {} (header + frame)",
                bytes.len(),
                VNET_HDR_LEN + len
            )));
        }
        let want_header = vnet_header(len, false);
        if bytes[..10] != want_header {
            return Err(violation(format!(
                "{what}: virtio-net header {:02x?}, expected {want_header:02x?}",
                &bytes[..10]
            )));
        }
        let want = frame(seq, len);
        if let Some((at, count)) = first_difference(got, &want) {
            return Err(violation(format!(
                "{what}: byte {at} of the frame is {:#04x}, sent {:#04x} ({count} bytes differ)",
                got[at], want[at]
            )));
        }
        self.report.frames += 1;
        self.report.bytes += len as u64;
        Ok(())
    }

    fn state(&self, injected: usize) -> String {
        format!(
            "{} of {} frames received, {injected} injected, next expected {:?}; {} used entries \
             waiting for the rest of their frame; {} chains out at the device, {} free slots; \
             device broken: {}",
            self.report.frames,
            self.case.frames,
            self.sent.front(),
            self.pending.len(),
            self.poster.outstanding,
            self.free_slots.len(),
            self.rig.broken()
        )
    }
}

/// Runs the case on the tap `tap` (in this thread's private namespace, no other reader).
pub fn run(tap: &str, case: &RxCase) -> Result<RxReport, IntegrityError> {
    let mut refused = 0;
    if !case.mergeable {
        refused |= feature(F_MRG_RXBUF);
    }
    if !case.indirect {
        refused |= feature(F_RING_INDIRECT_DESC);
    }
    let rig = Rig::new(tap, &rig_spec("integrity-rx", refused))?;
    let indirect = rig.acked & feature(F_RING_INDIRECT_DESC) != 0;
    if case.indirect && !indirect {
        return Err(violation(
            "the device does not offer VIRTIO_RING_F_INDIRECT_DESC".to_string(),
        ));
    }
    let mem = rig.mem.clone();
    let shadow = Shadow::new(&mem, DATA, MEM_SIZE as u64)?;
    let mut rng = Rng::new(case.seed);
    let slots = lay_out(&mut rng, case.mergeable);
    let injector = PacketInjector::open(tap)?;
    let counters_before = link_counters(tap)?;
    let mut d = Driver {
        case: *case,
        rng,
        free_slots: (0..slots.len()).collect(),
        slots,
        rig,
        mem,
        shadow,
        poster: ChainPoster::new(QUEUE_SIZE),
        indirect,
        sent: VecDeque::new(),
        pending: VecDeque::new(),
        report: RxReport::default(),
    };
    let start = Instant::now();
    let mut injected = 0usize;
    let mut starve = 0usize;
    let mut used = Vec::new();
    let mut last_progress = Instant::now();
    d.post(8)?;
    while d.report.frames < case.frames {
        // Inject a few frames, within the window.
        if injected < case.frames && d.rng.chance(40) {
            let room = WINDOW.saturating_sub(d.sent.len());
            let n = d.rng.range(1, 24).min(room).min(case.frames - injected);
            for _ in 0..n {
                let seq = injected as u32;
                let len = random_frame_len(&mut d.rng);
                let bytes = frame(seq, len);
                match injector.send(&vnet_header(len, false), &bytes, 1) {
                    Ok(1) => {
                        d.sent.push_back((seq, len));
                        injected += 1;
                    }
                    Ok(_) => break,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(source) => return Err(IntegrityError::Inject { seq, source }),
                }
            }
        }
        // Repost: not at all for a while, a few chains, or everything free.
        if starve > 0 {
            starve -= 1;
        } else {
            match d.rng.range(0, 99) {
                0..=3 => {
                    starve = d.rng.range(5, 60);
                    d.report.starve_phases += 1;
                }
                4..=39 => {}
                40..=79 => {
                    let n = d.rng.range(1, 4);
                    d.post(n)?;
                }
                _ => d.post(usize::MAX)?,
            }
        }
        used.clear();
        d.rig.rx.take_used(&mut used)?;
        for &(head, len) in &used {
            let slot = d.poster.used(head)?;
            d.pending.push_back(Used { head, len, slot });
        }
        while d.take_frame()? {}
        if used.is_empty() {
            if last_progress.elapsed() > STALL {
                return Err(IntegrityError::Stalled {
                    secs: STALL.as_secs(),
                    state: d.state(injected),
                });
            }
            if d.rng.chance(50) {
                d.rig.rx.wait_used(1, Duration::from_millis(1))?;
            }
        } else {
            last_progress = Instant::now();
        }
        if d.rng.chance(5) {
            std::thread::sleep(Duration::from_micros(d.rng.range(10, 300) as u64));
        }
    }
    d.report.seconds = start.elapsed().as_secs_f64();
    // The tap is quiet now: the worker may not use anything more, nor touch the buffers it
    // still holds.
    std::thread::sleep(Duration::from_millis(100));
    used.clear();
    if d.rig.rx.take_used(&mut used)? > 0 || !d.pending.is_empty() {
        return Err(violation(format!(
            "after the last frame the device used {:?} more (head, len), {} entries were left \
             over",
            used,
            d.pending.len()
        )));
    }
    if d.rig.broken() {
        return Err(IntegrityError::DeviceBroken(d.state(injected)));
    }
    let counters = link_counters(tap)?;
    let dropped = counters.tx_dropped - counters_before.tx_dropped;
    d.rig.stop();
    d.report.kicks = d.rig.rx.kicks;
    d.report.interrupts = d.rig.rx.interrupts;
    if let Some(c) = d.shadow.changed_anywhere(&d.mem)? {
        let poster = &d.poster;
        let place = locate(&d.slots, c.addr, |s| {
            if poster.holds(s) {
                "posted and not used"
            } else {
                "free (restored after its frame)"
            }
        });
        return Err(violation(format!(
            "guest memory at {:#x} is {:#04x}, the driver left {:#04x} there ({} bytes changed \
             in all): {place}",
            c.addr, c.got, c.expected, c.count
        )));
    }
    if dropped > 0 {
        return Err(violation(format!(
            "the tap dropped {dropped} frames though the injector kept at most {WINDOW} queued"
        )));
    }
    Ok(d.report)
}
