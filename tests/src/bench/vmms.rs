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

impl Vmm {
    /// The command that boots `guest` with its serial console on stdout. `scratch` holds any
    /// configuration file the VMM needs.
    pub fn command(&self, guest: &Guest, scratch: &Path) -> std::io::Result<Command> {
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
            }
            VmmKind::Qemu | VmmKind::QemuPc => {
                // microvm: QEMU's own minimal machine, the fair peer for direct kernel boot (qboot
                // loads the kernel itself, no option ROMs, no PCI). pc: the classic machine.
                let machine = if self.kind == VmmKind::Qemu {
                    "microvm,x-option-roms=off,rtc=off,acpi=on"
                } else {
                    "pc"
                };
                // kvm_pvm refuses QEMU's write of MSR_IA32_ARCH_CAPABILITIES (QEMU then aborts);
                // hardware KVM and nested kvm_amd take the plain host model.
                let cpu = if Path::new("/sys/module/kvm_pvm").exists() {
                    "host,-arch-capabilities"
                } else {
                    "host"
                };
                cmd.args([
                    "-M",
                    machine,
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
            }
            VmmKind::CloudHypervisor => {
                cmd.arg("--kernel").arg(guest.kernel);
                if let Some(i) = guest.initramfs {
                    cmd.arg("--initramfs").arg(i);
                }
                cmd.args(["--cmdline", guest.cmdline, "--cpus"])
                    .arg(format!("boot={cpus}"))
                    .arg("--memory")
                    .arg(format!("size={mem}M"))
                    .args(["--serial", "tty", "--console", "off"]);
            }
            VmmKind::Firecracker => {
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
