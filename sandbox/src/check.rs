//! `paddock check [VM options]`: for the user Paddock runs as and the configuration given, whether
//! each need is met, one line each (`ok`, `FAIL` with the fix, or `--` for what this configuration
//! does not need), and exit status 1 when the configuration cannot run. Every check is the code
//! `paddock run` itself runs before it starts a VM.

use crate::cli::RunArgs;
use crate::config::{self, FsRequest};
use crate::default_guest;
use crate::placement::{self, allowed, plan, realtime, CpuOptions};
use crate::privilege;
use crate::seccomp;
use crate::virtiofsd::launch::bundled_shares;
use crate::EXIT_CANNOT_START;
use caps::CapSet;
use std::path::Path;
use std::process::ExitCode;
use vmm::memory::hugepages::{self, HostPaths};
use vmm::memory::{self, config::human_size, hugetlbfs, MemoryConfig};
use vmm::threads::ThreadCategory;

/// Exit status when the configuration cannot run here.
const EXIT_CHECK_FAILED: u8 = 1;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Fail,
    /// Not needed by this configuration; said for information.
    Info,
}

#[derive(Default)]
struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, status: Status, need: &str, text: impl std::fmt::Display) {
        let word = match status {
            Status::Ok => "ok",
            Status::Fail => "FAIL",
            Status::Info => "--",
        };
        self.failed |= status == Status::Fail;
        println!("{word:<5}{need}: {text}");
    }

    fn ok(&mut self, need: &str, text: impl std::fmt::Display) {
        self.line(Status::Ok, need, text)
    }

    fn fail(&mut self, need: &str, text: impl std::fmt::Display) {
        self.line(Status::Fail, need, text)
    }

    fn info(&mut self, need: &str, text: impl std::fmt::Display) {
        self.line(Status::Info, need, text)
    }

    fn result<T, E: std::fmt::Display>(
        &mut self,
        need: &str,
        result: Result<T, E>,
        ok_text: impl FnOnce(&T) -> String,
    ) -> Option<T> {
        match result {
            Ok(v) => {
                self.ok(need, ok_text(&v));
                Some(v)
            }
            Err(e) => {
                self.fail(need, e);
                None
            }
        }
    }

    fn exit(&self) -> ExitCode {
        match self.failed {
            true => ExitCode::from(EXIT_CHECK_FAILED),
            false => ExitCode::SUCCESS,
        }
    }
}

fn bad_input(err: impl std::fmt::Display) -> ExitCode {
    eprintln!("paddock: {err}");
    ExitCode::from(EXIT_CANNOT_START)
}

pub fn check(user: Option<&str>, args: RunArgs) -> ExitCode {
    // Bad option syntax is bad input, as for run: exit 2 and one line.
    let user = match user.map(privilege::parse_user).transpose() {
        Ok(u) => u,
        Err(e) => return bad_input(e),
    };
    let cpus = match CpuOptions::parse(&args.cpus) {
        Ok(c) => c,
        Err(e) => return bad_input(e),
    };
    let mut memory = match config::parse_memory(&args.memory) {
        Ok(m) => m,
        Err(e) => return bad_input(e),
    };
    let mut fs_requests = match config::parse_fses(&args.fs) {
        Ok(v) => v,
        Err(e) => return bad_input(e),
    };
    // `--rootfs DIR` is a `path=` share like the others.
    match args.rootfs.as_deref().map(config::parse_rootfs).transpose() {
        Ok(r) => fs_requests.extend(r),
        Err(e) => return bad_input(e),
    }
    let nets = match config::parse_nets(&args.net) {
        Ok(v) => v,
        Err(e) => return bad_input(e),
    };

    let mut report = Report::default();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    // Before the drop, which removes SYS_NICE unless this configuration needs it.
    let nice_origin = realtime::origin(euid == 0 && user.is_some());
    if let Err(e) = privilege::enter(user, &placement::needed_caps(&cpus)) {
        report.fail("user", e);
        return report.exit();
    }
    user_and_caps(&mut report, user.is_some());
    kernel_files(&mut report, &args);
    rootfs_initramfs(&mut report, &args);
    kvm(&mut report, cpus.boot);
    taps(&mut report, nets, cpus.boot);
    shares(&mut report, &fs_requests, &mut memory);
    guest_ram(&mut report, &memory);
    cpu_placement(&mut report, &cpus, nice_origin);
    seccomp_filters(&mut report, args.seccomp);
    report.exit()
}

fn cap_names(set: CapSet) -> String {
    let mut names: Vec<String> = caps::read(None, set)
        .map(|s| s.iter().map(|c| c.to_string()).collect())
        .unwrap_or_default();
    names.sort();
    match names.is_empty() {
        true => "none".into(),
        false => names.join(","),
    }
}

fn user_and_caps(report: &mut Report, switched: bool) {
    // SAFETY: getuid/getgid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let how = match switched {
        true => "switched from root by --user",
        false => "as started",
    };
    report.ok("user", format!("uid {uid} gid {gid} ({how})"));
    report.ok(
        "capabilities",
        format!(
            "effective {}, permitted {}, bounding {}; no_new_privs set (nothing outside SYS_NICE, NET_BIND_SERVICE is held)",
            cap_names(CapSet::Effective),
            cap_names(CapSet::Permitted),
            cap_names(CapSet::Bounding)
        ),
    );
}

fn kernel_files(report: &mut Report, args: &RunArgs) {
    let (kernel, initramfs) = match &args.kernel {
        Some(k) => (k.clone(), args.initramfs.clone()),
        None => match default_guest::locate() {
            Ok(g) => (
                g.kernel,
                Some(args.initramfs.clone().unwrap_or(g.initramfs)),
            ),
            Err(e) => return report.fail("kernel", e),
        },
    };
    for (need, path) in [("kernel", Some(kernel)), ("initramfs", initramfs)] {
        let Some(path) = path else { continue };
        let opened = std::fs::File::open(&path).and_then(|f| f.metadata());
        match opened {
            Ok(m) => report.ok(need, format!("{} ({} bytes)", path.display(), m.len())),
            Err(e) => report.fail(
                need,
                format!(
                    "{}: {e}: give --{need} a file this user can read",
                    path.display()
                ),
            ),
        }
    }
}

/// `--rootfs` with a user kernel needs an initramfs that mounts the tree, as run refuses.
fn rootfs_initramfs(report: &mut Report, args: &RunArgs) {
    if args.rootfs.is_some() && args.kernel.is_some() && args.initramfs.is_none() {
        report.fail(
            "rootfs",
            "--kernel without --initramfs: --rootfs needs an initramfs whose /init mounts the tree (the default guest's does)",
        );
    }
}

fn kvm(report: &mut Report, boot: u8) {
    let Some(kvm) = report.result(vmm::kvm::KVM_PATH, vmm::kvm::open(), |_| {
        "read-write, stable API, every KVM capability Paddock needs".into()
    }) else {
        return;
    };
    let max = vmm::kvm::max_vcpus(&kvm);
    match boot {
        0 => report.fail("vcpus", "--cpus 0: a VM needs at least one vCPU"),
        n if usize::from(n) > max => report.fail(
            "vcpus",
            format!("--cpus {n}: this host's KVM allows at most {max} vCPUs per VM"),
        ),
        n => report.ok("vcpus", format!("{n} (KVM allows up to {max})")),
    }
}

fn sysfs_net(tap: &str, file: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/sys/class/net").join(tap).join(file))
        .ok()
        .map(|s| s.trim().to_string())
}

fn taps(report: &mut Report, nets: Vec<vmm::net::NetSpec>, boot: u8) {
    if nets.is_empty() {
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun");
        let state = match tun {
            Ok(_) => "usable".to_string(),
            Err(e) => format!("not usable ({e})"),
        };
        report.info("/dev/net/tun", format!("{state}; not needed without --net"));
        return;
    }
    for spec in nets {
        let need = format!("net {}", spec.tap);
        // The same opening (or adoption of inherited fds) `run` does, one queue per pair.
        report.result(&need, vmm::net::tap_queues(spec, boot.into()), |q| {
            let name = q.first().map(|t| t.name().to_string()).unwrap_or_default();
            let owner = sysfs_net(&name, "owner").unwrap_or_else(|| "unknown".into());
            let multi = sysfs_net(&name, "tun_flags")
                .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
                .is_some_and(|f| f & 0x100 != 0);
            format!(
                "{} queue(s) of tap {name}; owner uid {owner}, multi_queue {}",
                q.len(),
                if multi { "on" } else { "off" }
            )
        });
    }
}

/// `--fs` shares: a `path=` directory the bundled backend will serve, or the socket of a backend
/// the user started. The socket is not connected to: a vhost-user backend serves one frontend
/// and virtiofsd exits when it leaves, so a check would use up the backend the VM needs.
fn shares(report: &mut Report, requests: &[FsRequest], memory: &mut MemoryConfig) {
    use nix::unistd::{access, AccessFlags};
    use std::os::unix::fs::FileTypeExt;
    for request in requests {
        match request {
            FsRequest::Path {
                config,
                dir,
                readonly,
            } => {
                let need = match config.tag == config::ROOTFS_TAG {
                    true => "rootfs".to_string(),
                    false => format!("fs {}", config.tag),
                };
                if let Err(e) = bundled_shares::check_dir(&config.tag, dir) {
                    report.fail(&need, e);
                    continue;
                }
                let shown = dir.display();
                if let Err(e) = access(dir, AccessFlags::R_OK | AccessFlags::X_OK) {
                    report.fail(
                        &need,
                        format!("{shown}: {e}: this user cannot list it; give it read and search (r-x) permission"),
                    );
                    continue;
                }
                let mode = match (readonly, access(dir, AccessFlags::W_OK)) {
                    (true, _) => "read-only".to_string(),
                    (false, Ok(())) => "read-write".to_string(),
                    (false, Err(e)) => format!(
                        "read-write asked, but {e} for this user: guest writes to its top level will fail; add ,ro or give write permission"
                    ),
                };
                report.ok(
                    &need,
                    format!("{shown}, served by paddock virtiofsd as this user, {mode}"),
                );
            }
            FsRequest::Socket(spec) => {
                let need = format!("fs {}", spec.config.tag);
                let shown = spec.socket.display();
                match std::fs::metadata(&spec.socket) {
                    Err(e) => report.fail(
                        &need,
                        format!("socket {shown}: {e}: start the vhost-user-fs backend first"),
                    ),
                    Ok(m) if !m.file_type().is_socket() => report.fail(
                        &need,
                        format!("{shown} is not a socket: give the backend's --socket-path"),
                    ),
                    Ok(_) => match access(&spec.socket, AccessFlags::W_OK) {
                        Err(e) => report.fail(
                            &need,
                            format!("socket {shown}: {e}: this user cannot connect; let the backend run as this user or open the socket's permissions"),
                        ),
                        Ok(()) => report.ok(
                            &need,
                            format!("socket {shown} present (not connected to: a backend serves one VM)"),
                        ),
                    },
                }
            }
        }
    }
    // As run does (vmm::vm): a vhost-user backend maps guest RAM too.
    if !requests.is_empty() && !memory.shared {
        memory.shared = true;
        report.info("memory", "mapped shared (fd-backed) for the --fs backends");
    }
}

fn guest_ram(report: &mut Report, memory: &MemoryConfig) {
    let host = HostPaths::system();
    for dir in hugetlbfs::mounts() {
        let page = hugetlbfs::mount_page_size(&dir, None)
            .map(human_size)
            .unwrap_or_else(|e| e.to_string());
        let writable = match hugetlbfs::check_writable(&dir) {
            Ok(()) => "writable".to_string(),
            Err(e) => format!("not writable by this user ({e})"),
        };
        report.info(
            &format!("hugetlbfs {}", dir.display()),
            format!("{page} pages, {writable}"),
        );
    }
    for page in hugepages::host_page_sizes(&host) {
        let free = hugepages::available_pages(&host, page)
            .map(|n| n.to_string())
            .unwrap_or_else(|e| e.to_string());
        let limit = match hugepages::cgroup_limit(&host, page) {
            Ok(Some(l)) => format!(
                "room for {} under {} (max {}, current {})",
                l.room(page),
                l.file.display(),
                l.max,
                l.current
            ),
            Ok(None) => "no limit".into(),
            Err(e) => e.to_string(),
        };
        report.info(
            &format!("hugepages {}", human_size(page)),
            format!("{free} free; hugetlb cgroup: {limit}"),
        );
    }
    let ranges = vmm::arch::x86_64::ram_regions(memory.size);
    let backing = match memory.backend() {
        memory::Backend::Anonymous => "anonymous".to_string(),
        memory::Backend::Memfd { hugepages: None } => "shared memfd".to_string(),
        memory::Backend::Memfd { hugepages: Some(p) } => {
            format!("memfd, {} hugepages", human_size(p))
        }
        memory::Backend::Hugetlbfs { dir, .. } => format!("hugetlbfs {}", dir.display()),
    };
    report.result(
        "memory",
        memory::preflight(&host, memory, &ranges),
        |&page| match memory.hugepages.or(memory.hugetlbfs.as_ref().map(|_| page)) {
            Some(_) => format!(
                "{} on {backing}: {} {} pages free for it",
                human_size(memory.size),
                memory.size / page,
                human_size(page)
            ),
            None => format!("{} on {backing}", human_size(memory.size)),
        },
    );
}

fn cpu_placement(report: &mut Report, cpus: &CpuOptions, nice_origin: realtime::Origin) {
    let need = if cpus.places_threads() {
        Status::Ok
    } else {
        Status::Info
    };
    match allowed::discover() {
        Ok(a) => {
            report.line(need, "cpus", format!("may use {}", a.describe()));
            if cpus.places_threads() {
                report.result("placement", plan::resolve(cpus, &a), |p| p.describe());
            }
        }
        Err(e) => report.line(
            if need == Status::Ok {
                Status::Fail
            } else {
                Status::Info
            },
            "cpus",
            e,
        ),
    }
    let rlimit = realtime::describe_limit(realtime::rtprio_limit());
    match cpus.realtime {
        Some(prio) => {
            report.result("realtime", realtime::grant(prio), |g| {
                format!("SCHED_FIFO {prio} permitted by {g}")
            });
            report.info("SYS_NICE", format!("{nice_origin}; RLIMIT_RTPRIO {rlimit}"));
        }
        None => report.info(
            "SYS_NICE",
            format!("{nice_origin}; RLIMIT_RTPRIO {rlimit}; needed only for realtime="),
        ),
    }
}

fn seccomp_filters(report: &mut Report, mode: seccomp::Mode) {
    if mode == seccomp::Mode::Off {
        return report.info("seccomp", "off (--seccomp off)");
    }
    // The real filters, compiled and installed on a thread that then ends: what every Paddock
    // thread gets at start.
    let tried = seccomp::Filters::compile(seccomp::OnDenied::Trap)
        .map_err(|e| e.to_string())
        .and_then(|filters| {
            std::thread::spawn(move || filters.install(ThreadCategory::Vmm))
                .join()
                .unwrap_or_else(|_| Err("the test thread panicked".into()))
        });
    report.result("seccomp", tried, |_| {
        format!(
            "the filters of all {} thread categories compile and the kernel installs them",
            ThreadCategory::ALL.len()
        )
    });
}
