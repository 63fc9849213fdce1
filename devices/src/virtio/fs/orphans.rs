//! Requests a vanished backend left behind: once the backend's socket hangs up, Paddock takes the
//! rings back and answers every FUSE request on them with EIO, so the guest's calls on that
//! mount fail instead of waiting forever.
//!
//! Where to resume is read from the used ring: the backends Paddock runs with (virtiofsd,
//! `paddock virtiofsd`) complete each queue's requests in order, so every available entry past
//! the used index is one the backend never answered.

use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// `struct fuse_out_header`: len, error, unique.
const OUT_HEADER_LEN: u32 = 16;
/// Offset of `unique` in `struct fuse_in_header` (len u32, opcode u32, unique u64, ...).
const IN_UNIQUE_OFFSET: u64 = 8;

/// Points the queue's next available and next used entries at the used ring's index.
pub fn adopt(queue: &mut Queue, mem: &GuestMemoryMmap) {
    match queue.used_idx(mem, Ordering::Acquire) {
        Ok(used) => {
            queue.set_next_avail(used.0);
            queue.set_next_used(used.0);
        }
        Err(e) => log::warn!("virtio-fs: cannot read the used index to take the ring back: {e}"),
    }
}

/// Answers every available request with a FUSE error reply (EIO); returns how many. Leaves the
/// queue asking for the guest's next kick (with EVENT_IDX the backend's last avail_event would
/// otherwise keep the guest from kicking again).
pub fn fail_requests(queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<usize, String> {
    let mut answered = 0;
    loop {
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let written = reply_eio(chain, mem);
            queue
                .add_used(mem, head, written)
                .map_err(|e| format!("cannot return request {head} to the guest: {e}"))?;
            answered += 1;
        }
        let more = queue
            .enable_notification(mem)
            .map_err(|e| format!("cannot ask the guest for kicks: {e}"))?;
        if !more {
            return Ok(answered);
        }
    }
}

/// Writes `fuse_out_header { len: 16, error: -EIO, unique }` into the request's first
/// device-writable buffer; returns the bytes written (0 for one-way requests such as FORGET,
/// which have no reply buffer).
fn reply_eio<M>(chain: virtio_queue::DescriptorChain<M>, mem: &GuestMemoryMmap) -> u32
where
    M: std::ops::Deref<Target = GuestMemoryMmap>,
{
    let mut unique = None;
    let mut reply_at: Option<GuestAddress> = None;
    // The iterator stops by itself after queue-size descriptors (a looping chain).
    for desc in chain {
        if desc.is_write_only() {
            if reply_at.is_none() && desc.len() >= OUT_HEADER_LEN {
                reply_at = Some(desc.addr());
            }
        } else if unique.is_none() && u64::from(desc.len()) >= IN_UNIQUE_OFFSET + 8 {
            unique = mem
                .read_obj::<u64>(GuestAddress(desc.addr().0 + IN_UNIQUE_OFFSET))
                .ok();
        }
    }
    let (Some(at), Some(unique)) = (reply_at, unique) else {
        return 0;
    };
    let mut header = [0u8; OUT_HEADER_LEN as usize];
    header[..4].copy_from_slice(&OUT_HEADER_LEN.to_le_bytes());
    header[4..8].copy_from_slice(&(-libc::EIO).to_le_bytes());
    header[8..].copy_from_slice(&unique.to_le_bytes());
    match mem.write_slice(&header, at) {
        Ok(()) => OUT_HEADER_LEN,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Address;

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn requests_after_the_used_index_get_eio_with_their_unique() {
        let mem = mem();
        let vq = MockSplitQueue::new(&mem, 16);
        // Two requests: each an in header (readable) and an out header (writable).
        let mut descs = Vec::new();
        for (i, unique) in [(0u64, 0x1111u64), (1, 0x2222)] {
            let in_addr = 0x8000 + i * 0x1000;
            let out_addr = in_addr + 0x800;
            let mut in_header = [0u8; 40];
            in_header[8..16].copy_from_slice(&unique.to_le_bytes());
            mem.write_slice(&in_header, GuestAddress(in_addr)).unwrap();
            let next = (2 * i + 1) as u16;
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                in_addr, 40, F_NEXT, next,
            )));
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                out_addr, 64, F_WRITE, 0,
            )));
        }
        vq.build_multiple_desc_chains(&descs).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        // The backend answered the first request before it went away.
        q.pop_descriptor_chain(&mem).unwrap();
        q.add_used(&mem, 0, 16).unwrap();
        let mut taken: Queue = vq.create_queue().unwrap();
        taken.set_event_idx(true);
        adopt(&mut taken, &mem);
        assert_eq!(taken.next_avail(), 1);
        assert_eq!(fail_requests(&mut taken, &mem).unwrap(), 1);
        let reply: [u8; 16] = mem.read_obj(GuestAddress(0x9800)).unwrap();
        assert_eq!(&reply[..4], &16u32.to_le_bytes());
        assert_eq!(&reply[4..8], &(-libc::EIO).to_le_bytes());
        assert_eq!(&reply[8..], &0x2222u64.to_le_bytes());
        // The first request's reply buffer is untouched by the takeover.
        let first: [u8; 16] = mem.read_obj(GuestAddress(0x8800)).unwrap();
        assert_eq!(first, [0u8; 16]);
        assert_eq!(taken.used_idx(&mem, Ordering::Acquire).unwrap().0, 2);
        // avail_event (after the used ring's 16 entries) asks for a kick at the next request.
        let avail_event: u16 = mem
            .read_obj(vq.used_addr().unchecked_add(4 + 8 * 16))
            .unwrap();
        assert_eq!(avail_event, 2);
        // Nothing more to answer until the guest queues more.
        assert_eq!(fail_requests(&mut taken, &mem).unwrap(), 0);
    }
}
