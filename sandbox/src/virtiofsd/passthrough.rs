//! The passthrough filesystem: guest operations carried out on the host directory tree.
//!
//! Every inode the guest knows is an `O_PATH` fd of the host file, and every name is resolved one
//! component at a time relative to its parent's fd with `O_NOFOLLOW`: no path from the guest is ever
//! walked by the host, so nothing outside the shared directory can be named. Symlinks are returned
//! as symlinks (the guest resolves them in its own view), `..` of the root is the root, and `..`
//! elsewhere must land on an inode the guest already holds. Files are opened again through
//! `/proc/self/fd` (opened before any sandboxing) to get read/write fds from the `O_PATH` ones.

use super::abi::{self, Attr, EntryOut};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{Mode, SFlag};
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub type FsResult<T> = Result<T, Errno>;

/// How long the guest may cache entries and attributes (seconds): short enough that host-side
/// changes show up quickly, long enough to spare a GETATTR per access.
const CACHE_SECONDS: u64 = 1;

/// Longest name a component may have (NAME_MAX).
const NAME_MAX: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("--shared-dir {path}: {source}: give an existing directory this user can read")]
    SharedDir { path: String, source: Errno },
    #[error("opening /proc/self/fd: {0}: /proc must be mounted (files are reopened through it)")]
    Proc(Errno),
}

/// One host file the guest holds a reference to.
struct Inode {
    /// `O_PATH | O_NOFOLLOW` fd of the file itself.
    fd: OwnedFd,
    /// (st_dev, st_ino): the same host file is the same node id, however it was reached.
    key: (u64, u64),
    /// `S_IFMT` bits of the host file.
    kind: u32,
}

struct InodeEntry {
    inode: Arc<Inode>,
    /// Lookups the guest has not yet forgotten.
    lookups: u64,
}

struct InodeTable {
    by_id: HashMap<u64, InodeEntry>,
    by_key: HashMap<(u64, u64), u64>,
    next_id: u64,
}

/// An open file or directory.
struct Handle {
    fd: OwnedFd,
    /// Directories: where the listing stands. The lock also keeps seeking and reading entries
    /// of one directory from interleaving between requests.
    dir: Mutex<DirStream>,
}

/// The listing state of an open directory between READDIR requests.
///
/// The guest continues a listing by asking for the cookie of the last entry it got. Seeking
/// there is not always the same as continuing: on filesystems whose cookies are positions
/// (tmpfs before Linux 6.6), seeking after the guest unlinked entries skips as many entries as
/// were removed, and `rm -rf` then finds the directory not empty. So the stream remembers the
/// cookie it can continue from without a seek, and the entries it read but did not return.
#[derive(Default)]
struct DirStream {
    /// The cookie at which the host fd's position (after `pending`) continues the listing.
    resume_at: Option<u64>,
    /// Entries read from the host but not yet returned, in order.
    pending: std::collections::VecDeque<DirEntry>,
}

/// A directory entry as `getdents64` returns it.
pub struct DirEntry {
    pub ino: u64,
    /// Cookie of the position after this entry.
    pub next: u64,
    pub typ: u8,
    pub name: Vec<u8>,
}

pub struct PassthroughFs {
    proc_fds: OwnedFd,
    inodes: Mutex<InodeTable>,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_handle: AtomicU64,
    readonly: bool,
}

fn stat_fd(fd: BorrowedFd<'_>) -> FsResult<libc::stat> {
    nix::sys::stat::fstatat(
        fd,
        "",
        AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
    )
}

fn attr_of(st: &libc::stat) -> Attr {
    Attr {
        ino: st.st_ino,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: st.st_atime as u64,
        mtime: st.st_mtime as u64,
        ctime: st.st_ctime as u64,
        atimensec: st.st_atime_nsec as u32,
        mtimensec: st.st_mtime_nsec as u32,
        ctimensec: st.st_ctime_nsec as u32,
        mode: st.st_mode,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// A name as it may appear as one path component: not empty, no `/`, no NUL, not too long.
/// `.` and `..` pass; callers that create or remove refuse them separately.
pub fn component(name: &[u8]) -> FsResult<CString> {
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(if name.is_empty() {
            Errno::EINVAL
        } else {
            Errno::ENAMETOOLONG
        });
    }
    if name.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    CString::new(name).map_err(|_| Errno::EINVAL)
}

/// A component that names a new or removed entry: `.` and `..` are refused.
fn new_component(name: &[u8]) -> FsResult<CString> {
    if name == b"." || name == b".." {
        return Err(Errno::EINVAL);
    }
    component(name)
}

/// Open flags the guest may pass on: access mode, append, truncate, sync and the like. Creation,
/// no-follow (the proc reopen is a magic link), no-ctty and direct I/O (the guest's page cache
/// sits above this) are decided here, not by the guest.
fn open_flags(guest: u32) -> OFlag {
    let flags = OFlag::from_bits_truncate(guest as libc::c_int);
    (flags
        - (OFlag::O_CREAT
            | OFlag::O_EXCL
            | OFlag::O_NOCTTY
            | OFlag::O_NOFOLLOW
            | OFlag::O_DIRECT
            | OFlag::O_PATH))
        | OFlag::O_CLOEXEC
}

fn writes(flags: OFlag) -> bool {
    let acc = flags & OFlag::O_ACCMODE;
    acc == OFlag::O_WRONLY || acc == OFlag::O_RDWR || flags.contains(OFlag::O_TRUNC)
}

impl PassthroughFs {
    /// Opens the shared directory and /proc/self/fd; call before any sandboxing.
    pub fn new(shared_dir: &Path, readonly: bool) -> Result<Self, SetupError> {
        let root = nix::fcntl::open(
            shared_dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|source| SetupError::SharedDir {
            path: shared_dir.display().to_string(),
            source,
        })?;
        // The directory must be readable, not just reachable.
        nix::fcntl::openat(
            &root,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|source| SetupError::SharedDir {
            path: shared_dir.display().to_string(),
            source,
        })?;
        let proc_fds = nix::fcntl::open(
            "/proc/self/fd",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(SetupError::Proc)?;
        let st = stat_fd(root.as_fd()).map_err(|source| SetupError::SharedDir {
            path: shared_dir.display().to_string(),
            source,
        })?;
        let key = (st.st_dev, st.st_ino);
        let mut table = InodeTable {
            by_id: HashMap::new(),
            by_key: HashMap::new(),
            next_id: abi::ROOT_ID + 1,
        };
        table.by_key.insert(key, abi::ROOT_ID);
        table.by_id.insert(
            abi::ROOT_ID,
            InodeEntry {
                inode: Arc::new(Inode {
                    fd: root,
                    key,
                    kind: st.st_mode & libc::S_IFMT,
                }),
                lookups: 1,
            },
        );
        Ok(Self {
            proc_fds,
            inodes: Mutex::new(table),
            handles: RwLock::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            readonly,
        })
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    fn write_check(&self) -> FsResult<()> {
        if self.readonly {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, InodeTable> {
        // A panic while holding the lock cannot leave the maps half-updated (each update is one
        // insert or remove), so a poisoned lock is still consistent.
        self.inodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn inode(&self, id: u64) -> FsResult<Arc<Inode>> {
        self.table()
            .by_id
            .get(&id)
            .map(|e| e.inode.clone())
            .ok_or(Errno::EBADF)
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    fn new_handle(&self, fd: OwnedFd) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                fh,
                Arc::new(Handle {
                    fd,
                    dir: Mutex::new(DirStream::default()),
                }),
            );
        fh
    }

    /// `/proc/self/fd/N` for an inode's O_PATH fd, relative to the kept proc fd.
    fn proc_name(inode: &Inode) -> CString {
        // Digits only: never contains NUL.
        CString::new(inode.fd.as_raw_fd().to_string()).unwrap_or_default()
    }

    /// Opens a real fd (not O_PATH) for an inode.
    fn reopen(&self, inode: &Inode, flags: OFlag) -> FsResult<OwnedFd> {
        if inode.kind == libc::S_IFLNK {
            return Err(Errno::ELOOP);
        }
        nix::fcntl::openat(
            &self.proc_fds,
            Self::proc_name(inode).as_c_str(),
            flags,
            Mode::empty(),
        )
    }

    fn entry(id: u64, st: &libc::stat) -> EntryOut {
        EntryOut {
            nodeid: id,
            generation: 0,
            entry_valid: CACHE_SECONDS,
            attr_valid: CACHE_SECONDS,
            entry_valid_nsec: 0,
            attr_valid_nsec: 0,
            attr: attr_of(st),
        }
    }

    /// Registers one more guest reference to the host file behind `fd`.
    fn remember(&self, fd: OwnedFd, st: &libc::stat) -> u64 {
        let key = (st.st_dev, st.st_ino);
        let mut table = self.table();
        if let Some(&id) = table.by_key.get(&key) {
            if let Some(entry) = table.by_id.get_mut(&id) {
                entry.lookups += 1;
                return id;
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        table.by_key.insert(key, id);
        table.by_id.insert(
            id,
            InodeEntry {
                inode: Arc::new(Inode {
                    fd,
                    key,
                    kind: st.st_mode & libc::S_IFMT,
                }),
                lookups: 1,
            },
        );
        id
    }

    /// Adds a reference to an inode the table already holds.
    fn hold(&self, id: u64) -> FsResult<EntryOut> {
        let inode = self.inode(id)?;
        let st = stat_fd(inode.fd.as_fd())?;
        let mut table = self.table();
        let entry = table.by_id.get_mut(&id).ok_or(Errno::ENOENT)?;
        entry.lookups += 1;
        Ok(Self::entry(id, &st))
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<EntryOut> {
        let name = component(name)?;
        match name.as_bytes() {
            b"." => return self.hold(parent),
            b".." if parent == abi::ROOT_ID => return self.hold(abi::ROOT_ID),
            b".." => {
                // Allowed only onto a directory the guest already holds: one inside the share.
                let dir = self.inode(parent)?;
                let fd = nix::fcntl::openat(
                    &dir.fd,
                    "..",
                    OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                let st = stat_fd(fd.as_fd())?;
                let known = self.table().by_key.get(&(st.st_dev, st.st_ino)).copied();
                return match known {
                    Some(id) => self.hold(id),
                    None => Err(Errno::EACCES),
                };
            }
            _ => {}
        }
        let dir = self.inode(parent)?;
        if dir.kind != libc::S_IFDIR {
            return Err(Errno::ENOTDIR);
        }
        let fd = nix::fcntl::openat(
            &dir.fd,
            name.as_c_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let st = stat_fd(fd.as_fd())?;
        let id = self.remember(fd, &st);
        Ok(Self::entry(id, &st))
    }

    pub fn forget(&self, id: u64, count: u64) {
        if id == abi::ROOT_ID {
            return;
        }
        let mut table = self.table();
        let gone = match table.by_id.get_mut(&id) {
            Some(entry) => {
                entry.lookups = entry.lookups.saturating_sub(count);
                entry.lookups == 0
            }
            None => false,
        };
        if gone {
            if let Some(entry) = table.by_id.remove(&id) {
                table.by_key.remove(&entry.inode.key);
            }
        }
    }

    /// The guest unmounted (DESTROY): every reference and open file goes.
    pub fn forget_all(&self) {
        let mut table = self.table();
        table.by_id.retain(|&id, _| id == abi::ROOT_ID);
        let root_key = table.by_id.get(&abi::ROOT_ID).map(|e| e.inode.key);
        table.by_key.retain(|k, _| Some(*k) == root_key);
        drop(table);
        self.handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    pub fn getattr(&self, id: u64, fh: Option<u64>) -> FsResult<Attr> {
        let st = match fh {
            Some(fh) => nix::sys::stat::fstat(self.handle(fh)?.fd.as_fd())?,
            None => stat_fd(self.inode(id)?.fd.as_fd())?,
        };
        Ok(attr_of(&st))
    }

    pub fn setattr(&self, id: u64, set: &abi::SetattrIn) -> FsResult<Attr> {
        use abi::fattr;
        self.write_check()?;
        let inode = self.inode(id)?;
        let handle = if set.valid & fattr::FH != 0 {
            Some(self.handle(set.fh)?)
        } else {
            None
        };
        if set.valid & fattr::MODE != 0 {
            let mode = Mode::from_bits_truncate(set.mode & 0o7777);
            match &handle {
                Some(h) => nix::sys::stat::fchmod(&h.fd, mode)?,
                None if inode.kind == libc::S_IFLNK => return Err(Errno::EOPNOTSUPP),
                None => nix::sys::stat::fchmodat(
                    &self.proc_fds,
                    Self::proc_name(&inode).as_c_str(),
                    mode,
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )?,
            }
        }
        if set.valid & (fattr::UID | fattr::GID) != 0 {
            let uid = (set.valid & fattr::UID != 0).then(|| nix::unistd::Uid::from_raw(set.uid));
            let gid = (set.valid & fattr::GID != 0).then(|| nix::unistd::Gid::from_raw(set.gid));
            nix::unistd::fchownat(
                &inode.fd,
                "",
                uid,
                gid,
                AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
        }
        if set.valid & fattr::SIZE != 0 {
            let size = i64::try_from(set.size).map_err(|_| Errno::EFBIG)?;
            match &handle {
                Some(h) => nix::unistd::ftruncate(&h.fd, size)?,
                None => {
                    let fd = self.reopen(&inode, OFlag::O_WRONLY | OFlag::O_CLOEXEC)?;
                    nix::unistd::ftruncate(&fd, size)?;
                }
            }
        }
        if set.valid & (fattr::ATIME | fattr::MTIME) != 0 {
            use nix::sys::time::TimeSpec;
            let time = |set_bit: u32, now_bit: u32, secs: u64, nsecs: u32| {
                if set.valid & set_bit == 0 {
                    TimeSpec::UTIME_OMIT
                } else if set.valid & now_bit != 0 {
                    TimeSpec::UTIME_NOW
                } else {
                    TimeSpec::new(secs as i64, i64::from(nsecs))
                }
            };
            let atime = time(fattr::ATIME, fattr::ATIME_NOW, set.atime, set.atimensec);
            let mtime = time(fattr::MTIME, fattr::MTIME_NOW, set.mtime, set.mtimensec);
            match &handle {
                Some(h) => nix::sys::stat::futimens(&h.fd, &atime, &mtime)?,
                None if inode.kind == libc::S_IFLNK => return Err(Errno::EOPNOTSUPP),
                None => nix::sys::stat::utimensat(
                    &self.proc_fds,
                    Self::proc_name(&inode).as_c_str(),
                    &atime,
                    &mtime,
                    nix::sys::stat::UtimensatFlags::FollowSymlink,
                )?,
            }
        }
        Ok(attr_of(&stat_fd(inode.fd.as_fd())?))
    }

    pub fn readlink(&self, id: u64) -> FsResult<Vec<u8>> {
        let inode = self.inode(id)?;
        if inode.kind != libc::S_IFLNK {
            return Err(Errno::EINVAL);
        }
        let target = nix::fcntl::readlinkat(&inode.fd, "")?;
        Ok(std::os::unix::ffi::OsStringExt::into_vec(target))
    }

    /// Looks up what a creating call just made in `dir`.
    fn created(&self, dir: &Inode, name: &CString) -> FsResult<EntryOut> {
        let fd = nix::fcntl::openat(
            &dir.fd,
            name.as_c_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let st = stat_fd(fd.as_fd())?;
        let id = self.remember(fd, &st);
        Ok(Self::entry(id, &st))
    }

    pub fn symlink(&self, parent: u64, name: &[u8], target: &[u8]) -> FsResult<EntryOut> {
        self.write_check()?;
        let name = new_component(name)?;
        let target = CString::new(target).map_err(|_| Errno::EINVAL)?;
        let dir = self.inode(parent)?;
        nix::unistd::symlinkat(target.as_c_str(), &dir.fd, name.as_c_str())?;
        self.created(&dir, &name)
    }

    pub fn mknod(&self, parent: u64, name: &[u8], mode: u32, rdev: u32) -> FsResult<EntryOut> {
        self.write_check()?;
        let name = new_component(name)?;
        let kind = mode & libc::S_IFMT;
        // Device nodes would need CAP_MKNOD and give the guest access to host devices.
        if !matches!(kind, libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK) {
            return Err(Errno::EPERM);
        }
        let dir = self.inode(parent)?;
        nix::sys::stat::mknodat(
            &dir.fd,
            name.as_c_str(),
            SFlag::from_bits_truncate(kind),
            Mode::from_bits_truncate(mode & 0o7777),
            u64::from(rdev),
        )?;
        self.created(&dir, &name)
    }

    pub fn mkdir(&self, parent: u64, name: &[u8], mode: u32) -> FsResult<EntryOut> {
        self.write_check()?;
        let name = new_component(name)?;
        let dir = self.inode(parent)?;
        nix::sys::stat::mkdirat(
            &dir.fd,
            name.as_c_str(),
            Mode::from_bits_truncate(mode & 0o7777),
        )?;
        self.created(&dir, &name)
    }

    pub fn unlink(&self, parent: u64, name: &[u8], dir_too: bool) -> FsResult<()> {
        self.write_check()?;
        let name = new_component(name)?;
        let dir = self.inode(parent)?;
        let flags = if dir_too {
            nix::unistd::UnlinkatFlags::RemoveDir
        } else {
            nix::unistd::UnlinkatFlags::NoRemoveDir
        };
        nix::unistd::unlinkat(&dir.fd, name.as_c_str(), flags)
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        self.write_check()?;
        let name = new_component(name)?;
        let new_name = new_component(new_name)?;
        let allowed = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE;
        if flags & !allowed != 0 {
            return Err(Errno::EINVAL);
        }
        let from = self.inode(parent)?;
        let to = self.inode(new_parent)?;
        nix::fcntl::renameat2(
            &from.fd,
            name.as_c_str(),
            &to.fd,
            new_name.as_c_str(),
            RenameFlags::from_bits_truncate(flags),
        )
    }

    pub fn link(&self, old: u64, new_parent: u64, new_name: &[u8]) -> FsResult<EntryOut> {
        self.write_check()?;
        let new_name = new_component(new_name)?;
        let target = self.inode(old)?;
        if target.kind == libc::S_IFDIR {
            return Err(Errno::EPERM);
        }
        let dir = self.inode(new_parent)?;
        // The source is an inode the guest holds (inside the share); following the proc magic
        // link links that very file, which is what the guest named.
        nix::unistd::linkat(
            &self.proc_fds,
            Self::proc_name(&target).as_c_str(),
            &dir.fd,
            new_name.as_c_str(),
            AtFlags::AT_SYMLINK_FOLLOW,
        )?;
        self.created(&dir, &new_name)
    }

    pub fn open(&self, id: u64, flags: u32) -> FsResult<u64> {
        let flags = open_flags(flags);
        if writes(flags) {
            self.write_check()?;
        }
        let inode = self.inode(id)?;
        if inode.kind == libc::S_IFDIR && writes(flags) {
            return Err(Errno::EISDIR);
        }
        let fd = self.reopen(&inode, flags)?;
        Ok(self.new_handle(fd))
    }

    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: u32,
    ) -> FsResult<(EntryOut, u64)> {
        self.write_check()?;
        let name = new_component(name)?;
        let dir = self.inode(parent)?;
        let flags = open_flags(flags) | OFlag::O_CREAT | OFlag::O_NOFOLLOW;
        let fd = nix::fcntl::openat(
            &dir.fd,
            name.as_c_str(),
            flags,
            Mode::from_bits_truncate(mode & 0o7777),
        )?;
        let entry = self.created(&dir, &name)?;
        Ok((entry, self.new_handle(fd)))
    }

    pub fn release(&self, fh: u64) {
        self.handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }

    /// The fd of an open file, for READ and WRITE (which move data themselves).
    pub fn with_file<T>(&self, fh: u64, f: impl FnOnce(BorrowedFd<'_>) -> T) -> FsResult<T> {
        let handle = self.handle(fh)?;
        Ok(f(handle.fd.as_fd()))
    }

    pub fn statfs(&self, id: u64) -> FsResult<abi::Kstatfs> {
        let inode = self.inode(id)?;
        let st = nix::sys::statfs::fstatfs(&inode.fd)?;
        let mut out = abi::Kstatfs {
            blocks: st.blocks(),
            bfree: st.blocks_free(),
            bavail: st.blocks_available(),
            files: st.files(),
            ffree: st.files_free(),
            bsize: st.block_size() as u32,
            namelen: st.maximum_name_length() as u32,
            frsize: st.block_size() as u32,
            ..Default::default()
        };
        if out.namelen == 0 {
            out.namelen = NAME_MAX as u32;
        }
        Ok(out)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let handle = self.handle(fh)?;
        if datasync {
            nix::unistd::fdatasync(&handle.fd)
        } else {
            nix::unistd::fsync(&handle.fd)
        }
    }

    pub fn opendir(&self, id: u64) -> FsResult<u64> {
        let inode = self.inode(id)?;
        if inode.kind != libc::S_IFDIR {
            return Err(Errno::ENOTDIR);
        }
        let fd = nix::fcntl::openat(
            &inode.fd,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(self.new_handle(fd))
    }

    /// Entries of an open directory from position `offset` on; `take` says, for each, whether
    /// it fit in the reply (the first that does not ends the listing).
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut take: impl FnMut(&DirEntry) -> bool,
    ) -> FsResult<()> {
        let handle = self.handle(fh)?;
        let mut stream = handle.dir.lock().unwrap_or_else(|p| p.into_inner());
        let stream = &mut *stream;
        if stream.resume_at != Some(offset) {
            stream.pending.clear();
            stream.resume_at = None;
            let pos = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
            nix::unistd::lseek(&handle.fd, pos, nix::unistd::Whence::SeekSet)?;
        }
        // Only a listing that ends normally may be continued without a seek.
        stream.resume_at = None;
        let mut at_cookie = offset;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            while let Some(entry) = stream.pending.front() {
                if !take(entry) {
                    stream.resume_at = Some(at_cookie);
                    return Ok(());
                }
                at_cookie = entry.next;
                stream.pending.pop_front();
            }
            if read_entries(handle.fd.as_fd(), &mut buf, &mut stream.pending)? == 0 {
                stream.resume_at = Some(at_cookie);
                return Ok(());
            }
        }
    }

    pub fn access(&self, id: u64, mask: u32) -> FsResult<()> {
        let inode = self.inode(id)?;
        if mask & libc::W_OK as u32 != 0 && self.readonly {
            return Err(Errno::EROFS);
        }
        if inode.kind == libc::S_IFLNK {
            return Ok(());
        }
        nix::unistd::faccessat(
            &self.proc_fds,
            Self::proc_name(&inode).as_c_str(),
            nix::unistd::AccessFlags::from_bits_truncate(mask as libc::c_int),
            AtFlags::AT_EACCESS,
        )
    }

    pub fn fallocate(&self, fh: u64, mode: u32, offset: u64, length: u64) -> FsResult<()> {
        self.write_check()?;
        let handle = self.handle(fh)?;
        let offset = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let length = i64::try_from(length).map_err(|_| Errno::EINVAL)?;
        nix::fcntl::fallocate(
            &handle.fd,
            nix::fcntl::FallocateFlags::from_bits_truncate(mode as libc::c_int),
            offset,
            length,
        )
    }

    pub fn lseek(&self, fh: u64, offset: u64, whence: u32) -> FsResult<u64> {
        let handle = self.handle(fh)?;
        let whence = match whence as libc::c_int {
            libc::SEEK_SET => nix::unistd::Whence::SeekSet,
            libc::SEEK_CUR => nix::unistd::Whence::SeekCur,
            libc::SEEK_END => nix::unistd::Whence::SeekEnd,
            libc::SEEK_DATA => nix::unistd::Whence::SeekData,
            libc::SEEK_HOLE => nix::unistd::Whence::SeekHole,
            _ => return Err(Errno::EINVAL),
        };
        let offset = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        // A directory listing cannot continue from where the fd was once it moved.
        let mut stream = handle.dir.lock().unwrap_or_else(|p| p.into_inner());
        *stream = DirStream::default();
        let at = nix::unistd::lseek(&handle.fd, offset, whence)?;
        Ok(at as u64)
    }

    /// How many inodes the guest holds (the root included).
    #[cfg(test)]
    pub fn inode_count(&self) -> usize {
        self.table().by_id.len()
    }
}

/// Reads the next batch of entries of the directory `fd` into `into`; returns how many.
fn read_entries(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    into: &mut std::collections::VecDeque<DirEntry>,
) -> FsResult<usize> {
    // SAFETY: getdents64 writes at most `buf.len()` bytes into the buffer, which lives across
    // the call; the fd is an open directory.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(Errno::last());
    }
    let end = n as usize;
    let mut at = 0usize;
    let mut count = 0;
    // linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name NUL-ended.
    while at + 19 <= end {
        let ino = u64::from_ne_bytes(buf[at..at + 8].try_into().unwrap_or_default());
        let next = u64::from_ne_bytes(buf[at + 8..at + 16].try_into().unwrap_or_default());
        let reclen =
            u16::from_ne_bytes(buf[at + 16..at + 18].try_into().unwrap_or_default()) as usize;
        if reclen < 19 || at + reclen > end {
            return Err(Errno::EIO);
        }
        let raw = &buf[at + 19..at + reclen];
        let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        into.push_back(DirEntry {
            ino,
            next,
            typ: buf[at + 18],
            name: raw[..len].to_vec(),
        });
        count += 1;
        at += reclen;
    }
    Ok(count)
}
