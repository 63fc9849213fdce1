//! The VMMs a benchmark can run: Paddock and the peers, each started the same way on the same guest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmmKind {
    Paddock,
    Qemu,
    CloudHypervisor,
    Firecracker,
}

impl VmmKind {
    pub fn name(self) -> &'static str {
        match self {
            VmmKind::Paddock => "paddock",
            VmmKind::Qemu => "qemu",
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
    #[error("--peer `{0}`: write NAME=PATH with NAME one of qemu, cloud-hypervisor, firecracker")]
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
            VmmKind::Qemu => {
                // QEMU's own minimal machine, the fair peer for direct kernel boot.
                cmd.args([
                    "-M",
                    "microvm,x-option-roms=off,rtc=off,acpi=on",
                    "-accel",
                    "kvm",
                    "-cpu",
                    "host",
                    "-smp",
                    &cpus,
                    "-m",
                    &mem,
                    "-nodefaults",
                    "-no-user-config",
                    "-nographic",
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
