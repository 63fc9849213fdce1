//! `paddock run`: boot a guest and map how it ended to an exit status.

use crate::cli::RunArgs;
use crate::config::{self, SerialTarget};
use crate::default_guest::{self, ExitWatcher};
use crate::placement::{self, CpuOptions};
use crate::privilege;
use crate::seccomp;
use crate::shutdown_signals::ShutdownSignals;
use crate::virtiofsd::launch::bundled_shares;
use crate::{EXIT_CANNOT_START, EXIT_GUEST_FAILED};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;
use vmm::shutdown::GracefulShutdown;
use vmm::threads::ThreadCategory;
use vmm::vm::{Outcome, Vm, VmConfig};

/// `--rootfs` relies on an initramfs whose /init mounts the tree; a bare user kernel has none.
#[derive(Debug, thiserror::Error)]
#[error("--rootfs needs an initramfs whose /init mounts the tree (paddock.rootfs=TAG, as the default guest's does): add --initramfs, or drop --kernel to boot the default guest")]
struct RootfsNeedsInitramfs;

fn cannot_start(err: impl std::fmt::Display) -> ExitCode {
    eprintln!("paddock: {err}");
    ExitCode::from(EXIT_CANNOT_START)
}

pub fn run(user: Option<&str>, args: RunArgs) -> ExitCode {
    // First of all: `--net fd=N` claims inherited descriptors, which is sound only while the
    // process has opened nothing of its own.
    let nets = match config::parse_nets(&args.net) {
        Ok(v) => v,
        Err(e) => return cannot_start(e),
    };
    // Before any thread starts, so that every thread inherits the blocked mask.
    let signals = match ShutdownSignals::block() {
        Ok(s) => s,
        Err(e) => {
            return cannot_start(format!(
                "blocking SIGTERM/SIGINT for graceful shutdown: {e}"
            ))
        }
    };
    // Before any file or device is opened, so that everything is done as the user a pod runs as.
    let user = match user.map(privilege::parse_user).transpose() {
        Ok(u) => u,
        Err(e) => return cannot_start(e),
    };
    // Parsing touches nothing; it decides which capabilities survive the drop.
    let cpus = match CpuOptions::parse(&args.cpus) {
        Ok(c) => c,
        Err(e) => return cannot_start(e),
    };
    if let Err(e) = privilege::enter(user, &placement::needed_caps(&cpus)) {
        return cannot_start(e);
    }
    let plan = match placement::prepare(&cpus) {
        Ok(p) => p,
        Err(e) => return cannot_start(e),
    };
    log::info!("placement: {}", plan.describe());
    // Before the seccomp spawner starts: it and every thread it clones inherit the emulator CPUs.
    if let Err(e) = placement::pin_emulator(&plan) {
        return cannot_start(e);
    }
    // Before any thread starts: every thread gets its filter as it is spawned.
    if let Err(e) = seccomp::enable(args.seccomp) {
        return cannot_start(e);
    }
    let vcpus = cpus.boot;
    let memory = match config::parse_memory(&args.memory) {
        Ok(n) => n,
        Err(e) => return cannot_start(e),
    };
    let mut fs_requests = match config::parse_fses(&args.fs) {
        Ok(v) => v,
        Err(e) => return cannot_start(e),
    };
    let rootfs = match args.rootfs.as_deref().map(config::parse_rootfs).transpose() {
        Ok(r) => r,
        Err(e) => return cannot_start(e),
    };
    let rootfs_readonly = match &rootfs {
        Some(config::FsRequest::Path { readonly, .. }) => Some(*readonly),
        _ => None,
    };
    if rootfs.is_some() && args.kernel.is_some() && args.initramfs.is_none() {
        return cannot_start(RootfsNeedsInitramfs);
    }
    fs_requests.extend(rootfs);
    let serial = match config::parse_serial(&args.serial) {
        Ok(s) => s,
        Err(e) => return cannot_start(e),
    };
    let (kernel, initramfs) = match args.kernel {
        Some(k) => (k, args.initramfs),
        None => match default_guest::locate() {
            Ok(g) => (g.kernel, Some(args.initramfs.unwrap_or(g.initramfs))),
            Err(e) => return cannot_start(e),
        },
    };
    let mut base = args
        .cmdline
        .unwrap_or_else(|| default_guest::DEFAULT_CMDLINE.to_string());
    if let Some(readonly) = rootfs_readonly {
        base = default_guest::append_rootfs(&base, config::ROOTFS_TAG, readonly);
    }
    let cmdline = match default_guest::append_command(&base, &args.command) {
        Ok(c) => c,
        Err(e) => return cannot_start(e),
    };
    let out: Box<dyn Write + Send> = match &serial {
        SerialTarget::Stdout => Box::new(std::io::stdout()),
        SerialTarget::Off => Box::new(std::io::sink()),
        SerialTarget::File(path) => match std::fs::File::create(path) {
            Ok(f) => Box::new(f),
            Err(e) => {
                return cannot_start(format!(
                    "--serial file={}: {e}: choose a writable path",
                    path.display()
                ))
            }
        },
    };
    let serial_in: Option<Box<dyn std::io::Read + Send>> = match serial {
        SerialTarget::Stdout => Some(Box::new(std::io::stdin())),
        _ => None,
    };
    let (watcher, guest) = ExitWatcher::new(out);
    // Last before the VM: a backend started here is stopped again (drop) if anything fails.
    let (fses, mut shares) = match bundled_shares::start(fs_requests, args.seccomp) {
        Ok(s) => s,
        Err(e) => return cannot_start(e),
    };

    let cfg = VmConfig {
        kernel,
        initramfs,
        cmdline,
        vcpus,
        memory,
        serial_out: Box::new(watcher),
        serial_in,
        nets,
        fses,
        placement: plan.placement,
    };
    let mut vm = match Vm::create(cfg) {
        Ok(vm) => vm,
        Err(e) => return cannot_start(e),
    };
    // The frontend connected while the VM was created: the sockets can go.
    for share in &mut shares {
        share.connected();
    }
    if let Err(e) = vm.start() {
        return cannot_start(e);
    }
    // The main thread's own filter goes on once the threads it spawns are running: they would
    // inherit it, and it does not allow what they do (KVM_RUN).
    if let Err(e) = vmm::threads::install_for_current_thread(ThreadCategory::Vmm) {
        eprintln!("paddock: {e}");
        // vCPUs are running: end the process rather than unwind around them.
        std::process::exit(EXIT_CANNOT_START.into());
    }
    let mut take = || signals.take();
    let outcome = vm.wait(Some(GracefulShutdown {
        requests: signals.fd(),
        take: &mut take,
        grace: Duration::from_secs(args.shutdown_timeout),
    }));
    let _ = std::io::stdout().flush();
    match outcome {
        Outcome::PowerOff if rootfs_readonly.is_some() && guest.ran_without_rootfs() => {
            eprintln!("paddock: --rootfs: the guest ran the command without mounting the tree (its /init does not know paddock.rootfs=): rebuild the default guest with resources/guest/build.sh, or give an --initramfs that follows the protocol in docs/virtiofs.md");
            ExitCode::from(EXIT_GUEST_FAILED)
        }
        // Without CMD the default guest reports a status only when it could not start (a
        // --rootfs that does not mount).
        Outcome::PowerOff => match guest.status() {
            None => ExitCode::SUCCESS,
            Some(status) => ExitCode::from(status.clamp(0, 255) as u8),
        },
        Outcome::Reset => {
            eprintln!("paddock: the guest reset (reboot, or a kernel panic with panic=N); Paddock does not reboot guests, the run ends");
            ExitCode::from(EXIT_GUEST_FAILED)
        }
        Outcome::Stopped(why) => {
            eprintln!("paddock: {why}");
            ExitCode::from(signals.exit_status())
        }
        Outcome::Fault(fault) => {
            eprintln!("paddock: {fault}");
            ExitCode::from(EXIT_GUEST_FAILED)
        }
    }
}
