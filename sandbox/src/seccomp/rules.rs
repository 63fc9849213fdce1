//! The allow lists, as data: one entry per system call (and per argument value where an argument is
//! checked), each with the reason it is there. Everything not listed is denied.
//!
//! Found by `strace -f` on `paddock run` with tiny guests (see docs/security.md), plus what std and
//! glibc do around a thread's end. Argument values are checked as 32-bit words: ioctl requests,
//! socket families, fcntl/prctl/madvise operations and clone flags all fit in 32 bits.

use vmm::threads::ThreadCategory;

/// When an allowed call is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    Always,
    /// Argument `arg` equals `value` (named `name` in the policy table).
    ArgIs {
        arg: u8,
        value: u64,
        name: &'static str,
    },
    /// Argument `arg` has none of the bits of `mask` set.
    ArgLacks {
        arg: u8,
        mask: u64,
        name: &'static str,
    },
}

impl std::fmt::Display for When {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            When::Always => f.write_str("any arguments"),
            When::ArgIs { arg, value, name } => write!(f, "arg{arg} == {name} ({value:#x})"),
            When::ArgLacks { arg, mask, name } => write!(f, "arg{arg} without {name} ({mask:#x})"),
        }
    }
}

/// One allowed (system call, condition) pair.
#[derive(Clone, Copy, Debug)]
pub struct Allow {
    pub call: &'static str,
    pub nr: i64,
    pub when: When,
    /// The job, or the seed allowance, this entry serves.
    pub reason: &'static str,
}

const fn always(call: &'static str, nr: i64, reason: &'static str) -> Allow {
    Allow {
        call,
        nr,
        when: When::Always,
        reason,
    }
}

const fn arg_is(
    call: &'static str,
    nr: i64,
    arg: u8,
    value: u64,
    name: &'static str,
    reason: &'static str,
) -> Allow {
    Allow {
        call,
        nr,
        when: When::ArgIs { arg, value, name },
        reason,
    }
}

const fn no_exec(call: &'static str, nr: i64, reason: &'static str) -> Allow {
    Allow {
        call,
        nr,
        when: When::ArgLacks {
            arg: 2,
            mask: libc::PROT_EXEC as u64,
            name: "PROT_EXEC",
        },
        reason,
    }
}

// ioctl request numbers (`_IO`/`_IOR`/`_IOW` encodings, checked against strace of a run).
pub const KVM_RUN: u64 = 0xae80;
pub const KVM_GET_REGS: u64 = 0x8090_ae81;
pub const TUNSETQUEUE: u64 = 0x4004_54d9;
pub const TUNSETOFFLOAD: u64 = 0x4004_54d0;
pub const KVM_SET_GSI_ROUTING: u64 = 0x4008_ae6a;
pub const KVM_IOEVENTFD: u64 = 0x4040_ae79;

/// The flags glibc's pthread_create passes to clone(2): a thread, never a process.
pub const THREAD_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;

/// Every thread: what std, glibc and the SIGSYS reporter need for a thread to live and end.
#[rustfmt::skip]
const EVERY_THREAD: &[Allow] = &[
    always("write", libc::SYS_write, "console output, eventfd/irqfd signalling, and the SIGSYS report itself"),
    always("futex", libc::SYS_futex, "std Mutex/Condvar/Once and thread join"),
    always("rt_sigreturn", libc::SYS_rt_sigreturn, "return from the vCPU kick signal (SIGRTMIN) handler"),
    always("rt_sigprocmask", libc::SYS_rt_sigprocmask, "glibc blocks signals while a thread ends"),
    always("sigaltstack", libc::SYS_sigaltstack, "std removes a thread's signal stack when it ends"),
    always("munmap", libc::SYS_munmap, "freeing memory: a thread's signal stack, a vCPU's kvm_run page"),
    arg_is("madvise", libc::SYS_madvise, 2, libc::MADV_DONTNEED as u64, "MADV_DONTNEED", "glibc returns an ended thread's stack to the kernel"),
    no_exec("mmap", libc::SYS_mmap, "allocation (malloc arenas, signal stacks); never executable"),
    no_exec("mprotect", libc::SYS_mprotect, "guard pages and arena growth; never executable"),
    always("close", libc::SYS_close, "a thread drops its fds (the vCPU fd when its thread ends)"),
    arg_is("fcntl", libc::SYS_fcntl, 1, libc::F_GETFD as u64, "F_GETFD", "std checks an fd is open before closing it"),
    always("exit", libc::SYS_exit, "a thread ends"),
    always("clock_gettime", libc::SYS_clock_gettime, "log timestamps and std's Instant (timed waits); a real system call where the clocksource has no vDSO path, as in the KVM test host"),
    always("exit_group", libc::SYS_exit_group, "the process ends (also the SIGSYS reporter's _exit)"),
];

/// vCPU threads: KVM_RUN and the register read for fault reports, nothing else.
#[rustfmt::skip]
const VCPU: &[Allow] = &[
    arg_is("ioctl", libc::SYS_ioctl, 1, KVM_RUN, "KVM_RUN", "run the vCPU (vcpu.rs run_once)"),
    arg_is("ioctl", libc::SYS_ioctl, 1, KVM_GET_REGS, "KVM_GET_REGS", "guest RIP for a vCPU fault report (vcpu.rs Vcpu::rip)"),
    arg_is("ioctl", libc::SYS_ioctl, 1, KVM_SET_GSI_ROUTING, "KVM_SET_GSI_ROUTING", "the guest programs an MSI-X vector (an MMIO write): vmm/interrupts.rs rewrites the routing table"),
    arg_is("ioctl", libc::SYS_ioctl, 1, KVM_IOEVENTFD, "KVM_IOEVENTFD", "the guest moves a BAR (a config write): its queue ioeventfds move with it (vmm/pci_bars.rs)"),
];

/// vCPU threads, while a device is active: DRIVER_OK is an MMIO write handled on the vCPU. The
/// device's own set-up (epoll sets, tap offloads and queue attach state) runs on its worker
/// threads; a reset only stops and joins them (an eventfd write and futex waits).
#[rustfmt::skip]
const VCPU_DEVICE_ACTIVATION: &[Allow] = &[
    arg_is("fcntl", libc::SYS_fcntl, 1, libc::F_DUPFD_CLOEXEC as u64, "F_DUPFD_CLOEXEC", "at DRIVER_OK the transport hands each queue a copy of its notify eventfd (virtio/pci.rs activate)"),
];

/// What the spawner thread needs to start others (and have them install their own filters); a new
/// thread also runs these under the spawner's filter until its own is in place.
#[rustfmt::skip]
const SPAWNER: &[Allow] = &[
    arg_is("clone", libc::SYS_clone, 0, THREAD_CLONE_FLAGS, "thread flags", "start a thread (never a process: fork/vfork flags differ)"),
    always("clone3", libc::SYS_clone3, "answered ENOSYS by a second filter, so glibc falls back to clone, whose flags are checked"),
    always("rseq", libc::SYS_rseq, "glibc registers each new thread for restartable sequences"),
    always("set_robust_list", libc::SYS_set_robust_list, "glibc sets up each new thread's robust futexes"),
    arg_is("prctl", libc::SYS_prctl, 0, libc::PR_SET_NAME as u64, "PR_SET_NAME", "std names the new thread (`CPU N/KVM`)"),
    arg_is("prctl", libc::SYS_prctl, 0, libc::PR_GET_NAME as u64, "PR_GET_NAME", "the new thread records its name for SIGSYS reports"),
    arg_is("prctl", libc::SYS_prctl, 0, libc::PR_SET_NO_NEW_PRIVS as u64, "PR_SET_NO_NEW_PRIVS", "set before a filter is installed (already set; idempotent)"),
    arg_is("seccomp", libc::SYS_seccomp, 0, libc::SECCOMP_SET_MODE_FILTER as u64, "SECCOMP_SET_MODE_FILTER", "the new thread installs its own, narrower filter"),
    always("sched_getaffinity", libc::SYS_sched_getaffinity, "std/glibc read the CPU mask when a thread starts"),
    always("gettid", libc::SYS_gettid, "std records the new thread's id"),
    arg_is("sched_setaffinity", libc::SYS_sched_setaffinity, 0, 0, "the calling thread", "--cpus affinity=/emulator=: a new vCPU or net worker pins itself before its own filter goes on (own threads within the cpuset: no capability)"),
    arg_is("sched_setscheduler", libc::SYS_sched_setscheduler, 0, 0, "the calling thread", "--cpus realtime=fifo:PRIO: a new vCPU thread sets SCHED_FIFO before its own filter goes on (needs CAP_SYS_NICE or RLIMIT_RTPRIO)"),
];

/// The main thread after the VM runs (wait, kick, tear down) and the console input thread. It
/// starts threads by asking the spawner thread, so it needs no clone.
#[rustfmt::skip]
const VMM: &[Allow] = &[
    always("read", libc::SYS_read, "the exit/fault eventfds, the SIGTERM/SIGINT signalfd; console input from stdin"),
    always("poll", libc::SYS_poll, "wait for the guest's power-off/reset, a vCPU fault or a shutdown signal (vm.rs Vm::wait)"),
    always("getpid", libc::SYS_getpid, "pthread_kill (the vCPU kick) names the process to tgkill"),
    always("tgkill", libc::SYS_tgkill, "kick a vCPU out of KVM_RUN with SIGRTMIN when the VM stops"),
    always("clock_nanosleep", libc::SYS_clock_nanosleep, "back-off while vCPUs stop and while the guest drains console input"),
];

/// The control API: a Unix socket server, reading /proc for metrics.
#[rustfmt::skip]
const API: &[Allow] = &[
    always("read", libc::SYS_read, "requests and eventfds"),
    arg_is("socket", libc::SYS_socket, 0, libc::AF_UNIX as u64, "AF_UNIX", "the API socket; no other family (netlink audit is the seed's nlmsg_relay, not needed)"),
    always("accept4", libc::SYS_accept4, "accept API clients"),
    always("recvfrom", libc::SYS_recvfrom, "read API requests"),
    always("sendto", libc::SYS_sendto, "write API responses"),
    always("epoll_wait", libc::SYS_epoll_wait, "wait for clients and the stop eventfd"),
    always("epoll_ctl", libc::SYS_epoll_ctl, "watch client sockets"),
    Allow {
        call: "openat",
        nr: libc::SYS_openat,
        when: When::ArgLacks {
            arg: 2,
            mask: (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u64,
            name: "O_WRONLY|O_RDWR|O_CREAT|O_TRUNC",
        },
        reason: "read-only opens of /proc for metrics: seed `proc_type file (getattr open read)`",
    },
    always("newfstatat", libc::SYS_newfstatat, "seed `proc_type file (getattr ...)`: size of a /proc file"),
];

/// A virtio-net queue-pair worker: the tap and eventfds only.
#[rustfmt::skip]
const NET_WORKER: &[Allow] = &[
    always("read", libc::SYS_read, "tap frames to the guest; ioeventfd kicks"),
    always("readv", libc::SYS_readv, "tap frames into scattered guest buffers"),
    always("writev", libc::SYS_writev, "guest frames to the tap with their virtio-net header"),
    always("epoll_create1", libc::SYS_epoll_create1, "each worker creates its own epoll set as it starts (worker.rs Worker::set_up)"),
    always("epoll_wait", libc::SYS_epoll_wait, "wait for the tap and the queue's ioeventfd"),
    always("epoll_ctl", libc::SYS_epoll_ctl, "watch the queue eventfds; toggle tap readiness interest as RX buffers come and go"),
    arg_is("ioctl", libc::SYS_ioctl, 1, TUNSETQUEUE, "TUNSETQUEUE", "worker 0 attaches queue 0 and detaches the rest at activation, and VIRTIO_NET_CTRL_MQ attaches/detaches queues: seed `tun_socket attach_queue`"),
    arg_is("ioctl", libc::SYS_ioctl, 1, TUNSETOFFLOAD, "TUNSETOFFLOAD", "worker 0 applies the offloads the guest negotiated to the tap at activation"),
];

/// A virtio-fs device's link to its vhost-user backend (devices/virtio/fs/link.rs). The socket is
/// connected on the main thread before any filter, so this thread needs neither socket nor
/// connect; it only talks over the connected socket and waits.
#[rustfmt::skip]
const VHOST_USER: &[Allow] = &[
    always("read", libc::SYS_read, "its wake-up eventfd; after a backend hang-up, the queues' kick eventfds"),
    always("poll", libc::SYS_poll, "wait for a request from the device, the backend hanging up, or (backend gone) guest kicks"),
    always("sendmsg", libc::SYS_sendmsg, "vhost-user messages, with the guest RAM fds and the kick/call eventfds as SCM_RIGHTS"),
    always("recvmsg", libc::SYS_recvmsg, "vhost-user replies (REPLY_ACK, GET_FEATURES, GET_VRING_BASE, ...)"),
];

/// The bundled virtiofsd process (`paddock virtiofsd`): FUSE requests carried out with *at calls
/// relative to fds below the shared directory, vhost-user messages, queue eventfds. The socket is
/// bound and the directory opened before the filter goes on, so there is no socket(2), bind(2)
/// or mount(2) here.
#[rustfmt::skip]
const VIRTIOFSD: &[Allow] = &[
    always("read", libc::SYS_read, "queue kick eventfds"),
    always("preadv", libc::SYS_preadv, "FUSE_READ: file data straight into the guest's buffers"),
    always("pwritev", libc::SYS_pwritev, "FUSE_WRITE: file data straight from the guest's buffers"),
    always("openat", libc::SYS_openat, "FUSE_LOOKUP/OPEN/CREATE/OPENDIR: one component below a held directory fd (O_NOFOLLOW), or a reopen through /proc/self/fd"),
    always("newfstatat", libc::SYS_newfstatat, "FUSE_GETATTR/LOOKUP on O_PATH fds (AT_EMPTY_PATH)"),
    always("fstat", libc::SYS_fstat, "FUSE_GETATTR on an open file; guest memory regions' sizes"),
    always("fstatfs", libc::SYS_fstatfs, "FUSE_STATFS"),
    always("getdents64", libc::SYS_getdents64, "FUSE_READDIR/READDIRPLUS"),
    always("lseek", libc::SYS_lseek, "FUSE_LSEEK and directory positions"),
    always("mkdirat", libc::SYS_mkdirat, "FUSE_MKDIR"),
    always("mknodat", libc::SYS_mknodat, "FUSE_MKNOD (regular files, fifos, sockets; devices are refused before the call)"),
    always("unlinkat", libc::SYS_unlinkat, "FUSE_UNLINK/RMDIR; the socket is removed once the frontend connected"),
    always("renameat2", libc::SYS_renameat2, "FUSE_RENAME/RENAME2"),
    always("renameat", libc::SYS_renameat, "FUSE_RENAME: glibc's renameat2() without flags makes the renameat call"),
    always("linkat", libc::SYS_linkat, "FUSE_LINK (source: an inode the guest holds)"),
    always("symlinkat", libc::SYS_symlinkat, "FUSE_SYMLINK"),
    always("readlinkat", libc::SYS_readlinkat, "FUSE_READLINK"),
    always("fchmodat", libc::SYS_fchmodat, "FUSE_SETATTR mode"),
    always("fchmod", libc::SYS_fchmod, "FUSE_SETATTR mode on an open file"),
    always("fchownat", libc::SYS_fchownat, "FUSE_SETATTR owner (only what the user may do anyway)"),
    always("utimensat", libc::SYS_utimensat, "FUSE_SETATTR times"),
    always("ftruncate", libc::SYS_ftruncate, "FUSE_SETATTR size"),
    always("fallocate", libc::SYS_fallocate, "FUSE_FALLOCATE"),
    always("fsync", libc::SYS_fsync, "FUSE_FSYNC/FSYNCDIR"),
    always("fdatasync", libc::SYS_fdatasync, "FUSE_FSYNC with FDATASYNC"),
    always("faccessat2", libc::SYS_faccessat2, "FUSE_ACCESS (glibc's faccessat with AT_EACCESS)"),
    always("accept4", libc::SYS_accept4, "accept the frontend on the socket bound before the filter"),
    always("sendmsg", libc::SYS_sendmsg, "vhost-user replies"),
    always("recvmsg", libc::SYS_recvmsg, "vhost-user messages with memory/eventfd fds"),
    always("shutdown", libc::SYS_shutdown, "the connection thread closes the vhost-user socket when it ends"),
    arg_is("fcntl", libc::SYS_fcntl, 1, libc::F_DUPFD_CLOEXEC as u64, "F_DUPFD_CLOEXEC", "vhost-user-backend keeps a copy of the connection for shutdown"),
    always("epoll_create1", libc::SYS_epoll_create1, "one epoll set per queue worker"),
    always("epoll_wait", libc::SYS_epoll_wait, "queue workers wait for kicks"),
    always("epoll_ctl", libc::SYS_epoll_ctl, "queues' kick eventfds come and go as the frontend enables them"),
    always("eventfd2", libc::SYS_eventfd2, "each queue worker's exit and vring-enabled eventfds"),
];

/// Thread start for the virtiofsd process: vhost-user-backend starts its threads with
/// std::thread after the filter is on, so they clone under (and inherit) this one.
#[rustfmt::skip]
const VIRTIOFSD_THREADS: &[Allow] = &[
    arg_is("clone", libc::SYS_clone, 0, THREAD_CLONE_FLAGS, "thread flags", "start a queue worker or the connection thread (never a process)"),
    always("clone3", libc::SYS_clone3, "answered ENOSYS by a second filter, so glibc falls back to clone, whose flags are checked"),
    always("rseq", libc::SYS_rseq, "glibc registers each new thread for restartable sequences"),
    always("set_robust_list", libc::SYS_set_robust_list, "glibc sets up each new thread's robust futexes"),
    arg_is("prctl", libc::SYS_prctl, 0, libc::PR_SET_NAME as u64, "PR_SET_NAME", "std names the new thread"),
    always("sched_getaffinity", libc::SYS_sched_getaffinity, "std/glibc read the CPU mask when a thread starts"),
    always("gettid", libc::SYS_gettid, "std records the new thread's id"),
    always("getrandom", libc::SYS_getrandom, "std seeds each thread's HashMap keys (vhost-user-backend's per-worker sets)"),
];

/// The lists a thread of `category` has on top of [`EVERY_THREAD`].
fn lists(category: ThreadCategory) -> &'static [&'static [Allow]] {
    match category {
        ThreadCategory::Vmm => &[VMM],
        ThreadCategory::Api => &[API],
        ThreadCategory::Vcpu => &[VCPU, VCPU_DEVICE_ACTIVATION],
        ThreadCategory::NetWorker => &[NET_WORKER],
        ThreadCategory::VhostUser => &[VHOST_USER],
        ThreadCategory::Virtiofsd => &[VIRTIOFSD, VIRTIOFSD_THREADS],
        // Filters stack, so a thread it starts can do at most what the spawner can: the spawner
        // must allow everything any category allows, and thread start-up.
        ThreadCategory::Spawner => &[
            VMM,
            API,
            VCPU,
            VCPU_DEVICE_ACTIVATION,
            NET_WORKER,
            VHOST_USER,
            SPAWNER,
        ],
    }
}

/// The category's own entries, without the ones every thread has; an entry that several lists
/// share (same call and condition) once, with the first list's reason.
fn own(category: ThreadCategory) -> Vec<&'static Allow> {
    let mut out: Vec<&'static Allow> = Vec::new();
    for allow in lists(category).iter().flat_map(|l| l.iter()) {
        if !out.iter().any(|a| a.nr == allow.nr && a.when == allow.when) {
            out.push(allow);
        }
    }
    out
}

/// Every entry that applies to `category`.
pub fn allow_list(category: ThreadCategory) -> Vec<&'static Allow> {
    EVERY_THREAD.iter().chain(own(category)).collect()
}

/// Distinct system calls `category` may make.
pub fn syscall_count(category: ThreadCategory) -> usize {
    let mut nrs: Vec<i64> = allow_list(category).iter().map(|a| a.nr).collect();
    nrs.sort_unstable();
    nrs.dedup();
    nrs.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_has_a_reason_and_a_known_number() {
        for c in ThreadCategory::ALL {
            for a in allow_list(c) {
                assert!(!a.reason.is_empty(), "{c}: {} has no reason", a.call);
                assert_eq!(
                    crate::seccomp::syscall_names::name(a.nr),
                    Some(a.call),
                    "{c}: entry named {} has number {}",
                    a.call,
                    a.nr
                );
            }
        }
    }

    #[test]
    fn spawner_covers_every_category_and_only_it_clones() {
        let same = |a: &Allow, b: &Allow| a.nr == b.nr && a.when == b.when;
        let spawner = allow_list(ThreadCategory::Spawner);
        for c in ThreadCategory::SPAWNABLE {
            for a in allow_list(c) {
                assert!(
                    spawner.iter().any(|s| same(s, a)),
                    "{c}: {} missing",
                    a.call
                );
            }
            assert!(
                !allow_list(c).iter().any(|a| a.nr == libc::SYS_clone),
                "{c} may clone"
            );
        }
        assert!(spawner.iter().any(|a| a.nr == libc::SYS_clone));
        let mut seen: Vec<(i64, When)> = Vec::new();
        for a in &spawner {
            assert!(!seen.contains(&(a.nr, a.when)), "{} twice", a.call);
            seen.push((a.nr, a.when));
        }
    }

    #[test]
    fn vcpu_list_is_the_smallest() {
        let vcpu = syscall_count(ThreadCategory::Vcpu);
        for c in ThreadCategory::ALL {
            // The vhost-user link thread, which only talks over a connected socket, ties.
            if c != ThreadCategory::Vcpu {
                assert!(syscall_count(c) >= vcpu, "{c} is smaller than vcpu");
            }
        }
    }

    #[test]
    fn kvm_run_only_on_vcpus_and_tun_only_on_net_workers() {
        let has = |c, v| {
            allow_list(c).iter().any(|a| {
                a.call == "ioctl" && matches!(a.when, When::ArgIs { value, .. } if value == v)
            })
        };
        for c in ThreadCategory::SPAWNABLE {
            assert_eq!(has(c, KVM_RUN), c == ThreadCategory::Vcpu, "{c}");
            // Net workers configure their own tap queues, even at activation.
            let tun = c == ThreadCategory::NetWorker;
            assert_eq!(has(c, TUNSETQUEUE), tun, "{c}");
            assert_eq!(has(c, TUNSETOFFLOAD), tun, "{c}");
        }
    }
}
