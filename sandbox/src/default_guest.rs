//! The default guest built by `resources/guest/build.sh`: where it is, how a command reaches its
//! `/init` (words after ` -- ` on the kernel command line), and how its exit status comes back
//! (a `PADDOCK-GUEST-EXIT <status>` line on the serial console).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

/// Kernel command line used when the user gives none. `quiet` matters: every console byte is a VM exit.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 8250.nr_uarts=1 panic=1 reboot=acpi quiet";

const EXIT_MARKER: &str = "PADDOCK-GUEST-EXIT ";
/// Printed by /init once the command is about to run.
const READY_MARKER: &str = "PADDOCK-GUEST-READY";
/// Printed by /init, before READY, once the `--rootfs` share is mounted as the command's root.
const ROOTFS_MARKER: &str = "PADDOCK-GUEST-ROOTFS ";

#[derive(Debug, thiserror::Error)]
pub enum DefaultGuestError {
    #[error("no --kernel given and no default guest found (looked in {looked}): run resources/guest/build.sh or set PADDOCK_GUEST_DIR")]
    NotFound { looked: String },
    #[error("guest command argument `{0}` contains a double quote, which the kernel command line cannot carry")]
    Quote(String),
}

/// Asks the default guest's /init to mount the virtio-fs share with this tag as its root and to
/// run the command there: `paddock.rootfs=TAG`. The kernel ignores `x.y=` words it does not know
/// (they look like module parameters) and hands them neither to init's arguments nor its
/// environment.
const ROOTFS_PARAM: &str = "paddock.rootfs";
/// Mount options for that root (`ro`), like the kernel's own `rootflags=`.
const ROOTFLAGS_PARAM: &str = "paddock.rootflags";

/// Adds the `--rootfs` words to a kernel command line (before any ` -- ` command words, which
/// [`append_command`] adds afterwards).
pub fn append_rootfs(cmdline: &str, tag: &str, readonly: bool) -> String {
    let mut out = format!("{cmdline} {ROOTFS_PARAM}={tag}");
    if readonly {
        out.push_str(&format!(" {ROOTFLAGS_PARAM}=ro"));
    }
    out
}

pub struct DefaultGuest {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("PADDOCK_GUEST_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    // target/release/paddock -> target/guest
    if let Ok(exe) = std::env::current_exe() {
        if let Some(target) = exe.parent().and_then(Path::parent) {
            dirs.push(target.join("guest"));
        }
        if let Some(bin) = exe.parent() {
            dirs.push(bin.join("../guest"));
        }
    }
    dirs.push(PathBuf::from("/usr/share/paddock/guest"));
    dirs
}

pub fn locate() -> Result<DefaultGuest, DefaultGuestError> {
    let dirs = candidate_dirs();
    for dir in &dirs {
        let kernel = dir.join("vmlinuz");
        let initramfs = dir.join("initramfs.cpio.gz");
        if kernel.is_file() && initramfs.is_file() {
            return Ok(DefaultGuest { kernel, initramfs });
        }
    }
    Err(DefaultGuestError::NotFound {
        looked: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Appends ` -- CMD...` so that the kernel hands the words to /init as its arguments.
pub fn append_command(cmdline: &str, command: &[String]) -> Result<String, DefaultGuestError> {
    if command.is_empty() {
        return Ok(cmdline.to_string());
    }
    let mut out = format!("{cmdline} --");
    for arg in command {
        if arg.contains('"') {
            return Err(DefaultGuestError::Quote(arg.clone()));
        }
        out.push(' ');
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            out.push('"');
            out.push_str(arg);
            out.push('"');
        } else {
            out.push_str(arg);
        }
    }
    Ok(out)
}

/// What the guest's /init said on the console, as far as Paddock acts on it.
#[derive(Debug)]
pub struct GuestReport {
    status: AtomicI32,
    ready: AtomicBool,
    rootfs_mounted: AtomicBool,
}

const NO_STATUS: i32 = -1;

impl GuestReport {
    /// The command's exit status, once reported.
    pub fn status(&self) -> Option<i32> {
        Some(self.status.load(Ordering::Acquire)).filter(|&s| s != NO_STATUS)
    }

    /// /init reached the command, but without saying it mounted the `--rootfs` tree first: it
    /// does not know the protocol (an old default guest, a foreign initramfs), so the command ran
    /// in the initramfs, not in the tree.
    pub fn ran_without_rootfs(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.rootfs_mounted.load(Ordering::Acquire)
    }
}

/// Passes serial output through while watching for the guest's protocol lines.
pub struct ExitWatcher<W> {
    inner: W,
    line: Vec<u8>,
    report: Arc<GuestReport>,
}

impl<W: Write> ExitWatcher<W> {
    pub fn new(inner: W) -> (Self, Arc<GuestReport>) {
        let report = Arc::new(GuestReport {
            status: AtomicI32::new(NO_STATUS),
            ready: AtomicBool::new(false),
            rootfs_mounted: AtomicBool::new(false),
        });
        (
            Self {
                inner,
                line: Vec::new(),
                report: report.clone(),
            },
            report,
        )
    }

    fn end_of_line(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        if let Some(pos) = text.find(EXIT_MARKER) {
            let rest = text[pos + EXIT_MARKER.len()..].trim();
            if let Ok(code) = rest.parse::<i32>() {
                self.report.status.store(code, Ordering::Release);
            }
        } else if text.trim_end() == READY_MARKER {
            self.report.ready.store(true, Ordering::Release);
        } else if text.starts_with(ROOTFS_MARKER) && !self.report.ready.load(Ordering::Acquire) {
            self.report.rootfs_mounted.store(true, Ordering::Release);
        }
        self.line.clear();
    }
}

impl<W: Write> Write for ExitWatcher<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                self.end_of_line();
            } else if self.line.len() < 256 {
                self.line.push(b);
            }
        }
        // Unbuffered: a shell prompt has no newline and must still show.
        self.inner.write_all(buf)?;
        self.inner.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_words_and_quotes() {
        let c = append_command("quiet", &["sh".into(), "-c".into(), "exit 7".into()]).unwrap();
        assert_eq!(c, "quiet -- sh -c \"exit 7\"");
        assert_eq!(append_command("quiet", &[]).unwrap(), "quiet");
        assert!(append_command("q", &["a\"b".into()]).is_err());
    }

    #[test]
    fn rootfs_words_come_before_the_command() {
        let c = append_rootfs("quiet", "paddock-rootfs", true);
        assert_eq!(
            c,
            "quiet paddock.rootfs=paddock-rootfs paddock.rootflags=ro"
        );
        let c = append_command(&append_rootfs("quiet", "r", false), &["ls".into()]).unwrap();
        assert_eq!(c, "quiet paddock.rootfs=r -- ls");
    }

    #[test]
    fn watcher_tells_whether_the_rootfs_was_mounted_before_the_command() {
        let (mut w, report) = ExitWatcher::new(Vec::new());
        assert!(!report.ran_without_rootfs());
        w.write_all(b"PADDOCK-GUEST-ROOTFS paddock-rootfs\r\nPADDOCK-GUEST-READY\r\n")
            .unwrap();
        assert!(!report.ran_without_rootfs());
        // An /init that ignores paddock.rootfs=; a marker printed by the command counts not.
        let (mut w, report) = ExitWatcher::new(Vec::new());
        w.write_all(b"PADDOCK-GUEST-READY\r\nPADDOCK-GUEST-ROOTFS x\r\n")
            .unwrap();
        assert!(report.ran_without_rootfs());
    }

    #[test]
    fn watcher_finds_status_across_writes() {
        let (mut w, report) = ExitWatcher::new(Vec::new());
        w.write_all(b"hello\r\nPADDOCK-GUEST-EX").unwrap();
        assert_eq!(report.status(), None);
        w.write_all(b"IT 7\r\n").unwrap();
        assert_eq!(report.status(), Some(7));
        assert_eq!(w.inner, b"hello\r\nPADDOCK-GUEST-EXIT 7\r\n");
    }
}
