//! `paddock virtiofsd` as a process, driven over its vhost-user socket by the vhost crate's
//! frontend with a split virtqueue in shared memory, the way a VMM drives it: FUSE requests go in
//! through the request queue and come back through the used ring. Runs under the enforced seccomp
//! filter, as the user paddock switches to; no guest needed.

use paddock_tests::workspace;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: usize = 4 << 20;
const QUEUE: usize = 1; // the first request queue (0 is hiprio)
const QSIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const REQ: u64 = 0x10000;
const REPLY: u64 = 0x100000;

/// Guest memory: a memfd shared with the backend.
struct Memory {
    fd: std::fs::File,
    base: *mut u8,
}

impl Memory {
    fn new() -> Self {
        // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: fd was just created and is owned by nobody else.
        let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(MEM_SIZE as u64).unwrap();
        // SAFETY: maps the whole memfd shared; the mapping lives as long as this struct (never
        // unmapped before the process ends), and the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        Self {
            fd: file,
            base: base.cast(),
        }
    }

    fn write(&self, at: u64, bytes: &[u8]) {
        assert!(at as usize + bytes.len() <= MEM_SIZE);
        // SAFETY: in bounds of the live mapping (checked above); the backend only touches the
        // buffers we hand it after the kick.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(at as usize), bytes.len())
        };
    }

    fn read(&self, at: u64, len: usize) -> Vec<u8> {
        assert!(at as usize + len <= MEM_SIZE);
        let mut out = vec![0u8; len];
        // SAFETY: in bounds of the live mapping (checked above).
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(at as usize), out.as_mut_ptr(), len) };
        out
    }

    fn read_u16(&self, at: u64) -> u16 {
        let b = self.read(at, 2);
        u16::from_le_bytes([b[0], b[1]])
    }
}

/// A running backend and the frontend's end of one queue.
struct Session {
    child: Child,
    frontend: Frontend,
    mem: Memory,
    kick: EventFd,
    call: EventFd,
    next_avail: u16,
    unique: u64,
    socket: std::path::PathBuf,
    _dirs: tempfile::TempDir,
}

fn wait_for(path: &Path, child: &mut Child) {
    let start = Instant::now();
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("paddock virtiofsd exited early: {status}");
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn give_to_paddock(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(path, Some(workspace::TEST_UID), None).unwrap();
    }
}

impl Session {
    fn start(extra: &[&str], prepare: impl FnOnce(&Path)) -> Self {
        let dirs = tempfile::tempdir().unwrap();
        give_to_paddock(dirs.path());
        let share = dirs.path().join("share");
        std::fs::create_dir(&share).unwrap();
        give_to_paddock(&share);
        prepare(&share);
        let socket = dirs.path().join("fs.sock");
        let mut child = Command::new(workspace::paddock_bin())
            .args(workspace::paddock_user_args())
            .arg("virtiofsd")
            .arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&share)
            .args(extra)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start paddock virtiofsd");
        wait_for(&socket, &mut child);
        let mut frontend = Frontend::connect(&socket, 2).expect("connect");
        frontend.set_owner().unwrap();
        let features = frontend.get_features().unwrap();
        let wanted = (1u64 << 32) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        assert_eq!(features & wanted, wanted, "features {features:#x}");
        frontend.set_features(wanted).unwrap();
        let protocol = frontend.get_protocol_features().unwrap();
        assert!(protocol.contains(VhostUserProtocolFeatures::MQ));
        frontend
            .set_protocol_features(VhostUserProtocolFeatures::MQ)
            .unwrap();
        assert!(frontend.get_queue_num().unwrap() >= 2);
        let mem = Memory::new();
        frontend
            .set_mem_table(&[VhostUserMemoryRegionInfo {
                guest_phys_addr: 0,
                memory_size: MEM_SIZE as u64,
                userspace_addr: mem.base as u64,
                mmap_offset: 0,
                mmap_handle: mem.fd.as_raw_fd(),
            }])
            .unwrap();
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let call = EventFd::new(0).unwrap();
        frontend.set_vring_num(QUEUE, QSIZE).unwrap();
        frontend
            .set_vring_addr(
                QUEUE,
                &VringConfigData {
                    queue_max_size: QSIZE,
                    queue_size: QSIZE,
                    flags: 0,
                    desc_table_addr: mem.base as u64 + DESC,
                    used_ring_addr: mem.base as u64 + USED,
                    avail_ring_addr: mem.base as u64 + AVAIL,
                    log_addr: None,
                },
            )
            .unwrap();
        frontend.set_vring_base(QUEUE, 0).unwrap();
        frontend.set_vring_call(QUEUE, &call).unwrap();
        frontend.set_vring_kick(QUEUE, &kick).unwrap();
        frontend.set_vring_enable(QUEUE, true).unwrap();
        Self {
            child,
            frontend,
            mem,
            kick,
            call,
            next_avail: 0,
            unique: 0,
            socket,
            _dirs: dirs,
        }
    }

    /// Sends one FUSE request; returns (error, body) of the reply.
    fn call(&mut self, opcode: u32, node: u64, body: &[u8]) -> (i32, Vec<u8>) {
        self.unique += 1;
        let mut req = Vec::new();
        req.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
        req.extend_from_slice(&opcode.to_le_bytes());
        req.extend_from_slice(&self.unique.to_le_bytes());
        req.extend_from_slice(&node.to_le_bytes());
        req.extend_from_slice(&[0u8; 16]); // uid, gid, pid, extlen + padding
        req.extend_from_slice(body);
        self.mem.write(REQ, &req);
        // One chain in flight at a time, always descriptors 0 (the request, readable) and 1
        // (the reply room, writable).
        let mut desc = Vec::new();
        desc.extend_from_slice(&REQ.to_le_bytes());
        desc.extend_from_slice(&(req.len() as u32).to_le_bytes());
        desc.extend_from_slice(&1u16.to_le_bytes()); // NEXT
        desc.extend_from_slice(&1u16.to_le_bytes());
        desc.extend_from_slice(&REPLY.to_le_bytes());
        desc.extend_from_slice(&(256u32 * 1024).to_le_bytes());
        desc.extend_from_slice(&2u16.to_le_bytes()); // WRITE
        desc.extend_from_slice(&0u16.to_le_bytes());
        self.mem.write(DESC, &desc);
        let slot = (self.next_avail % QSIZE) as u64;
        self.mem.write(AVAIL + 4 + slot * 2, &0u16.to_le_bytes());
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.next_avail = self.next_avail.wrapping_add(1);
        self.mem.write(AVAIL + 2, &self.next_avail.to_le_bytes());
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.kick.write(1).unwrap();
        let start = Instant::now();
        while self.mem.read_u16(USED + 2) != self.next_avail {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no reply to opcode {opcode}"
            );
            let mut pfd = libc::pollfd {
                fd: self.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polls one live fd for up to 100 ms.
            unsafe { libc::poll(&mut pfd, 1, 100) };
            if pfd.revents & libc::POLLIN != 0 {
                self.call.read().unwrap();
            }
        }
        let elem = self.mem.read(USED + 4 + slot * 8, 8);
        let len = u32::from_le_bytes(elem[4..8].try_into().unwrap()) as usize;
        let reply = self.mem.read(REPLY, len);
        assert!(len >= 16, "opcode {opcode}: reply of {len} bytes");
        let out_len = u32::from_le_bytes(reply[0..4].try_into().unwrap()) as usize;
        let error = i32::from_le_bytes(reply[4..8].try_into().unwrap());
        let unique = u64::from_le_bytes(reply[8..16].try_into().unwrap());
        assert_eq!((out_len, unique), (len, self.unique));
        (error, reply[16..].to_vec())
    }

    fn thread_seccomp_modes(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let tasks = format!("/proc/{}/task", self.child.id());
        for task in std::fs::read_dir(tasks).unwrap() {
            let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
            let field = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            out.push((field("Name:"), field("Seccomp:")));
        }
        out
    }

    /// Disconnects; the backend must end by itself, successfully, its socket gone.
    fn finish(mut self) -> std::process::ExitStatus {
        assert!(
            !self.socket.exists(),
            "the socket is removed once connected"
        );
        drop(self.frontend);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                panic!("paddock virtiofsd did not end when the frontend went away");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn name(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

const INIT: u32 = 26;
const LOOKUP: u32 = 1;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const CREATE: u32 = 35;
const MKDIR: u32 = 9;

fn init(s: &mut Session) {
    let mut body = Vec::new();
    for v in [7u32, 37, 0x20000, 1 << 13] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body.extend_from_slice(&[0u8; 48]);
    let (err, reply) = s.call(INIT, 0, &body);
    assert_eq!(err, 0);
    assert_eq!(&reply[0..8], &[7, 0, 0, 0, 31, 0, 0, 0]);
}

#[test]
fn serves_fuse_requests_over_vhost_user_under_its_seccomp_filter() {
    let mut s = Session::start(&[], |share| {
        std::fs::write(share.join("hello.txt"), b"hello from the host\n").unwrap();
        give_to_paddock(&share.join("hello.txt"));
    });
    init(&mut s);
    let (err, entry) = s.call(LOOKUP, 1, &name("hello.txt"));
    assert_eq!(err, 0);
    let node = u64_at(&entry, 0);
    assert_eq!(u64_at(&entry, 40 + 8), 20, "size in the entry's attributes");

    let (err, open) = s.call(OPEN, node, &[0u8; 8]);
    assert_eq!(err, 0);
    let fh = u64_at(&open, 0);
    let mut read = Vec::new();
    read.extend_from_slice(&fh.to_le_bytes());
    read.extend_from_slice(&0u64.to_le_bytes());
    read.extend_from_slice(&4096u32.to_le_bytes());
    read.extend_from_slice(&[0u8; 20]);
    let (err, data) = s.call(READ, node, &read);
    assert_eq!(err, 0);
    assert_eq!(data, b"hello from the host\n");

    // CREATE + WRITE: the host sees the guest's bytes, owned by the backend's user.
    let mut create = Vec::new();
    for v in [libc::O_RDWR as u32, libc::S_IFREG | 0o644, 0o022, 0] {
        create.extend_from_slice(&v.to_le_bytes());
    }
    create.extend_from_slice(&name("from-guest"));
    let (err, reply) = s.call(CREATE, 1, &create);
    assert_eq!(err, 0);
    let new_node = u64_at(&reply, 0);
    let new_fh = u64_at(&reply, 128);
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let mut write = Vec::new();
    write.extend_from_slice(&new_fh.to_le_bytes());
    write.extend_from_slice(&0u64.to_le_bytes());
    write.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    write.extend_from_slice(&[0u8; 20]);
    write.extend_from_slice(&payload);
    let (err, reply) = s.call(WRITE, new_node, &write);
    assert_eq!(err, 0);
    assert_eq!(&reply[..4], &(payload.len() as u32).to_le_bytes());
    let share = s._dirs.path().join("share");
    assert_eq!(std::fs::read(share.join("from-guest")).unwrap(), payload);
    let owner = std::fs::metadata(share.join("from-guest")).unwrap().uid();
    // SAFETY: geteuid has no preconditions.
    let expected = if unsafe { libc::geteuid() } == 0 {
        workspace::TEST_UID
    } else {
        // SAFETY: as above.
        unsafe { libc::geteuid() }
    };
    assert_eq!(owner, expected, "files are created as paddock's user");

    // `..` at the root is the root; a name with a slash is refused.
    let (err, entry) = s.call(LOOKUP, 1, &name(".."));
    assert_eq!((err, u64_at(&entry, 0)), (0, 1));
    let (err, _) = s.call(LOOKUP, 1, &name("../etc"));
    assert_eq!(err, -libc::EINVAL);

    // Every thread of the backend (main, connection, queue workers) is filtered.
    let threads = s.thread_seccomp_modes();
    assert!(threads.len() >= 3, "{threads:?}");
    for (thread, mode) in &threads {
        assert_eq!(
            mode, "2",
            "thread {thread} is not under seccomp: {threads:?}"
        );
    }

    let status = s.finish();
    assert!(
        status.success(),
        "backend ended with {status} (159 = a denied system call)"
    );
}

#[test]
fn read_only_share_answers_erofs() {
    let mut s = Session::start(&["--readonly"], |_| {});
    init(&mut s);
    let mut mkdir = Vec::new();
    mkdir.extend_from_slice(&0o755u32.to_le_bytes());
    mkdir.extend_from_slice(&0u32.to_le_bytes());
    mkdir.extend_from_slice(&name("d"));
    let (err, _) = s.call(MKDIR, 1, &mkdir);
    assert_eq!(err, -libc::EROFS);
    assert!(s.finish().success());
}

#[test]
fn namespace_sandbox_serves_the_same_share() {
    let mut s = Session::start(&["--sandbox", "namespace"], |share| {
        std::fs::create_dir(share.join("sub")).unwrap();
        give_to_paddock(&share.join("sub"));
    });
    init(&mut s);
    let (err, entry) = s.call(LOOKUP, 1, &name("sub"));
    assert_eq!(err, 0);
    let sub = u64_at(&entry, 0);
    let mut create = Vec::new();
    for v in [libc::O_RDWR as u32, libc::S_IFREG | 0o644, 0o022, 0] {
        create.extend_from_slice(&v.to_le_bytes());
    }
    create.extend_from_slice(&name("made-in-namespace"));
    let (err, _) = s.call(CREATE, sub, &create);
    assert_eq!(err, 0);
    assert!(s._dirs.path().join("share/sub/made-in-namespace").exists());
    assert!(s.finish().success());
}

#[test]
fn bad_shared_dir_is_one_clear_line_and_exit_2() {
    let dirs = tempfile::tempdir().unwrap();
    give_to_paddock(dirs.path());
    let out = Command::new(workspace::paddock_bin())
        .args(workspace::paddock_user_args())
        .arg("virtiofsd")
        .arg("--socket-path")
        .arg(dirs.path().join("s"))
        .arg("--shared-dir")
        .arg(dirs.path().join("missing"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--shared-dir") && err.contains("missing"),
        "{err}"
    );
    assert!(!dirs.path().join("s").exists(), "nothing left behind");
}
