//! The FUSE wire format as the Linux virtio-fs driver speaks it (protocol 7.31 and later), written
//! from `include/uapi/linux/fuse.h`. Every struct is plain little-endian data read from or written
//! to descriptor buffers as bytes.

use vm_memory::ByteValued;

/// The protocol version this server answers INIT with.
pub const KERNEL_VERSION: u32 = 7;
pub const KERNEL_MINOR_VERSION: u32 = 31;
/// The node id of the shared directory itself.
pub const ROOT_ID: u64 = 1;

pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
}

/// INIT flags (`fuse_init_in.flags` / `fuse_init_out.flags`).
pub mod init_flags {
    pub const ASYNC_READ: u32 = 1 << 0;
    pub const ATOMIC_O_TRUNC: u32 = 1 << 3;
    pub const BIG_WRITES: u32 = 1 << 5;
    pub const AUTO_INVAL_DATA: u32 = 1 << 12;
    pub const DO_READDIRPLUS: u32 = 1 << 13;
    pub const READDIRPLUS_AUTO: u32 = 1 << 14;
    pub const ASYNC_DIO: u32 = 1 << 15;
    pub const PARALLEL_DIROPS: u32 = 1 << 18;
    pub const MAX_PAGES: u32 = 1 << 22;
    pub const CACHE_SYMLINKS: u32 = 1 << 23;
}

/// `fuse_setattr_in.valid` bits.
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
}

pub const GETATTR_FH: u32 = 1 << 0;
pub const FSYNC_FDATASYNC: u32 = 1 << 0;

macro_rules! wire_struct {
    ($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name { $(pub $field: $ty),* }
        // SAFETY: a repr(C) struct of integers (and arrays of them) laid out without implicit
        // padding (every field is naturally aligned by the layout above, checked by the size
        // tests below): every byte pattern is a valid value.
        unsafe impl ByteValued for $name {}
    };
}

wire_struct!(InHeader {
    len: u32,
    opcode: u32,
    unique: u64,
    nodeid: u64,
    uid: u32,
    gid: u32,
    pid: u32,
    total_extlen: u16,
    padding: u16
});
wire_struct!(OutHeader {
    len: u32,
    error: i32,
    unique: u64
});
wire_struct!(Attr {
    ino: u64,
    size: u64,
    blocks: u64,
    atime: u64,
    mtime: u64,
    ctime: u64,
    atimensec: u32,
    mtimensec: u32,
    ctimensec: u32,
    mode: u32,
    nlink: u32,
    uid: u32,
    gid: u32,
    rdev: u32,
    blksize: u32,
    flags: u32,
});
wire_struct!(EntryOut {
    nodeid: u64,
    generation: u64,
    entry_valid: u64,
    attr_valid: u64,
    entry_valid_nsec: u32,
    attr_valid_nsec: u32,
    attr: Attr
});
wire_struct!(AttrOut {
    attr_valid: u64,
    attr_valid_nsec: u32,
    dummy: u32,
    attr: Attr
});
wire_struct!(ForgetIn { nlookup: u64 });
wire_struct!(ForgetOne {
    nodeid: u64,
    nlookup: u64
});
wire_struct!(BatchForgetIn {
    count: u32,
    dummy: u32
});
wire_struct!(GetattrIn {
    getattr_flags: u32,
    dummy: u32,
    fh: u64
});
wire_struct!(MknodIn {
    mode: u32,
    rdev: u32,
    umask: u32,
    padding: u32
});
wire_struct!(MkdirIn {
    mode: u32,
    umask: u32
});
wire_struct!(RenameIn { newdir: u64 });
wire_struct!(Rename2In {
    newdir: u64,
    flags: u32,
    padding: u32
});
wire_struct!(LinkIn { oldnodeid: u64 });
wire_struct!(SetattrIn {
    valid: u32,
    padding: u32,
    fh: u64,
    size: u64,
    lock_owner: u64,
    atime: u64,
    mtime: u64,
    ctime: u64,
    atimensec: u32,
    mtimensec: u32,
    ctimensec: u32,
    mode: u32,
    unused4: u32,
    uid: u32,
    gid: u32,
    unused5: u32,
});
wire_struct!(OpenIn {
    flags: u32,
    open_flags: u32
});
wire_struct!(CreateIn {
    flags: u32,
    mode: u32,
    umask: u32,
    open_flags: u32
});
wire_struct!(OpenOut {
    fh: u64,
    open_flags: u32,
    padding: u32
});
wire_struct!(ReleaseIn {
    fh: u64,
    flags: u32,
    release_flags: u32,
    lock_owner: u64
});
wire_struct!(FlushIn {
    fh: u64,
    unused: u32,
    padding: u32,
    lock_owner: u64
});
wire_struct!(ReadIn {
    fh: u64,
    offset: u64,
    size: u32,
    read_flags: u32,
    lock_owner: u64,
    flags: u32,
    padding: u32
});
wire_struct!(WriteIn {
    fh: u64,
    offset: u64,
    size: u32,
    write_flags: u32,
    lock_owner: u64,
    flags: u32,
    padding: u32
});
wire_struct!(WriteOut {
    size: u32,
    padding: u32
});
wire_struct!(Kstatfs {
    blocks: u64,
    bfree: u64,
    bavail: u64,
    files: u64,
    ffree: u64,
    bsize: u32,
    namelen: u32,
    frsize: u32,
    padding: u32,
    spare: [u32; 6]
});
wire_struct!(FsyncIn {
    fh: u64,
    fsync_flags: u32,
    padding: u32
});
wire_struct!(AccessIn {
    mask: u32,
    padding: u32
});
wire_struct!(
    /// The first 16 bytes: what every kernel sends; newer ones append flags2 and reserved words.
    InitIn { major: u32, minor: u32, max_readahead: u32, flags: u32 });
wire_struct!(InitOut {
    major: u32,
    minor: u32,
    max_readahead: u32,
    flags: u32,
    max_background: u16,
    congestion_threshold: u16,
    max_write: u32,
    time_gran: u32,
    max_pages: u16,
    map_alignment: u16,
    flags2: u32,
    unused: [u32; 7],
});
wire_struct!(FallocateIn {
    fh: u64,
    offset: u64,
    length: u64,
    mode: u32,
    padding: u32
});
wire_struct!(LseekIn {
    fh: u64,
    offset: u64,
    whence: u32,
    padding: u32
});
wire_struct!(LseekOut { offset: u64 });
wire_struct!(
    /// A READDIR entry's fixed part; the name follows, the whole padded to 8 bytes.
    Dirent { ino: u64, off: u64, namelen: u32, typ: u32 });

/// Size of a READDIR entry with a name of `namelen` bytes, padding included.
pub fn dirent_size(namelen: usize) -> usize {
    (std::mem::size_of::<Dirent>() + namelen + 7) & !7
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn sizes_match_the_kernel_header() {
        assert_eq!(size_of::<InHeader>(), 40);
        assert_eq!(size_of::<OutHeader>(), 16);
        assert_eq!(size_of::<Attr>(), 88);
        assert_eq!(size_of::<EntryOut>(), 128);
        assert_eq!(size_of::<AttrOut>(), 104);
        assert_eq!(size_of::<SetattrIn>(), 88);
        assert_eq!(size_of::<ReadIn>(), 40);
        assert_eq!(size_of::<WriteIn>(), 40);
        assert_eq!(size_of::<Kstatfs>(), 80);
        assert_eq!(size_of::<InitOut>(), 64);
        assert_eq!(size_of::<ReleaseIn>(), 24);
        assert_eq!(size_of::<FallocateIn>(), 32);
        assert_eq!(size_of::<Dirent>(), 24);
        assert_eq!(dirent_size(1), 32);
        assert_eq!(dirent_size(8), 32);
        assert_eq!(dirent_size(9), 40);
    }
}
