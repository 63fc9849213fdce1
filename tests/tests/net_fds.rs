//! `--net fd=N[,fd=M...]`: tap queues opened by a parent (as a node agent would) and inherited by
//! `paddock`. Runs on this machine's /dev/kvm with a tiny guest that powers off at once: the test
//! makes a multi-queue tap in a private network namespace, opens two queues with TUNSETIFF,
//! passes them to paddock on fds 3 and 4, and checks paddock ran and configured the very queues
//! it was given. A descriptor that is not a tap, one that is not open, and more fds than vCPUs are
//! refused with exit 2 and one line.
//!
//! Needs root (tap creation) and the release binary: `cargo build --release -p sandbox`.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use paddock_tests::tinyguest::{write_image, BootFormat, Ending, Program, BOOT_TIMEOUT};
use paddock_tests::workspace;

const TAP: &str = "pfdtap0";
const IFF_TAP: u16 = 0x0002;
const IFF_NO_PI: u16 = 0x1000;
const IFF_VNET_HDR: u16 = 0x4000;
const IFF_MULTI_QUEUE: u16 = 0x0100;
/// _IOW('T', 202, int): TUNSETIFF takes a struct ifreq despite its encoded size.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// _IOR('T', 215, int).
const TUNGETVNETHDRSZ: libc::c_ulong = 0x8004_54d7;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: u16,
    _rest: [u8; 22],
}

/// One queue of `TAP`, opened as a node agent would.
fn open_queue() -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE,
        _rest: [0; 22],
    };
    req.name[..TAP.len()].copy_from_slice(TAP.as_bytes());
    // SAFETY: TUNSETIFF reads a struct ifreq, which `req` is; the kernel keeps no pointer.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &req) };
    assert_eq!(ret, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    file
}

fn vnet_hdr_size(queue: &File) -> i32 {
    let mut size: libc::c_int = 0;
    // SAFETY: TUNGETVNETHDRSZ writes one int through the pointer.
    let ret = unsafe { libc::ioctl(queue.as_raw_fd(), TUNGETVNETHDRSZ, &mut size) };
    assert_eq!(ret, 0, "TUNGETVNETHDRSZ");
    size
}

/// `paddock run` of `kernel` with `--net NET`, `extra` descriptors placed at 3, 4, ... in the
/// child; killed after BOOT_TIMEOUT.
fn run_paddock(kernel: &std::path::Path, cpus: u8, net: &str, extra: &[RawFd]) -> Output {
    let mut cmd = Command::new(workspace::paddock_bin());
    cmd.arg("run")
        .args(workspace::paddock_user_args())
        .arg("--kernel")
        .arg(kernel)
        .args(["--cpus", &cpus.to_string(), "--memory", "64M"])
        .args(["--net", net])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let fds = extra.to_vec();
    // SAFETY: fcntl, dup2 and close are async-signal-safe and touch only the child's descriptor
    // table. The sources are first moved out of the way (a source may already sit on one of the
    // target numbers); dup2's copies have no FD_CLOEXEC, so they survive the exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut parked = Vec::with_capacity(fds.len());
            for &fd in &fds {
                let high = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 200);
                if high < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                parked.push(high);
            }
            for (i, &fd) in parked.iter().enumerate() {
                if libc::dup2(fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start paddock");
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("paddock did not finish within {BOOT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_end(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_end(&mut stderr);
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

fn show(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One non-empty stderr line, exit 2, containing every phrase.
fn assert_refused(out: &Output, phrases: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        out.status.code() == Some(2)
            && lines.len() == 1
            && phrases.iter().all(|p| lines[0].contains(p)),
        "expected exit 2 and one line with {phrases:?}\n{}",
        show(out)
    );
}

#[test]
fn inherited_tap_queues_are_adopted_and_bad_fds_refused() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: creating a tap needs root");
        return;
    }
    // SAFETY: unshare only changes this thread's namespaces; the tap and paddock (spawned from
    // this thread) live in the new one and the tap vanishes with it.
    assert_eq!(
        unsafe { libc::unshare(libc::CLONE_NEWNET) },
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    let made = Command::new("ip")
        .args(["tuntap", "add", "dev", TAP, "mode", "tap", "multi_queue"])
        .status()
        .expect("ip");
    assert!(made.success(), "ip tuntap add");
    let queues = [open_queue(), open_queue()];
    assert_eq!(vnet_hdr_size(&queues[0]), 10, "the kernel's default");

    let image = write_image(
        BootFormat::Elf64,
        &Program::new("fd guest\n", Ending::AcpiPowerOff),
    )
    .expect("tiny guest");
    workspace::share_with_paddock(image.path()).expect("chmod");
    let raw: Vec<RawFd> = queues.iter().map(AsRawFd::as_raw_fd).collect();

    // The root-owned tap cannot be opened by name as uid 1000: only the fds make this work.
    let out = run_paddock(image.path(), 2, "fd=3,fd=4", &raw);
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("fd guest"));
    assert_eq!(
        vnet_hdr_size(&queues[1]),
        12,
        "paddock set the virtio 1.x header size on the queues it inherited"
    );

    let null = File::open("/dev/null").expect("/dev/null");
    let out = run_paddock(image.path(), 1, "fd=3", &[null.as_raw_fd()]);
    assert_refused(&out, &["--net fd=3", "inherited fd 3 is not a tap queue"]);

    let out = run_paddock(image.path(), 1, "fd=7", &[]);
    assert_refused(&out, &["fd=7 is not open in this process"]);

    let out = run_paddock(image.path(), 1, "fd=3,fd=4", &raw);
    assert_refused(&out, &["2 inherited tap fds are more than the 1 vCPUs"]);
}
