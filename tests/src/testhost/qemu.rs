//! The KVM test host's L1: one `qemu-system-x86_64 -accel tcg -cpu max` boot (emulated AMD SVM, so
//! L1 loads kvm-amd) with the L1 kernel log on the first serial port and the scenario on the second.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum QemuError {
    #[error("cannot start {qemu} for the KVM test host: {source}; install qemu-system-x86 (resources/setup/deps.sh)")]
    Spawn {
        qemu: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create QEMU's log {0}: {1}")]
    Log(PathBuf, #[source] io::Error),
}

/// One L1 boot's inputs and where its serial ports go.
#[derive(Debug, Clone)]
pub struct L1Boot {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    /// L1 base cpio followed by the payload cpio.
    pub initrd: PathBuf,
    pub cpus: u32,
    pub memory_mib: u32,
    /// ttyS0: the L1 kernel's console.
    pub console_log: PathBuf,
    /// ttyS1: L1 init's and the scenario's markers.
    pub results_log: PathBuf,
    /// QEMU's own stdout and stderr.
    pub qemu_log: PathBuf,
}

impl L1Boot {
    /// The QEMU command line, as documented in docs/testing.md.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.qemu);
        c.args(["-accel", "tcg,thread=multi", "-M", "pc", "-cpu", "max"])
            .arg("-smp")
            .arg(self.cpus.to_string())
            .arg("-m")
            .arg(format!("{}M", self.memory_mib))
            .args(["-nodefaults", "-display", "none", "-monitor", "none"])
            .args(["-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", self.console_log.display()))
            .arg("-serial")
            .arg(format!("file:{}", self.results_log.display()))
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1"]);
        c
    }

    /// Starts QEMU with stdin closed and its output into `qemu_log`.
    pub fn spawn(&self) -> Result<std::process::Child, QemuError> {
        let log = |p: &Path| File::create(p).map_err(|e| QemuError::Log(p.to_path_buf(), e));
        let out = log(&self.qemu_log)?;
        let err = out
            .try_clone()
            .map_err(|e| QemuError::Log(self.qemu_log.clone(), e))?;
        self.command()
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| QemuError::Spawn {
                qemu: self.qemu.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_svm_cpu_two_serial_files_and_no_reboot() {
        let b = L1Boot {
            qemu: "qemu-system-x86_64".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            cpus: 2,
            memory_mib: 4096,
            console_log: "/l/console.log".into(),
            results_log: "/l/results.log".into(),
            qemu_log: "/l/qemu.log".into(),
        };
        let args: Vec<String> = b
            .command()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = args.join(" ");
        assert!(line.contains("-cpu max"), "{line}");
        assert!(line.contains("-m 4096M"), "{line}");
        assert!(line.contains("-serial file:/l/console.log -serial file:/l/results.log"));
        assert!(line.contains("-no-reboot") && line.contains("-initrd /i"));
    }
}
