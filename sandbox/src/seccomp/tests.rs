//! Each category's filter in a forked child (a denied call must not take the test runner down):
//! representative forbidden calls trap, the category's normal work goes through.

use super::*;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// How a probe in a filtered child ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The call came back with this result (negative: -errno).
    Returned(i64),
    /// Killed by this signal (SIGSYS: denied, with no reporter installed).
    Signal(i32),
    /// Exited with this status without reporting a result.
    Exit(i32),
}

const DENIED: Ended = Ended::Signal(libc::SIGSYS);

fn errno() -> i64 {
    i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

/// A raw syscall result as Returned's convention.
fn ret(rc: libc::c_long) -> i64 {
    if rc < 0 {
        -errno()
    } else {
        rc
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array, which lives across the call.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn read_all(fd: &OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        // SAFETY: reads into a live buffer of the given length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}

/// Forks; the child runs `setup` (installs filters), then `probe`, and sends back its result.
/// Returns how the child ended and what it wrote to stderr.
fn in_child(setup: impl FnOnce(), probe: impl FnOnce() -> i64) -> (Ended, String) {
    let (result_r, result_w) = pipe();
    let (err_r, err_w) = pipe();
    // SAFETY: fork has no memory-safety preconditions; the child only uses the pre-built filters,
    // raw system calls and _exit, and never returns into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain system calls on fds and a struct that live across the calls; _exit
        // never returns.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::dup2(err_w.as_raw_fd(), libc::STDERR_FILENO);
            setup();
            let value = probe();
            libc::write(result_w.as_raw_fd(), (&value as *const i64).cast(), 8);
            libc::_exit(0);
        }
    }
    drop(result_w);
    drop(err_w);
    let result = read_all(&result_r);
    let stderr = String::from_utf8_lossy(&read_all(&err_r)).into_owned();
    let mut status = 0;
    // SAFETY: waits for our own child; `status` lives across the call.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
    let ended = if libc::WIFSIGNALED(status) {
        Ended::Signal(libc::WTERMSIG(status))
    } else if result.len() == 8 {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&result);
        Ended::Returned(i64::from_ne_bytes(bytes))
    } else {
        Ended::Exit(libc::WEXITSTATUS(status))
    };
    (ended, stderr)
}

fn filtered(category: ThreadCategory, on_denied: OnDenied, probe: impl FnOnce() -> i64) -> Ended {
    let filters = Filters::compile(on_denied).expect("filters compile");
    let (ended, stderr) = in_child(
        || {
            if let Err(e) = filters.install(category) {
                eprintln!("{e}");
                // SAFETY: ends the forked child without running the harness's destructors.
                unsafe { libc::_exit(99) };
            }
        },
        probe,
    );
    assert_ne!(
        ended,
        Ended::Exit(99),
        "{category}: installing failed: {stderr}"
    );
    ended
}

fn enforced(category: ThreadCategory, probe: impl FnOnce() -> i64) -> Ended {
    filtered(category, OnDenied::Trap, probe)
}

fn sys(nr: libc::c_long, a: [libc::c_long; 4]) -> i64 {
    // SAFETY: the probes pass either no pointers or pointers to live NUL-terminated strings or
    // buffers; the calls' effects stay inside the forked child.
    ret(unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3]) })
}

fn execve() -> i64 {
    let path = c"/nonexistent/paddock-probe";
    sys(libc::SYS_execve, [path.as_ptr() as _, 0, 0, 0])
}

fn ptrace() -> i64 {
    sys(libc::SYS_ptrace, [libc::PTRACE_PEEKDATA as _, 1, 0, 0])
}

fn mount() -> i64 {
    let (src, dst, fs) = (c"none", c"/nonexistent/mnt", c"tmpfs");
    sys(
        libc::SYS_mount,
        [src.as_ptr() as _, dst.as_ptr() as _, fs.as_ptr() as _, 0],
    )
}

fn netlink_audit() -> i64 {
    sys(
        libc::SYS_socket,
        [
            libc::AF_NETLINK as _,
            libc::SOCK_RAW as _,
            libc::NETLINK_AUDIT as _,
            0,
        ],
    )
}

fn unix_socket() -> i64 {
    sys(
        libc::SYS_socket,
        [libc::AF_UNIX as _, libc::SOCK_STREAM as _, 0, 0],
    )
}

fn inet_socket() -> i64 {
    sys(
        libc::SYS_socket,
        [libc::AF_INET as _, libc::SOCK_STREAM as _, 0, 0],
    )
}

fn create_file() -> i64 {
    let path = c"/nonexistent/paddock-probe";
    sys(
        libc::SYS_openat,
        [
            libc::AT_FDCWD as _,
            path.as_ptr() as _,
            (libc::O_CREAT | libc::O_WRONLY) as _,
            0o600,
        ],
    )
}

fn ioctl(request: u64) -> i64 {
    sys(libc::SYS_ioctl, [-1, request as _, 0, 0])
}

fn mmap(prot: libc::c_int) -> i64 {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        -errno()
    } else {
        0
    }
}

/// A process, not a thread: fork's flags.
fn fork_by_clone() -> i64 {
    let rc = sys(libc::SYS_clone, [libc::SIGCHLD as _, 0, 0, 0]);
    if rc == 0 {
        // SAFETY: the accidental grandchild ends at once.
        unsafe { libc::_exit(0) };
    }
    rc.min(1)
}

fn write_bad_fd() -> i64 {
    sys(libc::SYS_write, [-1, 0, 0, 0])
}

fn std_thread() -> i64 {
    match std::thread::Builder::new().spawn(|| 5).map(|h| h.join()) {
        Ok(Ok(v)) => v,
        _ => -1,
    }
}

const EBADF: Ended = Ended::Returned(-(libc::EBADF as i64));

#[test]
fn every_category_denies_process_and_privilege_calls() {
    for category in ThreadCategory::ALL {
        assert_eq!(enforced(category, execve), DENIED, "{category}: execve");
        assert_eq!(enforced(category, ptrace), DENIED, "{category}: ptrace");
        assert_eq!(enforced(category, mount), DENIED, "{category}: mount");
        assert_eq!(
            enforced(category, netlink_audit),
            DENIED,
            "{category}: netlink audit"
        );
        assert_eq!(
            enforced(category, inet_socket),
            DENIED,
            "{category}: AF_INET"
        );
        assert_eq!(
            enforced(category, fork_by_clone),
            DENIED,
            "{category}: fork"
        );
        assert_eq!(
            enforced(category, || mmap(libc::PROT_READ | libc::PROT_EXEC)),
            DENIED,
            "{category}: executable mapping"
        );
        assert_eq!(
            enforced(category, || mmap(libc::PROT_READ | libc::PROT_WRITE)),
            Ended::Returned(0),
            "{category}: plain mapping"
        );
        assert_eq!(enforced(category, write_bad_fd), EBADF, "{category}: write");
    }
}

#[test]
fn kvm_run_only_on_vcpu_threads() {
    for category in ThreadCategory::SPAWNABLE {
        let expected = if category == ThreadCategory::Vcpu {
            EBADF
        } else {
            DENIED
        };
        assert_eq!(
            enforced(category, || ioctl(rules::KVM_RUN)),
            expected,
            "{category}: KVM_RUN"
        );
        assert_eq!(
            enforced(category, || ioctl(rules::KVM_GET_REGS)),
            expected,
            "{category}: KVM_GET_REGS"
        );
        // KVM_CREATE_VM: nobody, once the VM is built.
        assert_eq!(
            enforced(category, || ioctl(0xae01)),
            DENIED,
            "{category}: KVM_CREATE_VM"
        );
    }
}

#[test]
fn tun_ioctls_only_on_net_workers() {
    for category in ThreadCategory::SPAWNABLE {
        // Net workers configure their tap queues themselves, even at activation: a vCPU
        // activating the device does not.
        let expected = if category == ThreadCategory::NetWorker {
            EBADF
        } else {
            DENIED
        };
        for (request, name) in [
            (rules::TUNSETQUEUE, "TUNSETQUEUE"),
            (rules::TUNSETOFFLOAD, "TUNSETOFFLOAD"),
        ] {
            assert_eq!(
                enforced(category, || ioctl(request)),
                expected,
                "{category}: {name}"
            );
        }
        // TUNSETIFF (creating or choosing a tap) happens before any filter, never after.
        assert_eq!(
            enforced(category, || ioctl(0x400454ca)),
            DENIED,
            "{category}: TUNSETIFF"
        );
    }
}

#[test]
fn vcpu_cannot_open_files_virtiofsd_can() {
    assert_eq!(enforced(ThreadCategory::Vcpu, create_file), DENIED);
    assert_eq!(enforced(ThreadCategory::NetWorker, create_file), DENIED);
    assert_eq!(enforced(ThreadCategory::Vmm, create_file), DENIED);
    // The API opens /proc read-only only.
    assert_eq!(enforced(ThreadCategory::Api, create_file), DENIED);
    assert_eq!(
        enforced(ThreadCategory::Virtiofsd, create_file),
        Ended::Returned(-(libc::ENOENT as i64))
    );
}

#[test]
fn unix_sockets_only_where_a_socket_is_the_job() {
    for category in ThreadCategory::SPAWNABLE {
        // The vhost-user link thread gets its socket connected by the main thread before any
        // filter: it may not create one.
        let allowed = matches!(category, ThreadCategory::Api | ThreadCategory::Virtiofsd);
        let got = enforced(category, unix_socket);
        assert_eq!(
            matches!(got, Ended::Returned(fd) if fd >= 0),
            allowed,
            "{category}: {got:?}"
        );
    }
}

#[test]
fn only_the_spawner_starts_threads_through_the_clone_fallback() {
    assert_eq!(
        enforced(ThreadCategory::Spawner, std_thread),
        Ended::Returned(5)
    );
    for category in ThreadCategory::SPAWNABLE {
        assert_eq!(enforced(category, std_thread), DENIED, "{category}");
    }
}

#[test]
fn spawner_allows_what_every_category_does() {
    assert_eq!(
        enforced(ThreadCategory::Spawner, || ioctl(rules::KVM_RUN)),
        EBADF
    );
    assert_eq!(
        enforced(ThreadCategory::Spawner, || ioctl(rules::TUNSETQUEUE)),
        EBADF
    );
    assert_eq!(enforced(ThreadCategory::Spawner, execve), DENIED);
    assert_eq!(enforced(ThreadCategory::Spawner, fork_by_clone), DENIED);
}

fn readv_bad_fd() -> i64 {
    sys(libc::SYS_readv, [-1, 0, 0, 0])
}

fn enable_or_exit() {
    if let Err(e) = enable(Mode::Enforce) {
        eprintln!("{e}");
        // SAFETY: ends the forked child.
        unsafe { libc::_exit(99) };
    }
}

/// A vCPU activating a device starts the device's worker: the worker must get the net-worker
/// list (tap reads, tun ioctls), not the vCPU's narrower one, and not the spawner's wider one.
#[test]
fn thread_spawned_from_a_vcpu_thread_gets_exactly_its_own_list() {
    let (ended, stderr) = in_child(enable_or_exit, || {
        let vcpu = threads::spawn(ThreadCategory::Vcpu, "CPU 3/KVM", || {
            // The vCPU's own list forbids readv; that is checked in the test below.
            let worker = threads::spawn(ThreadCategory::NetWorker, "net0-qp0", || {
                (ioctl(rules::TUNSETQUEUE), readv_bad_fd())
            });
            match worker.map(|h| h.join()) {
                Ok(Ok(results)) => results,
                _ => (-1000, -1000),
            }
        });
        match vcpu.map(|h| h.join()) {
            Ok(Ok((tun, readv))) if tun == -(libc::EBADF as i64) => readv,
            Ok(Ok((tun, _))) => tun,
            _ => -2000,
        }
    });
    assert_eq!(ended, EBADF, "stderr: {stderr}");

    // The worker does not have the spawner's list: KVM_RUN ends the process, reported by name.
    let (ended, stderr) = in_child(enable_or_exit, || {
        let vcpu = threads::spawn(ThreadCategory::Vcpu, "CPU 4/KVM", || {
            let worker = threads::spawn(ThreadCategory::NetWorker, "net0-qp1", || {
                ioctl(rules::KVM_RUN)
            });
            worker.map(|h| h.join()).is_ok()
        });
        match vcpu.map(|h| h.join()) {
            Ok(Ok(_)) => -1000,
            _ => -2000,
        }
    });
    assert_eq!(
        ended,
        Ended::Exit(sigsys::EXIT_SECCOMP_DENIED),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains("thread `net0-qp1` (net-worker) made system call ioctl"),
        "{stderr}"
    );
}

/// Asking the spawner is the only way: a vCPU thread's own clone is still refused, and so is
/// the readv its list lacks. glibc blocks signals around clone, so that denial cannot reach the
/// reporter: the kernel ends the process with SIGSYS.
#[test]
fn vcpu_thread_still_cannot_clone_or_readv_itself() {
    let in_vcpu = |probe: fn() -> i64| {
        in_child(enable_or_exit, move || {
            match threads::spawn(ThreadCategory::Vcpu, "CPU 5/KVM", probe).map(|h| h.join()) {
                Ok(Ok(_)) => -1000,
                _ => -2000,
            }
        })
    };
    let (ended, stderr) = in_vcpu(std_thread);
    assert_eq!(ended, DENIED, "clone: stderr: {stderr}");
    let (ended, stderr) = in_vcpu(readv_bad_fd);
    assert_eq!(
        ended,
        Ended::Exit(sigsys::EXIT_SECCOMP_DENIED),
        "readv: stderr: {stderr}"
    );
    assert!(
        stderr.contains("thread `CPU 5/KVM` (vcpu) made system call readv (19)"),
        "{stderr}"
    );
}
