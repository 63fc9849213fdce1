//! Tap -> guest. An injector (an AF_PACKET socket on the tap) sends sequence-numbered frames of
//! random sizes; the driver posts RX chains of varied shapes at irregular moments (sometimes
//! starving the ring for a while, sometimes refilling a few chains, sometimes all), takes the
//! used entries, and checks every frame: num_buffers, used lengths, header and bytes, order.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use devices::virtio::net::device::F_MRG_RXBUF;
use devices::virtio::net::VNET_HDR_LEN;
use devices::virtio::{feature, VirtioInterrupt};
use vm_memory::GuestMemoryMmap;

use super::chains::{locate, Buffer, ChainPoster, Slot};
use super::memory::Shadow;
use super::{
    first_difference, frame, frame_seq, indirect_acked, is_ipv4, random_frame_len,
    refuse_indirect_unless, rig_spec, spans_cut, violation, IntegrityError, Rng, DATA, MAX_SLOTS,
    MEM_SIZE, QUEUE_SIZE,
};
use crate::bench::net::frames::vnet_header;
use crate::bench::net::netns::{link_counters, PacketInjector};
use crate::bench::net::rig::Rig;
use crate::bench::net::ring::{DriverRing, DESC_F_WRITE};

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
    /// Frames received in a chain with a buffer across the cut between guest RAM's mappings.
    pub across_cut: u64,
    pub kicks: u64,
    pub interrupts: u64,
    pub seconds: f64,
}

/// Lays out the RX slots: buffers of 100..4096 bytes in chains of 1..3 (sometimes with a first
/// buffer shorter than the header) with mergeable buffers; chains big enough for any frame,
/// of 1500..9000-byte buffers (sometimes with the header alone first, as Linux's big-packet
/// mode posts them) without. Every buffer starts at a random, mostly odd, address after a gap.
fn lay_out(
    rng: &mut Rng,
    mergeable: bool,
    region: &Range<u64>,
) -> Result<Vec<Slot>, IntegrityError> {
    let count = if mergeable { 400 } else { 40 };
    let mut cursor = region.start;
    let mut slots = Vec::with_capacity(count);
    for _ in 0..count {
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
    if cursor > region.end {
        return Err(violation(format!(
            "the RX slots need {:#x}..{cursor:#x}, more than {region:x?}",
            region.start
        )));
    }
    Ok(slots)
}

/// A used entry not yet part of a checked frame.
struct Used {
    head: u16,
    len: u32,
    slot: usize,
}

/// The RX side of the driver: its buffers, its bookkeeping and its checks. It drives the ring
/// it is handed, so a TX driver can run the other ring of the same device in another thread.
pub struct RxDriver {
    case: RxCase,
    rng: Rng,
    interrupt: VirtioInterrupt,
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
    injected: usize,
    dropped_before: u64,
}

impl RxDriver {
    /// Posts up to `want` free slots, each at a random place in the free list.
    fn post(&mut self, ring: &mut DriverRing, want: usize) -> Result<(), IntegrityError> {
        for _ in 0..want {
            if self.free_slots.is_empty() {
                break;
            }
            let pick = self.rng.range(0, self.free_slots.len() - 1);
            let slot = self.free_slots.swap_remove(pick);
            let indirect = self.indirect && self.rng.chance(50);
            let buffers = &self.slots[slot].buffers;
            if !self.poster.add(ring, slot, buffers, indirect)? {
                self.free_slots.push(slot);
                break;
            }
        }
        self.poster.publish(ring)?;
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
        let slots = &self.slots;
        if entries.iter().any(|e| {
            slots[e.slot]
                .buffers
                .iter()
                .any(|b| spans_cut(b.addr, u64::from(b.len)))
        }) {
            self.report.across_cut += 1;
        }
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

    fn state(&self) -> String {
        format!(
            "{} of {} frames received, {} injected, next expected {:?}; {} used entries \
             waiting for the rest of their frame; {} chains out at the device, {} free slots; \
             device broken: {}",
            self.report.frames,
            self.case.frames,
            self.injected,
            self.sent.front(),
            self.pending.len(),
            self.poster.outstanding,
            self.free_slots.len(),
            self.interrupt.needs_reset()
        )
    }

    /// Lays out the buffers in `region` of the rig's memory (filled with the pattern) and posts
    /// none yet; `first_table`: the first slot number whose indirect table it may use.
    pub fn new(
        case: &RxCase,
        rig: &Rig,
        region: Range<u64>,
        first_table: usize,
        tap: &str,
    ) -> Result<Self, IntegrityError> {
        let indirect = indirect_acked(rig, case.indirect)?;
        let mem = rig.mem.clone();
        let shadow = Shadow::new(&mem, region.start, region.end)?;
        let mut rng = Rng::new(case.seed);
        let slots = lay_out(&mut rng, case.mergeable, &region)?;
        if first_table + slots.len() > MAX_SLOTS {
            return Err(violation(format!(
                "{} RX slots from table {first_table} exceed the {MAX_SLOTS} indirect tables",
                slots.len()
            )));
        }
        Ok(Self {
            case: *case,
            rng,
            interrupt: rig.interrupt.clone(),
            free_slots: (0..slots.len()).collect(),
            slots,
            mem,
            shadow,
            poster: ChainPoster::new(QUEUE_SIZE, first_table),
            indirect,
            sent: VecDeque::new(),
            pending: VecDeque::new(),
            report: RxReport::default(),
            injected: 0,
            dropped_before: link_counters(tap)?.tx_dropped,
        })
    }

    /// Injects every frame of the case into `tap` and receives it through `ring`, then checks
    /// the device uses nothing more once the tap is quiet.
    pub fn drive(&mut self, ring: &mut DriverRing, tap: &str) -> Result<(), IntegrityError> {
        let injector = PacketInjector::open(tap)?;
        let start = Instant::now();
        let mut starve = 0usize;
        let mut used = Vec::new();
        let mut last_progress = Instant::now();
        let frames = self.case.frames;
        self.post(ring, 8)?;
        while self.report.frames < frames {
            // Inject a few frames, within the window.
            if self.injected < frames && self.rng.chance(40) {
                let room = WINDOW.saturating_sub(self.sent.len());
                let n = self.rng.range(1, 24).min(room).min(frames - self.injected);
                for _ in 0..n {
                    let seq = self.injected as u32;
                    let len = random_frame_len(&mut self.rng);
                    let bytes = frame(seq, len);
                    match injector.send(&vnet_header(len, false), &bytes, 1) {
                        Ok(1) => {
                            self.sent.push_back((seq, len));
                            self.injected += 1;
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
                match self.rng.range(0, 99) {
                    0..=3 => {
                        starve = self.rng.range(5, 60);
                        self.report.starve_phases += 1;
                    }
                    4..=39 => {}
                    40..=79 => {
                        let n = self.rng.range(1, 4);
                        self.post(ring, n)?;
                    }
                    _ => self.post(ring, usize::MAX)?,
                }
            }
            used.clear();
            ring.take_used(&mut used)?;
            for &(head, len) in &used {
                let slot = self.poster.used(head)?;
                self.pending.push_back(Used { head, len, slot });
            }
            while self.take_frame()? {}
            if used.is_empty() {
                if last_progress.elapsed() > STALL {
                    return Err(IntegrityError::Stalled {
                        secs: STALL.as_secs(),
                        state: self.state(),
                    });
                }
                if self.rng.chance(50) {
                    ring.wait_used(1, Duration::from_millis(1))?;
                }
            } else {
                last_progress = Instant::now();
            }
            if self.rng.chance(5) {
                std::thread::sleep(Duration::from_micros(self.rng.range(10, 300) as u64));
            }
        }
        self.report.seconds = start.elapsed().as_secs_f64();
        // The tap is quiet now: the worker may not use anything more.
        std::thread::sleep(Duration::from_millis(100));
        used.clear();
        if ring.take_used(&mut used)? > 0 || !self.pending.is_empty() {
            return Err(violation(format!(
                "after the last frame the device used {:?} more (head, len), {} entries were \
                 left over",
                used,
                self.pending.len()
            )));
        }
        if self.interrupt.needs_reset() {
            return Err(IntegrityError::DeviceBroken(self.state()));
        }
        let dropped = link_counters(tap)?.tx_dropped - self.dropped_before;
        if dropped > 0 {
            return Err(violation(format!(
                "the tap dropped {dropped} frames though the injector kept at most {WINDOW} queued"
            )));
        }
        Ok(())
    }

    /// Once the worker stopped: nothing changed outside what the device used, the buffers it
    /// still held included.
    pub fn finish(mut self, ring: &DriverRing) -> Result<RxReport, IntegrityError> {
        self.report.kicks = ring.kicks;
        self.report.interrupts = ring.interrupts;
        if let Some(c) = self.shadow.changed_anywhere(&self.mem)? {
            let poster = &self.poster;
            let place = locate(&self.slots, c.addr, |s| {
                if poster.holds(s) {
                    "posted and not used"
                } else {
                    "free (restored after its frame)"
                }
            });
            return Err(violation(format!(
                "guest memory at {:#x} is {:#04x}, the driver left {:#04x} there ({} bytes \
                 changed in all): {place}",
                c.addr, c.got, c.expected, c.count
            )));
        }
        Ok(self.report)
    }
}

/// Runs the case alone on the tap `tap` (in this thread's private namespace, no other reader),
/// checking the whole of guest memory past the rings.
pub fn run(tap: &str, case: &RxCase) -> Result<RxReport, IntegrityError> {
    let mut rig = Rig::new(tap, &rig_spec("integrity-rx", refused(case)))?;
    let mut driver = RxDriver::new(case, &rig, DATA..MEM_SIZE as u64, 0, tap)?;
    driver.drive(&mut rig.rx, tap)?;
    rig.stop();
    driver.finish(&rig.rx)
}

/// Features the driver of `case` does not ack.
pub fn refused(case: &RxCase) -> u64 {
    let mut refused = refuse_indirect_unless(case.indirect);
    if !case.mergeable {
        refused |= feature(F_MRG_RXBUF);
    }
    refused
}
