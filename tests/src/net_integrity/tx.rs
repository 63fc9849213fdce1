//! Guest -> tap. The driver posts sequence-numbered frames in chains of varied shapes (the
//! header in a descriptor of its own or not, the frame cut into 1..16 pieces at random places,
//! each piece at an odd address), TSO frames with a GSO header, and malformed chains among them
//! (a device-writable descriptor, a buffer outside RAM, a chain no longer than the header).
//! A packet socket on the tap checks every good frame arrives once, in order, byte for byte,
//! and no malformed one does; the driver checks every head comes back once with len 0.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

use devices::virtio::net::VNET_HDR_LEN;
use devices::virtio::VirtioInterrupt;
use vm_memory::GuestMemoryMmap;

use super::chains::{locate, Buffer, ChainPoster, Slot};
use super::memory::Shadow;
use super::{
    first_difference, frame, frame_seq, indirect_acked, is_ipv4, random_frame_len,
    refuse_indirect_unless, rig_spec, spans_cut, violation, IntegrityError, Rng, DATA, MAX_SLOTS,
    MEM_SIZE, QUEUE_SIZE,
};
use crate::bench::net::frames::vnet_header;
use crate::bench::net::netns::{link_counters, LinkCounters, PacketReceiver};
use crate::bench::net::rig::Rig;
use crate::bench::net::ring::{DriverRing, DESC_F_WRITE};

/// Frame slots, each room for the largest frame cut in pieces with gaps between them.
const SLOTS: usize = 48;
const SLOT_BYTES: u64 = 72 << 10;
/// Good frames sent and not yet seen on the tap.
const WINDOW: usize = 32;
const MAX_PIECES: usize = 16;
const STALL: Duration = Duration::from_secs(5);
/// The packet socket's receive buffer: room for every frame in the window many times over.
const RCVBUF: usize = 64 << 20;

#[derive(Clone, Copy, Debug)]
pub struct TxCase {
    /// The driver acks VIRTIO_RING_F_INDIRECT_DESC and posts about half its chains that way.
    pub indirect: bool,
    /// Chains posted, good and malformed.
    pub frames: usize,
    /// Percent of chains that are malformed.
    pub malformed_percent: u64,
    pub seed: u64,
}

#[derive(Debug, Default)]
pub struct TxReport {
    pub frames: usize,
    pub bytes: u64,
    pub gso_frames: usize,
    pub malformed: usize,
    pub stray: u64,
    /// Good frames sent from a chain with a buffer across the cut between guest RAM's mappings.
    pub across_cut: usize,
    pub seconds: f64,
}

#[derive(Clone, Copy, Debug)]
enum Malformed {
    WritableDescriptor,
    OutsideRam,
    HeaderOnly,
}

/// A frame sent in a good chain, not yet seen on the tap.
struct Expected {
    seq: u32,
    len: usize,
    gso: bool,
}

/// Cuts `total` bytes into 1..=MAX_PIECES pieces at random places; with `header_apart` the
/// header is a piece of its own.
fn cut(rng: &mut Rng, total: usize, header_apart: bool) -> Vec<usize> {
    let start = if header_apart { VNET_HDR_LEN } else { 0 };
    let rest = total - start;
    let pieces = rng.range(1, MAX_PIECES.min(rest));
    let mut cuts: Vec<usize> = (1..pieces).map(|_| rng.range(1, rest - 1)).collect();
    cuts.push(0);
    cuts.push(rest);
    cuts.sort_unstable();
    cuts.dedup();
    let mut lens = Vec::new();
    if header_apart {
        lens.push(VNET_HDR_LEN);
    }
    lens.extend(cuts.windows(2).map(|w| w[1] - w[0]));
    lens
}

/// The TX side of the driver: its frame slots, its bookkeeping, the packet socket that sees
/// what reaches the tap, and its checks. It drives the ring it is handed, so an RX driver can
/// run the other ring of the same device in another thread.
pub struct TxDriver {
    case: TxCase,
    rng: Rng,
    interrupt: VirtioInterrupt,
    mem: GuestMemoryMmap,
    shadow: Shadow,
    /// Where slot 0 starts.
    base: u64,
    /// Each slot's current buffers, kept to say where a changed byte is.
    slots: Vec<Slot>,
    free_slots: Vec<usize>,
    poster: ChainPoster,
    indirect: bool,
    receiver: PacketReceiver,
    expected: VecDeque<Expected>,
    dropped_seqs: HashMap<u32, Malformed>,
    report: TxReport,
    counters_before: LinkCounters,
}

impl TxDriver {
    /// Fills `region` of the rig's memory with the pattern and opens the packet socket on
    /// `tap` (before the first frame); `first_table`: the first slot number whose indirect
    /// table it may use.
    pub fn new(
        case: &TxCase,
        rig: &Rig,
        region: Range<u64>,
        first_table: usize,
        tap: &str,
    ) -> Result<Self, IntegrityError> {
        let indirect = indirect_acked(rig, case.indirect)?;
        if region.start + SLOTS as u64 * SLOT_BYTES > region.end || first_table + SLOTS > MAX_SLOTS
        {
            return Err(violation(format!(
                "{SLOTS} TX slots do not fit {region:x?} and tables from {first_table}"
            )));
        }
        let mem = rig.mem.clone();
        Ok(Self {
            case: *case,
            rng: Rng::new(case.seed),
            interrupt: rig.interrupt.clone(),
            shadow: Shadow::new(&mem, region.start, region.end)?,
            mem,
            base: region.start,
            slots: (0..SLOTS).map(|_| Slot::new(Vec::new())).collect(),
            free_slots: (0..SLOTS).collect(),
            poster: ChainPoster::new(QUEUE_SIZE, first_table),
            indirect,
            receiver: PacketReceiver::open(tap, RCVBUF)?,
            expected: VecDeque::new(),
            dropped_seqs: HashMap::new(),
            report: TxReport::default(),
            counters_before: link_counters(tap)?,
        })
    }

    /// Sends every chain of the case through `ring` and checks what reaches `tap`.
    pub fn drive(&mut self, ring: &mut DriverRing, tap: &str) -> Result<(), IntegrityError> {
        let TxDriver {
            case,
            rng,
            interrupt,
            mem,
            shadow,
            base,
            slots,
            free_slots,
            poster,
            indirect,
            receiver,
            expected,
            dropped_seqs,
            report,
            counters_before,
        } = self;
        let (case, mem, base, indirect) = (*case, &*mem, *base, *indirect);
        let mut used = Vec::new();
        let mut next = 0usize;
        let start = Instant::now();
        let mut last_progress = Instant::now();
        let state = |report: &TxReport, expected: &VecDeque<Expected>, poster: &ChainPoster| {
            format!(
                "{} good frames received, {} malformed chains, next expected seq {:?}, {} chains \
                 out at the device",
                report.frames,
                report.malformed,
                expected.front().map(|e| (e.seq, e.len)),
                poster.outstanding
            )
        };
        loop {
            if next == case.frames && poster.outstanding == 0 && expected.is_empty() {
                break;
            }
            let mut progressed = false;
            if next < case.frames && rng.chance(50) {
                for _ in 0..rng.range(1, 16) {
                    if next == case.frames || free_slots.is_empty() || expected.len() >= WINDOW {
                        break;
                    }
                    let pick = rng.range(0, free_slots.len() - 1);
                    let slot = free_slots.swap_remove(pick);
                    let seq = next as u32;
                    let bad = rng
                        .chance(case.malformed_percent)
                        .then(|| match rng.range(0, 2) {
                            0 => Malformed::WritableDescriptor,
                            1 => Malformed::OutsideRam,
                            _ => Malformed::HeaderOnly,
                        });
                    let len = random_frame_len(rng);
                    let gso = len > 1514;
                    let mut bytes = vnet_header(len, true).to_vec();
                    bytes.extend_from_slice(&[0, 0]);
                    bytes.extend(frame(seq, len));
                    if matches!(bad, Some(Malformed::HeaderOnly)) {
                        bytes.truncate(rng.range(1, VNET_HDR_LEN));
                    }
                    let header_apart = bytes.len() > VNET_HDR_LEN && rng.chance(40);
                    let mut cursor = base + slot as u64 * SLOT_BYTES;
                    let mut buffers = Vec::new();
                    let mut at = 0;
                    for piece in cut(rng, bytes.len(), header_apart) {
                        cursor += rng.range(1, 31) as u64;
                        shadow.write(mem, cursor, &bytes[at..at + piece])?;
                        buffers.push(Buffer {
                            addr: cursor,
                            len: piece as u32,
                            flags: 0,
                        });
                        cursor += piece as u64;
                        at += piece;
                    }
                    let victim = rng.range(0, buffers.len() - 1);
                    match bad {
                        Some(Malformed::WritableDescriptor) => {
                            buffers[victim].flags |= DESC_F_WRITE
                        }
                        Some(Malformed::OutsideRam) => {
                            buffers[victim].addr = MEM_SIZE as u64 + rng.range(0, 1 << 20) as u64
                        }
                        _ => {}
                    }
                    slots[slot] = Slot::new(buffers);
                    let through_table = indirect && rng.chance(50);
                    if !poster.add(ring, slot, &slots[slot].buffers, through_table)? {
                        free_slots.push(slot);
                        break;
                    }
                    next += 1;
                    match bad {
                        Some(kind) => {
                            dropped_seqs.insert(seq, kind);
                            report.malformed += 1;
                        }
                        None => {
                            let across = slots[slot]
                                .buffers
                                .iter()
                                .any(|b| spans_cut(b.addr, u64::from(b.len)));
                            report.across_cut += usize::from(across);
                            expected.push_back(Expected { seq, len, gso })
                        }
                    }
                }
                poster.publish(ring)?;
            }
            used.clear();
            ring.take_used(&mut used)?;
            for &(head, len) in &used {
                let slot = poster.used(head)?;
                if len != 0 {
                    return Err(violation(format!(
                        "TX head {head} came back with used len {len}: the device writes nothing \
                     into a TX chain"
                    )));
                }
                free_slots.push(slot);
                progressed = true;
            }
            while let Some(got) = receiver.try_recv().map_err(IntegrityError::Receive)? {
                progressed = true;
                if !is_ipv4(&got.frame) {
                    report.stray += 1;
                    continue;
                }
                let seq = frame_seq(&got.frame);
                if let Some(kind) = seq.and_then(|s| dropped_seqs.get(&s)) {
                    return Err(violation(format!(
                        "the frame of malformed chain seq {:?} ({kind:?}) reached the tap",
                        seq
                    )));
                }
                let Some(want) = expected.pop_front() else {
                    return Err(violation(format!(
                        "a frame of {} bytes (seq {seq:?}) reached the tap, none was expected",
                        got.frame.len()
                    )));
                };
                let what = format!("frame seq {} ({} B)", want.seq, want.len);
                if seq != Some(want.seq) || got.truncated {
                    return Err(violation(format!(
                    "{what}: the tap got frame seq {seq:?} of {} bytes{} instead (frames lost, \
                     reordered or mixed)",
                    got.frame.len(),
                    if got.truncated { ", truncated" } else { "" }
                )));
                }
                let sent = frame(want.seq, want.len);
                if got.frame.len() != sent.len() {
                    return Err(violation(format!(
                        "{what}: the tap got {} bytes",
                        got.frame.len()
                    )));
                }
                if let Some((at, count)) = first_difference(&got.frame, &sent) {
                    return Err(violation(format!(
                        "{what}: byte {at} is {:#04x} on the tap, the guest sent {:#04x} ({count} \
                     bytes differ)",
                        got.frame[at], sent[at]
                    )));
                }
                let want_header = vnet_header(want.len, true);
                // GSO type and segment size survive the trip; the rest the kernel may recompute.
                if got.header[1] != want_header[1] || got.header[4..6] != want_header[4..6] {
                    return Err(violation(format!(
                    "{what}: the tap's virtio-net header is {:02x?}, the guest sent {want_header:02x?}",
                    got.header
                )));
                }
                report.frames += 1;
                report.bytes += want.len as u64;
                report.gso_frames += usize::from(want.gso);
            }
            if progressed {
                last_progress = Instant::now();
            } else {
                if last_progress.elapsed() > STALL {
                    let c = link_counters(tap)?;
                    return Err(IntegrityError::Stalled {
                        secs: STALL.as_secs(),
                        state: format!(
                            "{}; the tap took {} frames and refused {}; device broken: {}",
                            state(report, expected, poster),
                            c.rx_packets - counters_before.rx_packets,
                            c.rx_dropped - counters_before.rx_dropped,
                            interrupt.needs_reset()
                        ),
                    });
                }
                if rng.chance(50) {
                    ring.wait_used(1, Duration::from_millis(1))?;
                } else {
                    receiver.wait(Duration::from_millis(1));
                }
            }
            if rng.chance(3) {
                std::thread::sleep(Duration::from_micros(rng.range(10, 300) as u64));
            }
        }
        report.seconds = start.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(100));
        if let Some(got) = receiver.try_recv().map_err(IntegrityError::Receive)? {
            if is_ipv4(&got.frame) {
                return Err(violation(format!(
                    "a frame of {} bytes (seq {:?}) reached the tap after the last one",
                    got.frame.len(),
                    frame_seq(&got.frame)
                )));
            }
        }
        used.clear();
        if ring.take_used(&mut used)? > 0 {
            return Err(violation(format!(
                "the device used {used:?} after every chain came back"
            )));
        }
        if interrupt.needs_reset() {
            return Err(IntegrityError::DeviceBroken(state(
                report, expected, poster,
            )));
        }
        Ok(())
    }

    /// Once the worker stopped: the device wrote nothing into guest memory (TX chains are
    /// only read).
    pub fn finish(self) -> Result<TxReport, IntegrityError> {
        if let Some(c) = self.shadow.changed_anywhere(&self.mem)? {
            let place = locate(&self.slots, c.addr, |_| "a TX chain the device only reads");
            return Err(violation(format!(
                "guest memory at {:#x} is {:#04x}, the driver wrote {:#04x} ({} bytes changed \
                 in all): {place}",
                c.addr, c.got, c.expected, c.count
            )));
        }
        Ok(self.report)
    }
}

/// Runs the case alone on the tap `tap` (in this thread's private namespace), checking the
/// whole of guest memory past the rings.
pub fn run(tap: &str, case: &TxCase) -> Result<TxReport, IntegrityError> {
    let refused = refuse_indirect_unless(case.indirect);
    let mut rig = Rig::new(tap, &rig_spec("integrity-tx", refused))?;
    let mut driver = TxDriver::new(case, &rig, DATA..MEM_SIZE as u64, 0, tap)?;
    driver.drive(&mut rig.tx, tap)?;
    rig.stop();
    driver.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net_integrity::MAX_FRAME;

    #[test]
    fn cuts_cover_the_frame_in_order() {
        let mut rng = Rng::new(5);
        for total in [13, 60, 1000, VNET_HDR_LEN + MAX_FRAME] {
            for apart in [false, true] {
                let lens = cut(&mut rng, total, apart);
                assert_eq!(lens.iter().sum::<usize>(), total);
                assert!(lens.iter().all(|&l| l > 0) && lens.len() <= MAX_PIECES + 1);
                if apart {
                    assert_eq!(lens[0], VNET_HDR_LEN);
                }
            }
        }
    }
}
