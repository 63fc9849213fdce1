//! The FUSE server driven with real request bytes in guest memory against a temporary directory,
//! the way the guest's virtio-fs driver would drive it (no guest, no vhost-user needed).

use super::abi::{self, opcode, OutHeader};
use super::io::{Reader, Writer};
use super::{PassthroughFs, Server};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const REQ: u64 = 0;
const REPLY: u64 = 0x10_0000;
const MEM: usize = 0x40_0000;

struct Guest {
    server: Server,
    mem: GuestMemoryMmap<()>,
    unique: u64,
    dir: tempfile::TempDir,
}

/// A reply: its header and body.
struct Reply {
    header: OutHeader,
    body: Vec<u8>,
}

impl Reply {
    fn ok(&self) -> &Self {
        assert_eq!(
            self.header.error,
            0,
            "error reply: {}",
            std::io::Error::from_raw_os_error(-self.header.error)
        );
        self
    }

    fn errno(&self) -> i32 {
        -self.header.error
    }

    fn obj<T: ByteValued + Default>(&self, at: usize) -> T {
        self.ok();
        let mut v = T::default();
        let n = std::mem::size_of::<T>();
        v.as_mut_slice().copy_from_slice(&self.body[at..at + n]);
        v
    }
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

impl Guest {
    fn new(readonly: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fs = PassthroughFs::new(dir.path(), readonly).unwrap();
        let mut guest = Self {
            server: Server::new(fs),
            mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap(),
            unique: 0,
            dir,
        };
        let init = abi::InitIn {
            major: 7,
            minor: 37,
            max_readahead: 128 * 1024,
            flags: abi::init_flags::DO_READDIRPLUS | abi::init_flags::ASYNC_READ,
        };
        // A 6.1 kernel sends the 64-byte form: flags2 and reserved words follow.
        let r = guest.call(opcode::INIT, 0, &cat(&[init.as_slice(), &[0u8; 48]]));
        let out: abi::InitOut = r.obj(0);
        assert_eq!((out.major, out.minor), (7, 31));
        assert_eq!(
            out.flags & abi::init_flags::DO_READDIRPLUS,
            abi::init_flags::DO_READDIRPLUS
        );
        guest
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Sends raw request bytes (header included); the reply buffers are two pieces, so every
    /// reply crosses a buffer boundary.
    fn raw(&mut self, request: &[u8], reply_room: usize) -> (usize, Vec<u8>) {
        self.mem
            .get_slice(GuestAddress(REQ), request.len())
            .unwrap()
            .copy_from(request);
        let first = reply_room.min(20);
        let reader = Reader::new([self
            .mem
            .get_slice(GuestAddress(REQ), request.len())
            .unwrap()]);
        let writer = Writer::new([
            self.mem.get_slice(GuestAddress(REPLY), first).unwrap(),
            self.mem
                .get_slice(GuestAddress(REPLY + 0x1000), reply_room - first)
                .unwrap(),
        ]);
        let n = self.server.handle(reader, writer);
        let mut out = vec![0u8; reply_room];
        self.mem
            .get_slice(GuestAddress(REPLY), first)
            .unwrap()
            .copy_to(&mut out[..first]);
        self.mem
            .get_slice(GuestAddress(REPLY + 0x1000), reply_room - first)
            .unwrap()
            .copy_to(&mut out[first..]);
        out.truncate(n);
        (n, out)
    }

    fn call(&mut self, op: u32, node: u64, body: &[u8]) -> Reply {
        self.unique += 1;
        let header = abi::InHeader {
            len: (std::mem::size_of::<abi::InHeader>() + body.len()) as u32,
            opcode: op,
            unique: self.unique,
            nodeid: node,
            uid: 0,
            gid: 0,
            pid: 1,
            ..Default::default()
        };
        let (n, out) = self.raw(&cat(&[header.as_slice(), body]), 256 * 1024);
        assert!(n >= 16, "opcode {op}: no reply");
        let mut h = OutHeader::default();
        h.as_mut_slice().copy_from_slice(&out[..16]);
        assert_eq!(h.unique, self.unique);
        assert_eq!(
            h.len as usize, n,
            "opcode {op}: header length is what was written"
        );
        Reply {
            header: h,
            body: out[16..].to_vec(),
        }
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Result<abi::EntryOut, i32> {
        let r = self.call(opcode::LOOKUP, parent, &cstr(name));
        if r.header.error != 0 {
            return Err(r.errno());
        }
        Ok(r.obj(0))
    }

    fn create(&mut self, parent: u64, name: &str, mode: u32) -> Result<(u64, u64), i32> {
        let args = abi::CreateIn {
            flags: (libc::O_RDWR | libc::O_CREAT) as u32,
            mode: libc::S_IFREG | mode,
            umask: 0o022,
            open_flags: 0,
        };
        let r = self.call(
            opcode::CREATE,
            parent,
            &cat(&[args.as_slice(), &cstr(name)]),
        );
        if r.header.error != 0 {
            return Err(r.errno());
        }
        let e: abi::EntryOut = r.obj(0);
        let o: abi::OpenOut = r.obj(std::mem::size_of::<abi::EntryOut>());
        Ok((e.nodeid, o.fh))
    }

    fn open(&mut self, node: u64, flags: i32) -> Result<u64, i32> {
        let args = abi::OpenIn {
            flags: flags as u32,
            open_flags: 0,
        };
        let r = self.call(opcode::OPEN, node, args.as_slice());
        if r.header.error != 0 {
            return Err(r.errno());
        }
        Ok(r.obj::<abi::OpenOut>(0).fh)
    }

    fn write(&mut self, node: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, i32> {
        let args = abi::WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        let r = self.call(opcode::WRITE, node, &cat(&[args.as_slice(), data]));
        if r.header.error != 0 {
            return Err(r.errno());
        }
        Ok(r.obj::<abi::WriteOut>(0).size)
    }

    fn read(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> Vec<u8> {
        let args = abi::ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let r = self.call(opcode::READ, node, args.as_slice());
        r.ok();
        r.body
    }

    fn mkdir(&mut self, parent: u64, name: &str) -> Result<u64, i32> {
        let args = abi::MkdirIn {
            mode: 0o755,
            umask: 0,
        };
        let r = self.call(opcode::MKDIR, parent, &cat(&[args.as_slice(), &cstr(name)]));
        if r.header.error != 0 {
            return Err(r.errno());
        }
        Ok(r.obj::<abi::EntryOut>(0).nodeid)
    }

    fn symlink(&mut self, parent: u64, name: &str, target: &str) -> Result<u64, i32> {
        let r = self.call(opcode::SYMLINK, parent, &cat(&[&cstr(name), &cstr(target)]));
        if r.header.error != 0 {
            return Err(r.errno());
        }
        Ok(r.obj::<abi::EntryOut>(0).nodeid)
    }

    /// (name, nodeid from READDIRPLUS) of every entry, reading in small chunks.
    fn readdirplus(&mut self, node: u64) -> Vec<(String, u64)> {
        let r = self.call(opcode::OPENDIR, node, abi::OpenIn::default().as_slice());
        let fh = r.obj::<abi::OpenOut>(0).fh;
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let args = abi::ReadIn {
                fh,
                offset,
                size: 300, // two entries or so per call: positions must carry over
                ..Default::default()
            };
            let r = self.call(opcode::READDIRPLUS, node, args.as_slice());
            r.ok();
            if r.body.is_empty() {
                break;
            }
            let mut at = 0;
            while at < r.body.len() {
                let e: abi::EntryOut = r.obj(at);
                let d: abi::Dirent = r.obj(at + 128);
                let name_at = at + 128 + 24;
                let name =
                    String::from_utf8(r.body[name_at..name_at + d.namelen as usize].to_vec())
                        .unwrap();
                out.push((name, e.nodeid));
                offset = d.off;
                at += 128 + abi::dirent_size(d.namelen as usize);
            }
        }
        let rel = abi::ReleaseIn {
            fh,
            ..Default::default()
        };
        self.call(opcode::RELEASEDIR, node, rel.as_slice()).ok();
        out.sort();
        out
    }
}

#[test]
fn create_write_read_rename_unlink_as_the_guest_would() {
    let mut g = Guest::new(false);
    let (node, fh) = g.create(abi::ROOT_ID, "hello.txt", 0o644).unwrap();
    assert_eq!(g.write(node, fh, 0, b"hello, ").unwrap(), 7);
    assert_eq!(g.write(node, fh, 7, b"world").unwrap(), 5);
    assert_eq!(std::fs::read(g.path("hello.txt")).unwrap(), b"hello, world");
    assert_eq!(g.read(node, fh, 7, 100), b"world");

    // A large write and read cross many buffers' worth of data.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(g.write(node, fh, 0, &big).unwrap(), big.len() as u32);
    assert_eq!(g.read(node, fh, 0, big.len() as u32), big);
    g.write(node, fh, 0, b"hello").unwrap();

    let attr: abi::AttrOut = g
        .call(opcode::GETATTR, node, abi::GetattrIn::default().as_slice())
        .obj(0);
    assert_eq!(attr.attr.size, big.len() as u64);
    assert_eq!(attr.attr.mode & 0o777, 0o644);
    assert_eq!(
        attr.attr.ino,
        std::fs::metadata(g.path("hello.txt")).unwrap().ino()
    );

    // The same host file is the same node, however it is reached.
    assert_eq!(g.lookup(abi::ROOT_ID, "hello.txt").unwrap().nodeid, node);

    // chmod and truncate through SETATTR.
    let set = abi::SetattrIn {
        valid: abi::fattr::MODE | abi::fattr::SIZE,
        mode: 0o600,
        size: 5,
        ..Default::default()
    };
    let out: abi::AttrOut = g.call(opcode::SETATTR, node, set.as_slice()).obj(0);
    assert_eq!((out.attr.mode & 0o777, out.attr.size), (0o600, 5));
    let meta = std::fs::metadata(g.path("hello.txt")).unwrap();
    assert_eq!((meta.permissions().mode() & 0o777, meta.len()), (0o600, 5));

    let rel = abi::ReleaseIn {
        fh,
        ..Default::default()
    };
    g.call(opcode::RELEASE, node, rel.as_slice()).ok();

    let dir = g.mkdir(abi::ROOT_ID, "sub").unwrap();
    let rename = abi::RenameIn { newdir: dir };
    g.call(
        opcode::RENAME,
        abi::ROOT_ID,
        &cat(&[rename.as_slice(), &cstr("hello.txt"), &cstr("moved.txt")]),
    )
    .ok();
    assert!(!g.path("hello.txt").exists());
    assert_eq!(std::fs::read(g.path("sub/moved.txt")).unwrap(), b"hello");

    // RENAME2 with NOREPLACE refuses to overwrite.
    std::fs::write(g.path("sub/other"), b"x").unwrap();
    let rename2 = abi::Rename2In {
        newdir: dir,
        flags: libc::RENAME_NOREPLACE,
        padding: 0,
    };
    let r = g.call(
        opcode::RENAME2,
        dir,
        &cat(&[rename2.as_slice(), &cstr("other"), &cstr("moved.txt")]),
    );
    assert_eq!(r.errno(), libc::EEXIST);

    let fh = g.open(node, libc::O_RDONLY).unwrap();
    assert_eq!(g.read(node, fh, 0, 100), b"hello");

    g.call(opcode::UNLINK, dir, &cstr("moved.txt")).ok();
    assert!(!g.path("sub/moved.txt").exists());
    assert_eq!(
        g.call(opcode::RMDIR, abi::ROOT_ID, &cstr("sub")).errno(),
        libc::ENOTEMPTY
    );
    g.call(opcode::UNLINK, dir, &cstr("other")).ok();
    g.call(opcode::RMDIR, abi::ROOT_ID, &cstr("sub")).ok();
    assert!(!g.path("sub").exists());
    assert_eq!(g.lookup(abi::ROOT_ID, "sub"), Err(libc::ENOENT));
}

#[test]
fn symlinks_hard_links_and_directory_listings() {
    let mut g = Guest::new(false);
    std::fs::write(g.path("a"), b"A").unwrap();
    let link = g.symlink(abi::ROOT_ID, "to-a", "a").unwrap();
    let r = g.call(opcode::READLINK, link, &[]);
    r.ok();
    assert_eq!(r.body, b"a");
    assert_eq!(
        std::fs::read_link(g.path("to-a")).unwrap().to_str(),
        Some("a")
    );

    let a = g.lookup(abi::ROOT_ID, "a").unwrap().nodeid;
    let args = abi::LinkIn { oldnodeid: a };
    let e: abi::EntryOut = g
        .call(
            opcode::LINK,
            abi::ROOT_ID,
            &cat(&[args.as_slice(), &cstr("a2")]),
        )
        .obj(0);
    assert_eq!(e.nodeid, a, "a hard link is the same node");
    assert_eq!(e.attr.nlink, 2);
    assert_eq!(std::fs::read(g.path("a2")).unwrap(), b"A");

    let fifo = abi::MknodIn {
        mode: libc::S_IFIFO | 0o644,
        ..Default::default()
    };
    g.call(
        opcode::MKNOD,
        abi::ROOT_ID,
        &cat(&[fifo.as_slice(), &cstr("pipe")]),
    )
    .ok();
    let dev = abi::MknodIn {
        mode: libc::S_IFCHR | 0o644,
        rdev: 0x0103,
        ..Default::default()
    };
    let r = g.call(
        opcode::MKNOD,
        abi::ROOT_ID,
        &cat(&[dev.as_slice(), &cstr("null")]),
    );
    assert_eq!(r.errno(), libc::EPERM, "device nodes are refused");

    for i in 0..20 {
        std::fs::write(g.path(&format!("file-{i:02}")), b"").unwrap();
    }
    let listing = g.readdirplus(abi::ROOT_ID);
    let names: Vec<&str> = listing.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 2 + 4 + 20, "{names:?}");
    for want in [".", "..", "a", "a2", "to-a", "pipe", "file-00", "file-19"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for (name, node) in &listing {
        match name.as_str() {
            "." | ".." => assert_eq!(*node, 0),
            "a" | "a2" => assert_eq!(*node, a),
            _ => assert_ne!(*node, 0, "{name}"),
        }
    }

    let st: abi::Kstatfs = g.call(opcode::STATFS, abi::ROOT_ID, &[]).obj(0);
    assert!(st.bsize > 0 && st.namelen > 0);
}

/// `rm -rf` lists a directory in chunks and unlinks each chunk's entries before asking for the
/// next: every entry must still come back exactly once (a listing that seeks to the cookie after
/// the unlinks skips entries on filesystems whose cookies are positions).
#[test]
fn listing_while_unlinking_returns_every_entry_once() {
    let mut g = Guest::new(false);
    let dir = g.mkdir(abi::ROOT_ID, "d").unwrap();
    for i in 0..300 {
        std::fs::write(g.path(&format!("d/f{i:03}")), b"x").unwrap();
    }
    let fh = g
        .call(opcode::OPENDIR, dir, abi::OpenIn::default().as_slice())
        .obj::<abi::OpenOut>(0)
        .fh;
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let args = abi::ReadIn {
            fh,
            offset,
            size: 4096,
            ..Default::default()
        };
        let r = g.call(opcode::READDIR, dir, args.as_slice());
        r.ok();
        if r.body.is_empty() {
            break;
        }
        let mut at = 0;
        let mut chunk = Vec::new();
        while at < r.body.len() {
            let d: abi::Dirent = r.obj(at);
            let name_at = at + std::mem::size_of::<abi::Dirent>();
            let name =
                String::from_utf8(r.body[name_at..name_at + d.namelen as usize].to_vec()).unwrap();
            chunk.push(name);
            offset = d.off;
            at += abi::dirent_size(d.namelen as usize);
        }
        for name in chunk.iter().filter(|n| n.starts_with('f')) {
            g.call(opcode::UNLINK, dir, &cstr(name)).ok();
        }
        seen.extend(chunk);
    }
    let files: Vec<&String> = seen.iter().filter(|n| n.starts_with('f')).collect();
    let mut unique = files.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(files.len(), 300, "entries returned: {}", files.len());
    assert_eq!(unique.len(), 300, "some entries came back twice");
    assert_eq!(std::fs::read_dir(g.path("d")).unwrap().count(), 0);
    g.call(opcode::RMDIR, abi::ROOT_ID, &cstr("d")).ok();
}

#[test]
fn no_name_reaches_outside_the_shared_directory() {
    let mut g = Guest::new(false);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"host only").unwrap();
    // A host-side symlink in the share pointing out, and one the guest makes.
    std::os::unix::fs::symlink(outside.path(), g.path("host-link")).unwrap();
    let guest_link = g
        .symlink(abi::ROOT_ID, "guest-link", outside.path().to_str().unwrap())
        .unwrap();

    // `..` at the root is the root; `.` is the directory itself.
    assert_eq!(g.lookup(abi::ROOT_ID, "..").unwrap().nodeid, abi::ROOT_ID);
    assert_eq!(g.lookup(abi::ROOT_ID, ".").unwrap().nodeid, abi::ROOT_ID);
    let sub = g.mkdir(abi::ROOT_ID, "sub").unwrap();
    assert_eq!(g.lookup(sub, "..").unwrap().nodeid, abi::ROOT_ID);

    // Names are single components.
    for bad in ["../secret", "sub/..", "/etc", ""] {
        assert_eq!(g.lookup(abi::ROOT_ID, bad), Err(libc::EINVAL), "{bad:?}");
    }
    let escape = format!("..{}", outside.path().join("secret").display());
    assert_eq!(g.lookup(abi::ROOT_ID, &escape), Err(libc::EINVAL));

    // Symlinks come back as symlinks and are never followed by the server.
    let host_link = g.lookup(abi::ROOT_ID, "host-link").unwrap();
    assert_eq!(host_link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    for link in [host_link.nodeid, guest_link] {
        assert_eq!(g.lookup(link, "secret"), Err(libc::ENOTDIR));
        assert_eq!(g.open(link, libc::O_RDONLY), Err(libc::ELOOP));
        let r = g.call(opcode::OPENDIR, link, abi::OpenIn::default().as_slice());
        assert_eq!(r.errno(), libc::ENOTDIR);
    }
    // Creating through a symlink does not land outside either.
    assert_eq!(
        g.create(host_link.nodeid, "planted", 0o644),
        Err(libc::ENOTDIR)
    );
    assert!(!outside.path().join("planted").exists());

    // Creating `..`, or a name with a slash, is refused.
    assert_eq!(g.mkdir(sub, ".."), Err(libc::EINVAL));
    assert_eq!(g.create(sub, "../x", 0o644), Err(libc::EINVAL));
    let rename = abi::RenameIn { newdir: sub };
    let r = g.call(
        opcode::RENAME,
        abi::ROOT_ID,
        &cat(&[rename.as_slice(), &cstr("host-link"), &cstr("../../stolen")]),
    );
    assert_eq!(r.errno(), libc::EINVAL);
    assert_eq!(
        std::fs::read(outside.path().join("secret")).unwrap(),
        b"host only"
    );

    // A node id the guest never got is refused, not guessed.
    assert_eq!(g.lookup(12345, "x"), Err(libc::EBADF));
}

#[test]
fn read_only_share_refuses_every_change_with_erofs() {
    let mut g = Guest::new(true);
    std::fs::write(g.path("f"), b"data").unwrap();
    let f = g.lookup(abi::ROOT_ID, "f").unwrap().nodeid;
    assert_eq!(g.create(abi::ROOT_ID, "new", 0o644), Err(libc::EROFS));
    assert_eq!(g.mkdir(abi::ROOT_ID, "d"), Err(libc::EROFS));
    assert_eq!(g.symlink(abi::ROOT_ID, "l", "f"), Err(libc::EROFS));
    assert_eq!(g.open(f, libc::O_WRONLY), Err(libc::EROFS));
    assert_eq!(g.open(f, libc::O_RDONLY | libc::O_TRUNC), Err(libc::EROFS));
    assert_eq!(
        g.call(opcode::UNLINK, abi::ROOT_ID, &cstr("f")).errno(),
        libc::EROFS
    );
    let set = abi::SetattrIn {
        valid: abi::fattr::MODE,
        mode: 0o777,
        ..Default::default()
    };
    assert_eq!(
        g.call(opcode::SETATTR, f, set.as_slice()).errno(),
        libc::EROFS
    );
    let fh = g.open(f, libc::O_RDONLY).unwrap();
    assert_eq!(g.write(f, fh, 0, b"x"), Err(libc::EROFS));
    assert_eq!(g.read(f, fh, 0, 10), b"data");
    assert_eq!(std::fs::read(g.path("f")).unwrap(), b"data");
}

#[test]
fn malformed_requests_get_errors_not_panics() {
    let mut g = Guest::new(false);
    // Shorter than a header: no reply at all.
    assert_eq!(g.raw(&[1, 2, 3], 64).0, 0);
    // A header claiming more bytes than the chain has.
    let h = abi::InHeader {
        len: 4096,
        opcode: opcode::LOOKUP,
        unique: 77,
        nodeid: abi::ROOT_ID,
        ..Default::default()
    };
    let (n, out) = g.raw(h.as_slice(), 64);
    assert_eq!(n, 16);
    let mut reply = OutHeader::default();
    reply.as_mut_slice().copy_from_slice(&out);
    assert_eq!((reply.unique, reply.error), (77, -libc::EINVAL));
    // A name without its NUL, a truncated argument struct, an unknown opcode.
    assert_eq!(
        g.call(opcode::LOOKUP, abi::ROOT_ID, b"abc").errno(),
        libc::EINVAL
    );
    assert_eq!(
        g.call(opcode::MKDIR, abi::ROOT_ID, &[1, 2]).errno(),
        libc::EINVAL
    );
    assert_eq!(g.call(9999, abi::ROOT_ID, &[]).errno(), libc::ENOSYS);
    // WRITE claiming more data than it carries; READ on a handle never opened.
    let (node, fh) = g.create(abi::ROOT_ID, "f", 0o644).unwrap();
    let args = abi::WriteIn {
        fh,
        size: 1000,
        ..Default::default()
    };
    let r = g.call(opcode::WRITE, node, &cat(&[args.as_slice(), b"short"]));
    assert_eq!(r.errno(), libc::EINVAL);
    let read = abi::ReadIn {
        fh: 999,
        size: 10,
        ..Default::default()
    };
    assert_eq!(
        g.call(opcode::READ, node, read.as_slice()).errno(),
        libc::EBADF
    );
    // A reply that does not fit the guest's buffers: nothing is written past them.
    let h = abi::InHeader {
        len: 40 + 2,
        opcode: opcode::LOOKUP,
        unique: 78,
        nodeid: abi::ROOT_ID,
        ..Default::default()
    };
    let (n, _) = g.raw(&cat(&[h.as_slice(), b"f\0"]), 40);
    assert!(n <= 40);
    // Still serving afterwards.
    assert!(g.lookup(abi::ROOT_ID, "f").is_ok());
}

#[test]
fn forget_drops_the_host_fds() {
    let mut g = Guest::new(false);
    std::fs::write(g.path("f"), b"").unwrap();
    let before = g.server.fs().inode_count();
    let f = g.lookup(abi::ROOT_ID, "f").unwrap().nodeid;
    g.lookup(abi::ROOT_ID, "f").unwrap();
    assert_eq!(g.server.fs().inode_count(), before + 1);
    let forget = abi::ForgetIn { nlookup: 1 };
    assert_eq!(
        g.raw(&forget_request(f, forget), 64).0,
        0,
        "FORGET has no reply"
    );
    assert_eq!(
        g.server.fs().inode_count(),
        before + 1,
        "one lookup still held"
    );
    let batch = abi::BatchForgetIn { count: 1, dummy: 0 };
    let one = abi::ForgetOne {
        nodeid: f,
        nlookup: 1,
    };
    let body = cat(&[batch.as_slice(), one.as_slice()]);
    let h = abi::InHeader {
        len: (40 + body.len()) as u32,
        opcode: opcode::BATCH_FORGET,
        unique: 5,
        ..Default::default()
    };
    assert_eq!(g.raw(&cat(&[h.as_slice(), &body]), 64).0, 0);
    assert_eq!(g.server.fs().inode_count(), before);
    // Forgotten: the id is gone (a new lookup gives a fresh one).
    assert_eq!(g.lookup(f, "."), Err(libc::EBADF));
}

fn forget_request(node: u64, args: abi::ForgetIn) -> Vec<u8> {
    let h = abi::InHeader {
        len: 48,
        opcode: opcode::FORGET,
        unique: 4,
        nodeid: node,
        ..Default::default()
    };
    cat(&[h.as_slice(), args.as_slice()])
}
