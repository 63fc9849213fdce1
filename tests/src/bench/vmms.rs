//! The VMMs a benchmark can run: Paddock and the peers, each started the same way on the same guest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmmKind {
    Paddock,
    /// QEMU's `microvm` machine.
    Qemu,
    /// QEMU's `pc` machine (SeaBIOS, PCI, option-ROM kernel loader), for when microvm is no option.
    QemuPc,
    CloudHypervisor,
    Firecracker,
}

impl VmmKind {
    pub fn name(self) -> &'static str {
        match self {
            VmmKind::Paddock => "paddock",
            VmmKind::Qemu => "qemu",
            VmmKind::QemuPc => "qemu-pc",
            VmmKind::CloudHypervisor => "cloud-hypervisor",
            VmmKind::Firecracker => "firecracker",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Vmm {
    pub kind: VmmKind,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("--peer `{0}`: write NAME=PATH with NAME one of qemu, qemu-pc, cloud-hypervisor, firecracker")]
    Malformed(String),
    #[error("--peer {name}: {path} is not an executable file")]
    NotExecutable { name: String, path: PathBuf },
}

/// The paddock binary a benchmark runs by default: PADDOCK_BIN, else the workspace's build, else
/// `paddock` on PATH.
pub fn default_paddock() -> PathBuf {
    if let Some(p) = std::env::var_os("PADDOCK_BIN") {
        return PathBuf::from(p);
    }
    let built = crate::workspace::paddock_bin();
    if built.is_file() {
        return built;
    }
    crate::testhost::mode::find_on_path("paddock").unwrap_or(built)
}

/// `--kernel`, `--initramfs` and `--paddock`: what every benchmark that boots the default guest
/// under Paddock takes.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct BootFiles {
    /// Kernel (default: vmlinuz of the default guest, from PADDOCK_GUEST_DIR or target/guest).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initramfs (default: the default guest's initramfs.cpio.gz, which has the modules and
    /// tools the benchmarks use: virtiofs, iperf3, taskset).
    #[arg(long)]
    pub initramfs: Option<PathBuf>,
    /// The paddock binary (default: PADDOCK_BIN, else the workspace's build, else `paddock` on PATH).
    #[arg(long)]
    pub paddock: Option<PathBuf>,
}

impl BootFiles {
    /// The kernel and initramfs, defaults filled in, not checked.
    pub fn guest_unchecked(&self) -> (PathBuf, PathBuf) {
        guest_files(self.kernel.as_deref(), self.initramfs.as_deref())
    }

    /// The kernel and initramfs, defaults filled in; fails, naming the fix, when one is missing.
    pub fn guest(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        let (kernel, initramfs) = self.guest_unchecked();
        require_guest_files(&kernel, &initramfs)?;
        Ok((kernel, initramfs))
    }

    /// The paddock binary to measure (see [`paddock_binary`]).
    pub fn paddock(&self) -> anyhow::Result<PathBuf> {
        paddock_binary(self.paddock.as_deref())
    }
}

/// The kernel and initramfs a benchmark boots: the ones given, else the default guest's.
pub fn guest_files(kernel: Option<&Path>, initramfs: Option<&Path>) -> (PathBuf, PathBuf) {
    let dir = default_guest_dir();
    (
        kernel.map_or_else(|| dir.join("vmlinuz"), Path::to_path_buf),
        initramfs.map_or_else(|| dir.join("initramfs.cpio.gz"), Path::to_path_buf),
    )
}

/// Fails, naming the fix, when the guest's kernel or initramfs is missing.
pub fn require_guest_files(kernel: &Path, initramfs: &Path) -> anyhow::Result<()> {
    for (what, path) in [("kernel", kernel), ("initramfs", initramfs)] {
        if !path.is_file() {
            anyhow::bail!(
                "{what} {} not found: run resources/guest/build.sh, set PADDOCK_GUEST_DIR or pass --{what}",
                path.display()
            );
        }
    }
    Ok(())
}

/// The paddock binary to measure: the one given, else [`default_paddock`]; fails, naming the fix,
/// when it is missing.
pub fn paddock_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let paddock = given.map_or_else(default_paddock, Path::to_path_buf);
    if !paddock.is_file() {
        anyhow::bail!(
            "paddock binary {} not found: build it (cargo build --release -p sandbox), set PADDOCK_BIN or pass --paddock",
            paddock.display()
        );
    }
    Ok(paddock)
}

/// The default guest's directory: PADDOCK_GUEST_DIR, else the workspace's target/guest.
pub fn default_guest_dir() -> PathBuf {
    std::env::var_os("PADDOCK_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(crate::workspace::guest_dir)
}

/// Parses `--peer NAME=PATH`.
pub fn parse_peer(text: &str) -> Result<Vmm, PeerError> {
    let (name, path) = text
        .split_once('=')
        .ok_or_else(|| PeerError::Malformed(text.to_string()))?;
    let kind = match name {
        "qemu" => VmmKind::Qemu,
        "qemu-pc" => VmmKind::QemuPc,
        "cloud-hypervisor" => VmmKind::CloudHypervisor,
        "firecracker" => VmmKind::Firecracker,
        _ => return Err(PeerError::Malformed(text.to_string())),
    };
    let path = PathBuf::from(path);
    if !path.is_file() {
        return Err(PeerError::NotExecutable {
            name: name.to_string(),
            path,
        });
    }
    Ok(Vmm { kind, path })
}

/// One guest boot, as every VMM is asked to do it.
#[derive(Clone, Debug)]
pub struct Guest<'a> {
    pub kernel: &'a Path,
    pub initramfs: Option<&'a Path>,
    pub cmdline: &'a str,
    pub cpus: u8,
    pub mem_mib: u64,
}

/// A virtio-net device on an existing multi-queue tap, as each VMM is asked to attach it.
#[derive(Clone, Debug)]
pub struct NetAttach<'a> {
    pub tap: &'a str,
    pub pairs: u8,
    pub mac: &'a str,
}

/// A virtio-fs device whose queues a vhost-user-fs backend serves on `socket`.
#[derive(Clone, Debug)]
pub struct FsAttach<'a> {
    pub socket: &'a Path,
    pub tag: &'a str,
    pub queue_size: u16,
}

impl Vmm {
    /// The command that boots `guest` with its serial console on stdout. `scratch` holds any
    /// configuration file the VMM needs.
    pub fn command(&self, guest: &Guest, scratch: &Path) -> std::io::Result<Command> {
        self.command_with_devices(guest, scratch, None, None)
    }

    /// [`Vmm::command`] with a virtio-net device on a tap: Paddock's `--net`, QEMU's
    /// virtio-net-pci on a `-netdev tap` (no vhost: a user-space device like Paddock's; microvm
    /// gets its PCIe host bridge for it), Cloud Hypervisor's `--net`. Firecracker has no
    /// multi-queue virtio-net and is refused.
    pub fn command_with_net(
        &self,
        guest: &Guest,
        scratch: &Path,
        net: Option<&NetAttach>,
    ) -> std::io::Result<Command> {
        self.command_with_devices(guest, scratch, net, None)
    }

    /// [`Vmm::command_with_net`] and, with `fs`, a virtio-fs device on a vhost-user-fs backend
    /// with guest RAM shared: Paddock's `--fs` (RAM shared by itself), QEMU's vhost-user-fs-pci
    /// on a shared memfd memory backend, Cloud Hypervisor's `--fs` with `shared=on`. Firecracker
    /// has no virtio-fs and is refused.
    pub fn command_with_devices(
        &self,
        guest: &Guest,
        scratch: &Path,
        net: Option<&NetAttach>,
        fs: Option<&FsAttach>,
    ) -> std::io::Result<Command> {
        let mut cmd = Command::new(&self.path);
        let mem = guest.mem_mib.to_string();
        let cpus = guest.cpus.to_string();
        match self.kind {
            VmmKind::Paddock => {
                cmd.arg("run")
                    .args(crate::workspace::paddock_user_args())
                    .arg("--kernel")
                    .arg(guest.kernel);
                if let Some(i) = guest.initramfs {
                    cmd.arg("--initramfs").arg(i);
                }
                cmd.args(["--cmdline", guest.cmdline, "--cpus", &cpus, "--memory"])
                    .arg(format!("{mem}M"));
                if let Some(n) = net {
                    cmd.arg("--net")
                        .arg(format!("tap={},queues={},mac={}", n.tap, n.pairs, n.mac));
                }
                if let Some(f) = fs {
                    cmd.arg("--fs").arg(format!(
                        "tag={},socket={},queue_size={}",
                        f.tag,
                        f.socket.display(),
                        f.queue_size
                    ));
                }
            }
            VmmKind::Qemu | VmmKind::QemuPc => {
                // microvm: QEMU's own minimal machine, the fair peer for direct kernel boot (qboot
                // loads the kernel itself, no option ROMs, no PCI). pc: the classic machine.
                let pci = net.is_some() || fs.is_some();
                let mut machine = match (self.kind, pci) {
                    (VmmKind::Qemu, false) => "microvm,x-option-roms=off,rtc=off,acpi=on",
                    (VmmKind::Qemu, true) => "microvm,x-option-roms=off,rtc=off,acpi=on,pcie=on",
                    _ => "pc",
                }
                .to_string();
                if fs.is_some() {
                    // vhost-user needs guest RAM in a file the backend can map.
                    machine += ",memory-backend=mem";
                }
                // kvm_pvm refuses QEMU's write of MSR_IA32_ARCH_CAPABILITIES (QEMU then aborts);
                // hardware KVM and nested kvm_amd take the plain host model.
                let cpu = if Path::new("/sys/module/kvm_pvm").exists() {
                    "host,-arch-capabilities"
                } else {
                    "host"
                };
                cmd.args([
                    "-M",
                    &machine,
                    "-accel",
                    "kvm",
                    "-cpu",
                    cpu,
                    "-smp",
                    &cpus,
                    "-m",
                    &mem,
                    "-nodefaults",
                    "-no-user-config",
                    "-display",
                    "none",
                    "-serial",
                    "stdio",
                    "-no-reboot",
                    "-kernel",
                ])
                .arg(guest.kernel)
                .args(["-append", guest.cmdline]);
                if let Some(i) = guest.initramfs {
                    cmd.arg("-initrd").arg(i);
                }
                if let Some(n) = net {
                    let mq = if n.pairs > 1 { "on" } else { "off" };
                    cmd.arg("-netdev")
                        .arg(format!(
                            "tap,id=net0,ifname={},script=no,downscript=no,queues={},vhost=off",
                            n.tap, n.pairs
                        ))
                        .arg("-device")
                        .arg(format!(
                            // No option ROM: a direct kernel boot does not use it.
                            "virtio-net-pci,netdev=net0,mac={},mq={mq},vectors={},romfile=",
                            n.mac,
                            2 * u32::from(n.pairs) + 2
                        ));
                }
                if let Some(f) = fs {
                    cmd.arg("-object")
                        .arg(format!("memory-backend-memfd,id=mem,size={mem}M,share=on"))
                        .arg("-chardev")
                        .arg(format!("socket,id=fs0,path={}", f.socket.display()))
                        .arg("-device")
                        .arg(format!(
                            "vhost-user-fs-pci,chardev=fs0,tag={},queue-size={},romfile=",
                            f.tag, f.queue_size
                        ));
                }
            }
            VmmKind::CloudHypervisor => {
                cmd.arg("--kernel").arg(guest.kernel);
                if let Some(i) = guest.initramfs {
                    cmd.arg("--initramfs").arg(i);
                }
                let shared = if fs.is_some() { ",shared=on" } else { "" };
                cmd.args(["--cmdline", guest.cmdline, "--cpus"])
                    .arg(format!("boot={cpus}"))
                    .arg("--memory")
                    .arg(format!("size={mem}M{shared}"))
                    .args(["--serial", "tty", "--console", "off"]);
                if let Some(f) = fs {
                    cmd.arg("--fs").arg(format!(
                        "tag={},socket={},num_queues=1,queue_size={}",
                        f.tag,
                        f.socket.display(),
                        f.queue_size
                    ));
                }
                if let Some(n) = net {
                    cmd.arg("--net").arg(format!(
                        "tap={},mac={},num_queues={}",
                        n.tap,
                        n.mac,
                        2 * u32::from(n.pairs)
                    ));
                }
            }
            VmmKind::Firecracker => {
                if fs.is_some() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::Unsupported,
                        "firecracker has no virtio-fs: leave it out of fs benchmarks",
                    ));
                }
                if net.is_some() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::Unsupported,
                        "firecracker has no multi-queue virtio-net: leave it out of net benchmarks",
                    ));
                }
                let config = serde_json::json!({
                    "boot-source": {
                        "kernel_image_path": guest.kernel,
                        "initrd_path": guest.initramfs,
                        "boot_args": guest.cmdline,
                    },
                    "drives": [],
                    "machine-config": { "vcpu_count": guest.cpus, "mem_size_mib": guest.mem_mib },
                });
                let file = scratch.join("firecracker.json");
                std::fs::write(&file, config.to_string())?;
                cmd.args(["--no-api", "--config-file"]).arg(file);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(cmd)
    }
}
