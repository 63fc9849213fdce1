//! The FUSE server: decodes one request from a descriptor chain, runs it on the passthrough
//! filesystem and encodes the reply. A request the guest got wrong gets an error reply (or, when
//! not even its header can be read, none); nothing a guest sends can make the server panic.

use super::abi::{self, init_flags, opcode, InHeader, OutHeader};
use super::io::{IoError, Reader, Writer};
use super::passthrough::{DirEntry, FsResult, PassthroughFs};
use nix::errno::Errno;
use std::sync::atomic::{AtomicBool, Ordering};
use vm_memory::ByteValued;

/// Largest WRITE/READ payload offered to the guest (the driver clamps it to its queue).
const MAX_WRITE: u32 = 1 << 20;
const MAX_PAGES: u16 = (MAX_WRITE / 4096) as u16;

/// What a handler produced.
enum Reply {
    /// A success reply with this body.
    Body(Vec<u8>),
    /// An error reply.
    Error(Errno),
    /// The reply is already in the guest's buffers (READ), body of this many bytes.
    InPlace(usize),
    /// No reply at all (FORGET, BATCH_FORGET, INTERRUPT).
    None,
}

fn body<T: ByteValued>(value: &T) -> Reply {
    Reply::Body(value.as_slice().to_vec())
}

fn done(result: FsResult<()>) -> Reply {
    match result {
        Ok(()) => Reply::Body(Vec::new()),
        Err(e) => Reply::Error(e),
    }
}

fn entry(result: FsResult<abi::EntryOut>) -> Reply {
    match result {
        Ok(e) => body(&e),
        Err(e) => Reply::Error(e),
    }
}

impl From<IoError> for Errno {
    fn from(_: IoError) -> Self {
        Errno::EINVAL
    }
}

/// Splits a NUL-terminated name off the front of `bytes`.
fn split_name(bytes: &[u8]) -> FsResult<(&[u8], &[u8])> {
    let end = bytes.iter().position(|&b| b == 0).ok_or(Errno::EINVAL)?;
    Ok((&bytes[..end], &bytes[end + 1..]))
}

pub struct Server {
    fs: PassthroughFs,
    /// A malformed request is logged once; a guest could otherwise flood the log.
    complained: AtomicBool,
}

impl Server {
    pub fn new(fs: PassthroughFs) -> Self {
        Self {
            fs,
            complained: AtomicBool::new(false),
        }
    }

    #[cfg(test)]
    pub fn fs(&self) -> &PassthroughFs {
        &self.fs
    }

    fn complain(&self, what: std::fmt::Arguments<'_>) {
        if !self.complained.swap(true, Ordering::Relaxed) {
            log::warn!(
                "virtiofsd: malformed request from the guest ({what}); further ones are not logged"
            );
        }
    }

    /// Serves one request; returns the number of bytes written into the reply buffers.
    pub fn handle(&self, mut r: Reader<'_>, mut w: Writer<'_>) -> usize {
        let header: InHeader = match r.read_obj() {
            Ok(h) => h,
            Err(e) => {
                self.complain(format_args!("{e}"));
                return 0;
            }
        };
        let total = r.consumed() + r.available();
        if (header.len as usize) < std::mem::size_of::<InHeader>() || header.len as usize > total {
            self.complain(format_args!(
                "header says {} bytes, the chain holds {total}",
                header.len
            ));
            return self.reply(&header, Reply::Error(Errno::EINVAL), w);
        }
        let reply = match header.opcode {
            opcode::READ => self.read(&mut r, &mut w),
            _ => self.dispatch(&header, &mut r),
        };
        self.reply(&header, reply, w)
    }

    fn reply(&self, header: &InHeader, reply: Reply, mut w: Writer<'_>) -> usize {
        let head_len = std::mem::size_of::<OutHeader>();
        let (error, body): (i32, &[u8]) = match &reply {
            Reply::None => return 0,
            Reply::Body(b) => (0, b),
            Reply::Error(e) => (-(*e as i32), &[]),
            Reply::InPlace(n) => {
                let out = OutHeader {
                    len: (head_len + n) as u32,
                    error: 0,
                    unique: header.unique,
                };
                // The header room was split off before the data went in.
                return match w.write_obj(&out) {
                    Ok(()) => head_len + n,
                    Err(e) => {
                        self.complain(format_args!("{e}"));
                        0
                    }
                };
            }
        };
        let out = OutHeader {
            len: (head_len + body.len()) as u32,
            error,
            unique: header.unique,
        };
        match w.write_obj(&out).and_then(|()| w.write_all(body)) {
            Ok(()) => w.written(),
            Err(e) => {
                self.complain(format_args!("opcode {}: {e}", header.opcode));
                w.written()
            }
        }
    }

    fn read(&self, r: &mut Reader<'_>, w: &mut Writer<'_>) -> Reply {
        let args: abi::ReadIn = match r.read_obj() {
            Ok(a) => a,
            Err(_) => return Reply::Error(Errno::EINVAL),
        };
        let mut data = match w.split_at(std::mem::size_of::<OutHeader>()) {
            Ok(d) => d,
            Err(e) => {
                self.complain(format_args!("READ: {e}"));
                return Reply::None;
            }
        };
        let count = (args.size as usize).min(MAX_WRITE as usize);
        match self
            .fs
            .with_file(args.fh, |fd| data.read_from_file_at(fd, count, args.offset))
        {
            Ok(Ok(n)) => Reply::InPlace(n),
            Ok(Err(e)) => Reply::Error(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
            Err(e) => Reply::Error(e),
        }
    }

    fn dispatch(&self, h: &InHeader, r: &mut Reader<'_>) -> Reply {
        match self.try_dispatch(h, r) {
            Ok(reply) => reply,
            Err(e) => Reply::Error(e),
        }
    }

    fn try_dispatch(&self, h: &InHeader, r: &mut Reader<'_>) -> FsResult<Reply> {
        let fs = &self.fs;
        let node = h.nodeid;
        Ok(match h.opcode {
            opcode::INIT => self.init(r)?,
            opcode::DESTROY => {
                fs.forget_all();
                Reply::Body(Vec::new())
            }
            opcode::LOOKUP => {
                let rest = r.read_vec(None)?;
                let (name, _) = split_name(&rest)?;
                entry(fs.lookup(node, name))
            }
            opcode::FORGET => {
                let args: abi::ForgetIn = r.read_obj()?;
                fs.forget(node, args.nlookup);
                Reply::None
            }
            opcode::BATCH_FORGET => {
                let args: abi::BatchForgetIn = r.read_obj()?;
                for _ in 0..args.count {
                    let one: abi::ForgetOne = match r.read_obj() {
                        Ok(o) => o,
                        Err(_) => break,
                    };
                    fs.forget(one.nodeid, one.nlookup);
                }
                Reply::None
            }
            opcode::GETATTR => {
                let args: abi::GetattrIn = r.read_obj()?;
                let fh = (args.getattr_flags & abi::GETATTR_FH != 0).then_some(args.fh);
                attr_reply(fs.getattr(node, fh))
            }
            opcode::SETATTR => {
                let args: abi::SetattrIn = r.read_obj()?;
                attr_reply(fs.setattr(node, &args))
            }
            opcode::READLINK => Reply::Body(fs.readlink(node)?),
            opcode::SYMLINK => {
                let rest = r.read_vec(None)?;
                let (name, rest) = split_name(&rest)?;
                let (target, _) = split_name(rest)?;
                entry(fs.symlink(node, name, target))
            }
            opcode::MKNOD => {
                let args: abi::MknodIn = r.read_obj()?;
                let rest = r.read_vec(None)?;
                let (name, _) = split_name(&rest)?;
                entry(fs.mknod(node, name, args.mode, args.rdev))
            }
            opcode::MKDIR => {
                let args: abi::MkdirIn = r.read_obj()?;
                let rest = r.read_vec(None)?;
                let (name, _) = split_name(&rest)?;
                entry(fs.mkdir(node, name, args.mode))
            }
            opcode::UNLINK | opcode::RMDIR => {
                let rest = r.read_vec(None)?;
                let (name, _) = split_name(&rest)?;
                done(fs.unlink(node, name, h.opcode == opcode::RMDIR))
            }
            opcode::RENAME | opcode::RENAME2 => {
                let (newdir, flags) = if h.opcode == opcode::RENAME {
                    let args: abi::RenameIn = r.read_obj()?;
                    (args.newdir, 0)
                } else {
                    let args: abi::Rename2In = r.read_obj()?;
                    (args.newdir, args.flags)
                };
                let rest = r.read_vec(None)?;
                let (old, rest) = split_name(&rest)?;
                let (new, _) = split_name(rest)?;
                done(fs.rename(node, old, newdir, new, flags))
            }
            opcode::LINK => {
                let args: abi::LinkIn = r.read_obj()?;
                let rest = r.read_vec(None)?;
                let (name, _) = split_name(&rest)?;
                entry(fs.link(args.oldnodeid, node, name))
            }
            opcode::OPEN => {
                let args: abi::OpenIn = r.read_obj()?;
                open_reply(fs.open(node, args.flags)?)
            }
            opcode::WRITE => self.write(r)?,
            opcode::STATFS => body(&fs.statfs(node)?),
            opcode::RELEASE | opcode::RELEASEDIR => {
                let args: abi::ReleaseIn = r.read_obj()?;
                fs.release(args.fh);
                Reply::Body(Vec::new())
            }
            opcode::FSYNC | opcode::FSYNCDIR => {
                let args: abi::FsyncIn = r.read_obj()?;
                done(fs.fsync(args.fh, args.fsync_flags & abi::FSYNC_FDATASYNC != 0))
            }
            opcode::FLUSH => {
                let _args: abi::FlushIn = r.read_obj()?;
                // Writes are not buffered here: each WRITE reached the file before its reply.
                Reply::Body(Vec::new())
            }
            opcode::OPENDIR => open_reply(fs.opendir(node)?),
            opcode::READDIR | opcode::READDIRPLUS => {
                let args: abi::ReadIn = r.read_obj()?;
                Reply::Body(self.readdir(node, &args, h.opcode == opcode::READDIRPLUS)?)
            }
            opcode::ACCESS => {
                let args: abi::AccessIn = r.read_obj()?;
                done(fs.access(node, args.mask))
            }
            opcode::CREATE => {
                let args: abi::CreateIn = r.read_obj()?;
                let rest = r.read_vec(None)?;
                let (name, _) = split_name(&rest)?;
                let (e, fh) = fs.create(node, name, args.mode, args.flags)?;
                let mut out = e.as_slice().to_vec();
                out.extend_from_slice(
                    abi::OpenOut {
                        fh,
                        ..Default::default()
                    }
                    .as_slice(),
                );
                Reply::Body(out)
            }
            opcode::FALLOCATE => {
                let args: abi::FallocateIn = r.read_obj()?;
                done(fs.fallocate(args.fh, args.mode, args.offset, args.length))
            }
            opcode::LSEEK => {
                let args: abi::LseekIn = r.read_obj()?;
                let offset = fs.lseek(args.fh, args.offset, args.whence)?;
                body(&abi::LseekOut { offset })
            }
            // Extended attributes are not passed through: ENOSYS makes the guest stop asking.
            opcode::GETXATTR | opcode::LISTXATTR | opcode::SETXATTR | opcode::REMOVEXATTR => {
                Reply::Error(Errno::ENOSYS)
            }
            // Requests are served synchronously; there is nothing to interrupt.
            opcode::INTERRUPT => Reply::None,
            _ => Reply::Error(Errno::ENOSYS),
        })
    }

    fn init(&self, r: &mut Reader<'_>) -> FsResult<Reply> {
        let args: abi::InitIn = r.read_obj()?;
        if args.major != abi::KERNEL_VERSION {
            log::warn!(
                "virtiofsd: the guest speaks FUSE {}.{}, this server {}.{}",
                args.major,
                args.minor,
                abi::KERNEL_VERSION,
                abi::KERNEL_MINOR_VERSION
            );
            return Ok(Reply::Error(Errno::EPROTO));
        }
        let wanted = init_flags::ASYNC_READ
            | init_flags::ATOMIC_O_TRUNC
            | init_flags::BIG_WRITES
            | init_flags::AUTO_INVAL_DATA
            | init_flags::DO_READDIRPLUS
            | init_flags::READDIRPLUS_AUTO
            | init_flags::ASYNC_DIO
            | init_flags::PARALLEL_DIROPS
            | init_flags::MAX_PAGES
            | init_flags::CACHE_SYMLINKS;
        let out = abi::InitOut {
            major: abi::KERNEL_VERSION,
            minor: abi::KERNEL_MINOR_VERSION.min(args.minor),
            max_readahead: args.max_readahead,
            flags: args.flags & wanted,
            max_background: 64,
            congestion_threshold: 48,
            max_write: MAX_WRITE,
            time_gran: 1,
            max_pages: MAX_PAGES,
            ..Default::default()
        };
        Ok(body(&out))
    }

    fn write(&self, r: &mut Reader<'_>) -> FsResult<Reply> {
        let args: abi::WriteIn = r.read_obj()?;
        if self.fs.readonly() {
            return Err(Errno::EROFS);
        }
        let size = args.size as usize;
        if size > r.available() {
            self.complain(format_args!(
                "WRITE of {size} bytes carries {}",
                r.available()
            ));
            return Err(Errno::EINVAL);
        }
        let n = self
            .fs
            .with_file(args.fh, |fd| r.write_to_file_at(fd, size, args.offset))?
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        Ok(body(&abi::WriteOut {
            size: n as u32,
            padding: 0,
        }))
    }

    fn readdir(&self, node: u64, args: &abi::ReadIn, plus: bool) -> FsResult<Vec<u8>> {
        let limit = (args.size as usize).min(MAX_WRITE as usize);
        let mut out = Vec::with_capacity(limit.min(64 * 1024));
        let mut failure = None;
        self.fs.readdir(args.fh, args.offset, |e: &DirEntry| {
            let dirent = abi::Dirent {
                ino: e.ino,
                off: e.next,
                namelen: e.name.len() as u32,
                typ: u32::from(e.typ),
            };
            let plain = abi::dirent_size(e.name.len());
            let size = if plus {
                plain + std::mem::size_of::<abi::EntryOut>()
            } else {
                plain
            };
            if out.len() + size > limit {
                return false;
            }
            if plus {
                let dots = e.name == b"." || e.name == b"..";
                // `.` and `..` carry no entry: the guest does not look them up from here.
                let looked_up = if dots {
                    abi::EntryOut::default()
                } else {
                    match self.fs.lookup(node, &e.name) {
                        Ok(entry) => entry,
                        // Gone since getdents (or unreadable): list it without attributes.
                        Err(err) => {
                            if out.is_empty() && err != Errno::ENOENT {
                                failure = Some(err);
                                return false;
                            }
                            abi::EntryOut::default()
                        }
                    }
                };
                out.extend_from_slice(looked_up.as_slice());
            }
            out.extend_from_slice(dirent.as_slice());
            out.extend_from_slice(&e.name);
            out.resize(
                out.len() + (plain - std::mem::size_of::<abi::Dirent>() - e.name.len()),
                0,
            );
            true
        })?;
        match failure {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

fn attr_reply(result: FsResult<abi::Attr>) -> Reply {
    match result {
        Ok(attr) => body(&abi::AttrOut {
            attr_valid: 1,
            attr_valid_nsec: 0,
            dummy: 0,
            attr,
        }),
        Err(e) => Reply::Error(e),
    }
}

fn open_reply(fh: u64) -> Reply {
    body(&abi::OpenOut {
        fh,
        open_flags: 0,
        padding: 0,
    })
}
