//! Descriptor chains as host I/O vectors: the guest buffers of one chain, checked, ready for
//! `readv`/`writev` straight into or out of guest memory.

use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Most I/O vectors one `readv`/`writev` takes (Linux UIO_MAXIOV).
pub const MAX_IOVECS: usize = 1024;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("descriptor chain {head} does not end: it loops, points past the descriptor table or is longer than the queue")]
    Unterminated { head: u16 },
    #[error("descriptor chain {head} has more than {MAX_IOVECS} buffers")]
    TooManyBuffers { head: u16 },
    #[error("descriptor chain {head} has a {found} buffer where the device expects only {expected} ones")]
    WrongDirection {
        head: u16,
        found: &'static str,
        expected: &'static str,
    },
    #[error("descriptor chain {head}: buffer {addr:#x}+{len:#x} is not in guest RAM")]
    OutOfRange { head: u16, addr: u64, len: u32 },
    #[error("descriptor chain {head} has no bytes to use")]
    Empty { head: u16 },
}

/// One piece of a buffer: where it is in the guest, and the host pointer for the syscall.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub guest: GuestAddress,
    pub len: usize,
    host: *mut u8,
}

// SAFETY: a Segment is a pointer into guest memory that stays mapped while the device is active
// (the GuestMemoryMmap handed over at activation keeps its regions alive); it carries no
// thread-affine state.
unsafe impl Send for Segment {}

/// The buffers of one descriptor chain, in order.
#[derive(Debug, Default)]
pub struct ChainBuffers {
    pub head: u16,
    pub segments: Vec<Segment>,
    pub len: usize,
}

impl ChainBuffers {
    /// Appends the segments as `iovec`s to `out`.
    pub fn push_iovecs(&self, out: &mut Vec<libc::iovec>) {
        out.extend(self.segments.iter().map(|s| libc::iovec {
            iov_base: s.host.cast(),
            iov_len: s.len,
        }));
    }

    /// Writes `bytes` at logical offset `at` of the chain's buffers (e.g. a header field).
    /// Returns false when the chain is too short.
    pub fn write_at(&self, mem: &GuestMemoryMmap, mut at: usize, mut bytes: &[u8]) -> bool {
        use vm_memory::Bytes;
        for seg in &self.segments {
            if bytes.is_empty() {
                break;
            }
            if at >= seg.len {
                at -= seg.len;
                continue;
            }
            let n = bytes.len().min(seg.len - at);
            if mem
                .write_slice(&bytes[..n], seg.guest.unchecked_add(at as u64))
                .is_err()
            {
                return false;
            }
            bytes = &bytes[n..];
            at = 0;
        }
        bytes.is_empty()
    }
}

/// Which buffers a device wants from a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The device reads (TX, requests): every descriptor must be device-readable.
    Readable,
    /// The device writes (RX): every descriptor must be device-writable.
    Writable,
}

/// Walks `chain` and maps every buffer. Zero-length descriptors are skipped; a chain that loops,
/// runs off the table, mixes in the wrong direction or points outside RAM is an error, so the
/// caller can drop the request instead of touching anything.
pub fn map_chain<M>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
    direction: Direction,
) -> Result<ChainBuffers, ChainError>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    let mut buffers = ChainBuffers::default();
    map_chain_into(mem, chain, direction, &mut buffers)?;
    Ok(buffers)
}

/// [`map_chain`] into `buffers`, whose previous contents are replaced: a device that maps a
/// chain per frame reuses one allocation instead of making one per frame.
pub fn map_chain_into<M>(
    mem: &GuestMemoryMmap,
    mut chain: DescriptorChain<M>,
    direction: Direction,
    buffers: &mut ChainBuffers,
) -> Result<(), ChainError>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    let head = chain.head_index();
    buffers.head = head;
    buffers.segments.clear();
    buffers.len = 0;
    let mut last: Option<Descriptor> = None;
    for desc in chain.by_ref() {
        last = Some(desc);
        let writable = desc.is_write_only();
        if writable != (direction == Direction::Writable) {
            let (found, expected) = if writable {
                ("device-writable", "device-readable")
            } else {
                ("device-readable", "device-writable")
            };
            return Err(ChainError::WrongDirection {
                head,
                found,
                expected,
            });
        }
        if desc.len() == 0 {
            continue;
        }
        let out_of_range = ChainError::OutOfRange {
            head,
            addr: desc.addr().0,
            len: desc.len(),
        };
        let mut offset = 0u64;
        for slice in GuestMemoryBackend::get_slices(mem, desc.addr(), desc.len() as usize) {
            let slice = slice.map_err(|_| out_of_range.clone())?;
            if buffers.segments.len() == MAX_IOVECS {
                return Err(ChainError::TooManyBuffers { head });
            }
            let guest = desc.addr().unchecked_add(offset);
            offset += slice.len() as u64;
            buffers.segments.push(Segment {
                guest,
                len: slice.len(),
                host: slice.ptr_guard_mut().as_ptr(),
            });
            buffers.len += slice.len();
        }
    }
    // The iterator stops silently on a loop (its budget of queue-size descriptors runs out),
    // on a next index past the table and on an unreadable descriptor: in each case the last
    // descriptor it gave still asks for a next one.
    match last {
        None => Err(ChainError::Unterminated { head }),
        Some(desc) if desc.has_next() => Err(ChainError::Unterminated { head }),
        Some(_) if buffers.len == 0 => Err(ChainError::Empty { head }),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Bytes;

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x10_0000), 0x10_0000),
        ])
        .unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    fn first_chain<'a>(
        vq: &MockSplitQueue<'a, GuestMemoryMmap>,
        m: &'a GuestMemoryMmap,
    ) -> DescriptorChain<&'a GuestMemoryMmap> {
        use virtio_queue::{Queue, QueueOwnedT};
        let mut q: Queue = vq.create_queue().unwrap();
        q.iter(m).unwrap().next().unwrap()
    }

    #[test]
    fn readable_chain_maps_across_regions() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        // The second buffer straddles the boundary between the two regions.
        vq.add_desc_chains(
            &[desc(0x8000, 12, F_NEXT, 1), desc(0xf_fff0, 0x20, 0, 0)],
            0,
        )
        .unwrap();
        m.write_slice(&[7u8; 0x20], GuestAddress(0xf_fff0)).unwrap();
        let buffers = map_chain(&m, first_chain(&vq, &m), Direction::Readable).unwrap();
        assert_eq!(buffers.len, 12 + 0x20);
        assert_eq!(buffers.segments.len(), 3);
        assert_eq!(buffers.segments[2].guest, GuestAddress(0x10_0000));
        assert_eq!(buffers.segments[2].len, 0x10);
        let mut iov = Vec::new();
        buffers.push_iovecs(&mut iov);
        assert_eq!(iov.len(), 3);
        assert!(buffers.write_at(&m, 12 + 0xf, &[1, 2]));
        let mut b = [0u8; 2];
        m.read_slice(&mut b, GuestAddress(0xf_ffff)).unwrap();
        assert_eq!(b, [1, 2]);
        assert!(!buffers.write_at(&m, 12 + 0x1f, &[1, 2]), "past the end");
    }

    #[test]
    fn malformed_chains_are_errors() {
        let m = mem();
        let cases: Vec<(Vec<RawDescriptor>, Direction, &str)> = vec![
            // 0 -> 1 -> 0 ...
            (
                vec![desc(0x8000, 16, F_NEXT, 1), desc(0x9000, 16, F_NEXT, 0)],
                Direction::Readable,
                "loop",
            ),
            (
                vec![desc(0x8000, 16, F_NEXT, 200)],
                Direction::Readable,
                "next past the table",
            ),
            (
                vec![desc(0x4000_0000, 16, 0, 0)],
                Direction::Readable,
                "out of RAM",
            ),
            (
                vec![desc(0x1f_fff0, 0x20, 0, 0)],
                Direction::Readable,
                "runs off the end of RAM",
            ),
            (
                vec![desc(0x8000, 0, 0, 0)],
                Direction::Readable,
                "zero length",
            ),
            (
                vec![desc(0x8000, 16, F_NEXT, 1), desc(0x9000, 16, F_WRITE, 0)],
                Direction::Readable,
                "writable in a TX chain",
            ),
            (
                vec![desc(0x8000, 16, 0, 0)],
                Direction::Writable,
                "readable in an RX chain",
            ),
        ];
        for (descs, direction, what) in cases {
            let vq = MockSplitQueue::new(&m, 16);
            vq.add_desc_chains(&descs, 0).unwrap();
            let got = map_chain(&m, first_chain(&vq, &m), direction);
            assert!(got.is_err(), "{what}: {got:?}");
        }
    }

    #[test]
    fn too_many_buffers() {
        let m = mem();
        // A legal chain (no loop) of 1025 descriptors in a 2048-entry queue.
        let vq = MockSplitQueue::new(&m, 2048);
        let descs: Vec<_> = (0..1025u16)
            .map(|i| desc(0x10_0000 + u64::from(i) * 16, 16, F_NEXT, i + 1))
            .chain(std::iter::once(desc(0x18_0000, 16, 0, 0)))
            .collect();
        vq.add_desc_chains(&descs, 0).unwrap();
        assert_eq!(
            map_chain(&m, first_chain(&vq, &m), Direction::Readable).unwrap_err(),
            ChainError::TooManyBuffers { head: 0 }
        );
    }
}
