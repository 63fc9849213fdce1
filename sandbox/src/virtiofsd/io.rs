//! Reading a FUSE request from, and writing its reply into, the guest buffers of one descriptor
//! chain. File data moves between a file and guest memory in one preadv/pwritev on the buffers
//! themselves, never through an intermediate copy.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, BorrowedFd};
use vm_memory::{ByteValued, VolatileSlice};

/// A guest buffer (or the rest of one) as the server sees it.
pub type Buffer<'a> = VolatileSlice<'a, ()>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IoError {
    #[error("the request is {have} bytes short of a {want}-byte field")]
    ShortRequest { want: usize, have: usize },
    #[error("the reply needs {want} bytes but the guest gave {have} writable bytes")]
    ShortReply { want: usize, have: usize },
    #[error("guest memory access: {0}")]
    Memory(String),
}

/// At most this many buffers go into one preadv/pwritev (the kernel's IOV_MAX).
const MAX_IOVECS: usize = 1024;

fn take_front<'a>(bufs: &mut VecDeque<Buffer<'a>>, mut count: usize) -> Vec<Buffer<'a>> {
    let mut out = Vec::new();
    while count > 0 {
        let Some(front) = bufs.pop_front() else { break };
        if front.len() <= count {
            count -= front.len();
            out.push(front);
        } else {
            // Both halves lie inside `front`, so neither split can fail.
            if let (Ok(head), Ok(tail)) = (
                front.subslice(0, count),
                front.subslice(count, front.len() - count),
            ) {
                out.push(head);
                bufs.push_front(tail);
            }
            count = 0;
        }
    }
    out
}

fn iovecs(bufs: &[Buffer<'_>]) -> Vec<libc::iovec> {
    bufs.iter()
        .filter(|b| !b.is_empty())
        .take(MAX_IOVECS)
        .map(|b| libc::iovec {
            iov_base: b.ptr_guard_mut().as_ptr().cast(),
            iov_len: b.len(),
        })
        .collect()
}

/// Which way [`transfer_at`] moves data.
#[derive(Clone, Copy)]
enum Direction {
    /// Guest buffers (device-readable) to the file: pwritev.
    ToFile,
    /// The file to guest buffers (device-writable): preadv.
    FromFile,
}

/// Moves the bytes of `pending` between the guest buffers and `fd` from file position `offset`,
/// resuming after EINTR and partial transfers. Returns how many moved: fewer at end of file, or
/// when an error follows some progress (the error is returned only when nothing moved).
fn transfer_at(
    mut pending: VecDeque<Buffer<'_>>,
    fd: BorrowedFd<'_>,
    offset: u64,
    direction: Direction,
) -> std::io::Result<usize> {
    let mut done = 0usize;
    loop {
        let iov = iovecs(pending.make_contiguous());
        if iov.is_empty() {
            return Ok(done);
        }
        let off = offset
            .checked_add(done as u64)
            .and_then(|o| i64::try_from(o).ok())
            .ok_or_else(|| {
                // What the kernel says of a position past the largest file offset.
                std::io::Error::from_raw_os_error(match direction {
                    Direction::ToFile => libc::EFBIG,
                    Direction::FromFile => libc::EINVAL,
                })
            })?;
        // SAFETY: each iovec is a bounds-checked guest buffer `pending` keeps mapped; pwritev
        // only reads them, preadv writes only device-writable ones (the `Writer`'s); the count
        // is the vector's own length.
        let n = unsafe {
            match direction {
                Direction::ToFile => {
                    libc::pwritev(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int, off)
                }
                Direction::FromFile => {
                    libc::preadv(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int, off)
                }
            }
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return if done > 0 { Ok(done) } else { Err(err) };
        }
        if n == 0 {
            return Ok(done);
        }
        done += n as usize;
        take_front(&mut pending, n as usize);
    }
}

/// The device-readable part of a chain: the request.
pub struct Reader<'a> {
    bufs: VecDeque<Buffer<'a>>,
    consumed: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bufs: impl IntoIterator<Item = Buffer<'a>>) -> Self {
        Self {
            bufs: bufs.into_iter().collect(),
            consumed: 0,
        }
    }

    /// Bytes not read yet.
    pub fn available(&self) -> usize {
        self.bufs.iter().map(|b| b.len()).sum()
    }

    /// Bytes read so far.
    pub fn consumed(&self) -> usize {
        self.consumed
    }

    /// Reads exactly `buf.len()` bytes.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), IoError> {
        let have = self.available();
        if have < buf.len() {
            return Err(IoError::ShortRequest {
                want: buf.len(),
                have,
            });
        }
        let mut done = 0;
        for slice in take_front(&mut self.bufs, buf.len()) {
            let n = slice.len();
            slice.copy_to(&mut buf[done..done + n]);
            done += n;
        }
        self.consumed += done;
        Ok(())
    }

    pub fn read_obj<T: ByteValued + Default>(&mut self) -> Result<T, IoError> {
        let mut value = T::default();
        self.read_exact(value.as_mut_slice())?;
        Ok(value)
    }

    /// Reads `count` bytes (all of what is left when `count` is `None`) into a vector.
    pub fn read_vec(&mut self, count: Option<usize>) -> Result<Vec<u8>, IoError> {
        let count = count.unwrap_or_else(|| self.available());
        let mut out = vec![0u8; count];
        self.read_exact(&mut out)?;
        Ok(out)
    }

    /// Writes the next `count` request bytes to `fd` at `offset` straight from guest memory.
    pub fn write_to_file_at(
        &mut self,
        fd: BorrowedFd<'_>,
        count: usize,
        offset: u64,
    ) -> std::io::Result<usize> {
        let have = self.available();
        if have < count {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let pending = take_front(&mut self.bufs, count).into();
        let done = transfer_at(pending, fd, offset, Direction::ToFile)?;
        self.consumed += count;
        Ok(done)
    }
}

/// The device-writable part of a chain: the reply.
pub struct Writer<'a> {
    bufs: VecDeque<Buffer<'a>>,
    written: usize,
}

impl<'a> Writer<'a> {
    pub fn new(bufs: impl IntoIterator<Item = Buffer<'a>>) -> Self {
        Self {
            bufs: bufs.into_iter().collect(),
            written: 0,
        }
    }

    /// Room left.
    pub fn available(&self) -> usize {
        self.bufs.iter().map(|b| b.len()).sum()
    }

    /// Bytes written so far (the length the used ring reports).
    pub fn written(&self) -> usize {
        self.written
    }

    /// Splits off everything after the first `count` bytes into a second writer, so a header
    /// can be written after the body whose length it carries.
    pub fn split_at(&mut self, count: usize) -> Result<Writer<'a>, IoError> {
        let have = self.available();
        if have < count {
            return Err(IoError::ShortReply { want: count, have });
        }
        let head = take_front(&mut self.bufs, count);
        let tail = std::mem::replace(&mut self.bufs, head.into());
        Ok(Writer {
            bufs: tail,
            written: 0,
        })
    }

    pub fn write_all(&mut self, data: &[u8]) -> Result<(), IoError> {
        let have = self.available();
        if have < data.len() {
            return Err(IoError::ShortReply {
                want: data.len(),
                have,
            });
        }
        let mut done = 0;
        for slice in take_front(&mut self.bufs, data.len()) {
            let n = slice.len();
            slice.copy_from(&data[done..done + n]);
            done += n;
        }
        self.written += done;
        Ok(())
    }

    pub fn write_obj<T: ByteValued>(&mut self, value: &T) -> Result<(), IoError> {
        self.write_all(value.as_slice())
    }

    /// Reads up to `count` bytes of `fd` at `offset` straight into the guest buffers; returns
    /// how many were read (fewer at end of file).
    pub fn read_from_file_at(
        &mut self,
        fd: BorrowedFd<'_>,
        count: usize,
        offset: u64,
    ) -> std::io::Result<usize> {
        let count = count.min(self.available());
        let pending = take_front(&mut self.bufs, count).into();
        let done = transfer_at(pending, fd, offset, Direction::FromFile)?;
        self.written += done;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    fn memory() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    #[test]
    fn reads_objects_across_buffers_and_refuses_short_requests() {
        let mem = memory();
        mem.get_slice(GuestAddress(0x100), 3)
            .unwrap()
            .copy_from(&[1u8, 0, 0]);
        mem.get_slice(GuestAddress(0x200), 5)
            .unwrap()
            .copy_from(&[0u8, 7, 0, 0, 0]);
        let mut r = Reader::new([
            mem.get_slice(GuestAddress(0x100), 3).unwrap(),
            mem.get_slice(GuestAddress(0x200), 5).unwrap(),
        ]);
        assert_eq!(r.read_obj::<u32>().unwrap(), 1);
        assert_eq!(r.available(), 4);
        assert_eq!(
            r.read_obj::<u64>(),
            Err(IoError::ShortRequest { want: 8, have: 4 })
        );
        assert_eq!(r.read_obj::<u32>().unwrap(), 7);
    }

    #[test]
    fn file_data_goes_straight_between_file_and_scattered_buffers() {
        let mem = memory();
        let file = tempfile::tempfile().unwrap();
        use std::os::fd::AsFd;
        mem.get_slice(GuestAddress(0x1000), 4)
            .unwrap()
            .copy_from(b"abcd");
        mem.get_slice(GuestAddress(0x3000), 3)
            .unwrap()
            .copy_from(b"efg");
        let mut r = Reader::new([
            mem.get_slice(GuestAddress(0x1000), 4).unwrap(),
            mem.get_slice(GuestAddress(0x3000), 3).unwrap(),
        ]);
        assert_eq!(r.write_to_file_at(file.as_fd(), 7, 2).unwrap(), 7);
        let mut w = Writer::new([
            mem.get_slice(GuestAddress(0x5000), 2).unwrap(),
            mem.get_slice(GuestAddress(0x6000), 16).unwrap(),
        ]);
        let mut body = w.split_at(1).unwrap();
        assert_eq!(body.read_from_file_at(file.as_fd(), 100, 0).unwrap(), 9);
        w.write_all(b"H").unwrap();
        let mut out = [0u8; 10];
        mem.get_slice(GuestAddress(0x5000), 2)
            .unwrap()
            .copy_to(&mut out[..2]);
        mem.get_slice(GuestAddress(0x6000), 8)
            .unwrap()
            .copy_to(&mut out[2..]);
        assert_eq!(&out, b"H\0\0abcdefg");
    }
}
