//! Command line: `paddock run ...`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "paddock",
    version,
    about = "A rootless VMM for Kubernetes pods and local runs"
)]
pub struct Cli {
    /// Started as root: the unprivileged user (numeric UID[:GID]) to switch to before anything is
    /// opened. Paddock refuses to run as root without it.
    #[arg(long, global = true, value_name = "UID[:GID]")]
    pub user: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Boot a guest. Without --kernel, boots the default guest and runs CMD in it.
    Run(Box<RunArgs>),
    /// Check, for the user paddock runs as and the VM options given (the same as run's), whether
    /// each need is met: one line each, with the fix; exits 1 when the VM could not run.
    Check(Box<RunArgs>),
    /// Print the SELinux CIL module, the OpenShift SCC, or the seccomp filter table.
    Policy(PolicyArgs),
    /// Serve a host directory to a guest: the bundled vhost-user-fs backend (one share per process).
    Virtiofsd(VirtiofsdArgs),
}

#[derive(Args, Debug)]
pub struct VirtiofsdArgs {
    /// The vhost-user socket to listen on (an old socket there is replaced; removed once the
    /// frontend connects).
    #[arg(long, value_name = "PATH")]
    pub socket_path: PathBuf,
    /// The directory to share; the guest can reach nothing outside it.
    #[arg(long, value_name = "DIR")]
    pub shared_dir: PathBuf,
    /// Refuse every change (EROFS).
    #[arg(long)]
    pub readonly: bool,
    /// `none`: no namespace (what KubeVirt runs, nothing needed); `namespace`: a user + mount
    /// namespace with the shared directory as its root.
    #[arg(long, value_enum, default_value = "none")]
    pub sandbox: SandboxMode,
    /// Worker threads serving the queues; 0: one per queue.
    #[arg(long, value_name = "N", default_value = "0")]
    pub thread_pool_size: usize,
    /// Request queues offered to the frontend (besides the high-priority queue).
    #[arg(long, value_name = "N", default_value = "1")]
    pub queues: usize,
    /// Seccomp filter on the backend's threads: `enforce`, `log` or `off` (see `paddock run`).
    #[arg(long, value_enum, default_value = "enforce")]
    pub seccomp: crate::seccomp::Mode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SandboxMode {
    None,
    Namespace,
}

#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[arg(value_enum)]
    pub kind: PolicyKind,
    /// seccomp: only the size of each thread category's allow list.
    #[arg(long)]
    pub summary: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyKind {
    Selinux,
    Scc,
    Seccomp,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Kernel: a bzImage, or an ELF vmlinux (entered through PVH when it has the PVH note).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initramfs (cpio archive, compressed or not).
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line (replaces the default `console=ttyS0 panic=1 quiet ...`).
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,
    /// vCPUs and their placement: `N`, or
    /// `boot=N[,affinity=auto|0@[2],1@[3-4]...][,emulator=CPUS][,realtime=fifo:PRIO]`. See
    /// docs/cpu-and-memory.md.
    #[arg(long, value_name = "boot=N,...", default_value = "1")]
    pub cpus: String,
    /// Guest RAM: `size=S[,hugepages=2M|1G][,hugetlbfs=DIR][,prefault=on][,shared=on]`, or just
    /// `S` (K, M, G suffixes; a bare number is MiB). See docs/cpu-and-memory.md.
    #[arg(long, value_name = "size=S,...", default_value = "512M")]
    pub memory: String,
    /// A virtio-net device on an existing tap: `tap=NAME[,queues=PAIRS][,mac=MAC]`; PAIRS
    /// defaults to the vCPU count and may not exceed it. Or on tap queues inherited from the
    /// parent: `fd=N[,fd=M...][,mac=MAC]`, one fd per queue pair. Repeatable. See
    /// docs/networking.md.
    #[arg(long, value_name = "tap=NAME,...|fd=N,...")]
    pub net: Vec<String>,
    /// A virtio-fs share: `tag=TAG,path=DIR[,ro]` serves host directory DIR with the bundled
    /// backend (`paddock virtiofsd`, started and stopped by paddock; `ro` refuses writes), or
    /// `tag=TAG,socket=PATH` uses a vhost-user-fs backend (virtiofsd) listening on PATH. Both take
    /// `[,queues=N][,queue_size=M]` (TAG at most 36 bytes, N request queues, default 1, M
    /// descriptors per queue, default 1024). Guest RAM is then mapped shared. Repeatable. See
    /// docs/virtiofs.md.
    #[arg(long, value_name = "tag=TAG,path=DIR|socket=PATH,...")]
    pub fs: Vec<String>,
    /// Boot with host directory DIR as the guest's root filesystem (e.g. a debootstrap tree):
    /// the default guest mounts it over virtio-fs, served by the bundled backend, and runs CMD
    /// in it (a shell without CMD). `ro` refuses writes. A user --initramfs must honour the
    /// default guest's `paddock.rootfs=TAG` protocol. See docs/virtiofs.md.
    #[arg(long, value_name = "DIR[,ro]")]
    pub rootfs: Option<String>,
    /// Guest serial console: `stdout`, `file=PATH` or `off`.
    #[arg(long, value_name = "stdout|file=PATH|off", default_value = "stdout")]
    pub serial: String,
    /// Seconds the guest has to power off after SIGTERM or SIGINT pressed its ACPI power button;
    /// then (or at a second signal) the run is stopped and paddock exits with 128 + the signal.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Seccomp filters on every thread: `enforce` (a forbidden call is reported and ends the
    /// run), `log` (allowed and logged by the kernel), `off` (no filters; debugging only).
    #[arg(long, value_enum, default_value = "enforce")]
    pub seccomp: crate::seccomp::Mode,
    /// Command to run in the guest (the default guest's /init runs it and reports its status).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}
