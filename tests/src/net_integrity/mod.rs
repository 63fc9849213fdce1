//! The virtio-net worker integrity check (`tests/tests/net_worker_integrity.rs`): the real
//! device and worker on a tap in a private network namespace, driven by a synthetic driver
//! that posts chains of varied shapes in guest memory filled with a known pattern, with
//! sequence-numbered frames on the tap side. Every frame must arrive once, in order, byte for
//! byte; every head must come back once; no byte outside what the device may write may change.

pub mod both;
pub mod chains;
pub mod memory;
pub mod rx;
pub mod tx;

use crate::bench::net::frames::{is_test_frame, tcp_frame};
use crate::bench::net::netns::NetnsError;
use crate::bench::net::rig::{Rig, RigError, RigSpec};
use crate::bench::net::ring::RingError;
use devices::virtio::{feature, F_RING_INDIRECT_DESC};

/// Ring size of both queues (Paddock's default).
pub const QUEUE_SIZE: u16 = 256;
pub const MEM_SIZE: usize = 16 << 20;
/// Guest RAM is two mappings cut here, inside the buffers of both directions (RX slots start
/// at DATA and take over a megabyte; TX slots take over three), so some chains span the cut.
const REGION_CUT: u64 = 2 << 20;

/// Whether `len` bytes at `addr` span the cut between the two mappings of guest RAM.
pub(crate) fn spans_cut(addr: u64, len: u64) -> bool {
    addr < REGION_CUT && addr + len > REGION_CUT
}
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x4000;
/// Indirect descriptor tables, one per slot of buffers.
const TABLES: u64 = 0x1_0000;
/// Entries of one indirect table (more than any chain here has).
pub const TABLE_ENTRIES: usize = 64;
/// Where the buffers start; from here to the end of memory is checked byte for byte.
pub const DATA: u64 = 0x10_0000;
/// The largest frame a tap with an MTU of 65521 takes or gives whole.
pub const MAX_FRAME: usize = 65535;
/// Offset of the TCP sequence number field, which carries the frame's sequence number.
const SEQ_OFFSET: usize = 14 + 20 + 4;
/// Where the TCP payload starts.
const PAYLOAD_OFFSET: usize = 14 + 20 + 20;

#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Rig(#[from] RigError),
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error("guest memory at {addr:#x}: {why}")]
    Memory { addr: u64, why: String },
    #[error("injecting frame seq {seq} into the tap failed: {source}")]
    Inject { seq: u32, source: std::io::Error },
    #[error("reading frames from the tap failed: {0}")]
    Receive(std::io::Error),
    #[error("the worker broke the virtio-net contract: {0}")]
    Violation(String),
    #[error("no progress for {secs} s: {state}")]
    Stalled { secs: u64, state: String },
    #[error("the worker marked the device broken (DEVICE_NEEDS_RESET) {0}")]
    DeviceBroken(String),
}

pub(crate) fn violation(what: String) -> IntegrityError {
    IntegrityError::Violation(what)
}

/// The device both directions run: one queue pair, the rings below the indirect tables.
pub(crate) fn rig_spec(name: &'static str, refused: u64) -> RigSpec {
    RigSpec {
        name,
        mem_size: MEM_SIZE,
        split_at: Some(REGION_CUT),
        queue_size: QUEUE_SIZE,
        rx_ring: RX_RING,
        tx_ring: TX_RING,
        refused,
    }
}

/// The feature bits a driver refuses to say it takes no indirect descriptors (none if it does).
pub(crate) fn refuse_indirect_unless(wanted: bool) -> u64 {
    if wanted {
        0
    } else {
        feature(F_RING_INDIRECT_DESC)
    }
}

/// Whether the rig acked indirect descriptors; an error when the case wants them and it did not.
pub(crate) fn indirect_acked(rig: &Rig, wanted: bool) -> Result<bool, IntegrityError> {
    let acked = rig.acked & feature(F_RING_INDIRECT_DESC) != 0;
    if wanted && !acked {
        return Err(violation(
            "the device does not offer VIRTIO_RING_F_INDIRECT_DESC".to_string(),
        ));
    }
    Ok(acked)
}

/// The indirect table of slot `slot`.
pub(crate) fn table_of(slot: usize) -> u64 {
    TABLES + (slot * TABLE_ENTRIES * 16) as u64
}

/// Slots that have a table of their own below DATA.
pub(crate) const MAX_SLOTS: usize = ((DATA - TABLES) as usize) / (TABLE_ENTRIES * 16);

/// xorshift64*: small, deterministic, good enough to pick sizes and shapes.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Never zero, which xorshift would keep forever.
        Self(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A frame length: many small frames, many MTU-sized ones, many big ones up to the largest.
pub fn random_frame_len(rng: &mut Rng) -> usize {
    match rng.range(0, 99) {
        0..=34 => rng.range(60, 200),
        35..=64 => rng.range(201, 1514),
        65..=69 => MAX_FRAME,
        _ => rng.range(1515, MAX_FRAME),
    }
}

/// Frame `seq` of `len` bytes: Ethernet + IPv4 + TCP headers with `seq` in the TCP sequence
/// number, then a payload that only `seq` determines.
pub fn frame(seq: u32, len: usize) -> Vec<u8> {
    let mut f = tcp_frame(len, 0);
    f[SEQ_OFFSET..SEQ_OFFSET + 4].copy_from_slice(&seq.to_be_bytes());
    Rng::new(u64::from(seq)).fill(&mut f[PAYLOAD_OFFSET..]);
    f
}

/// The sequence number of one of our frames.
pub fn frame_seq(frame: &[u8]) -> Option<u32> {
    if !is_test_frame(frame) {
        return None;
    }
    let b = frame.get(SEQ_OFFSET..SEQ_OFFSET + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Whether the frame is IPv4 (ours, or something that claims to be): anything else on the tap
/// is stray traffic of the namespace and is skipped.
pub(crate) fn is_ipv4(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&[0x08, 0x00])
}

/// Where `got` first differs from `want`, and how many bytes differ in all.
pub(crate) fn first_difference(got: &[u8], want: &[u8]) -> Option<(usize, usize)> {
    let first = got.iter().zip(want).position(|(g, w)| g != w)?;
    let count = got.iter().zip(want).filter(|(g, w)| g != w).count();
    Some((first, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_sequence_number_and_differ() {
        let a = frame(7, 100);
        let b = frame(8, 100);
        assert_eq!(a.len(), 100);
        assert_eq!(frame_seq(&a), Some(7));
        assert_eq!(frame_seq(&b), Some(8));
        assert_ne!(a[PAYLOAD_OFFSET..], b[PAYLOAD_OFFSET..]);
        assert_eq!(frame(7, 100), a);
        assert_eq!(first_difference(&a, &b).map(|d| d.0), Some(SEQ_OFFSET + 3));
        assert_eq!(first_difference(&a, &a), None);
    }

    #[test]
    fn rng_ranges_are_inclusive_and_cover_both_ends() {
        let mut rng = Rng::new(1);
        let seen: Vec<usize> = (0..1000).map(|_| rng.range(3, 5)).collect();
        assert!(seen.iter().all(|v| (3..=5).contains(v)));
        assert!(seen.contains(&3) && seen.contains(&5));
        assert!((0..1000)
            .map(|_| random_frame_len(&mut rng))
            .all(|l| (60..=MAX_FRAME).contains(&l)));
    }
}
