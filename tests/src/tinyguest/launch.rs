//! Boots an image with the real `paddock` binary, with a deadline: a guest or VMM that hangs is
//! killed (with its whole process group) and reported as a timeout, never left running.

use super::TinyGuestError;
use crate::workspace;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Long enough for a tiny guest under instruction-by-instruction emulation; short enough that a
/// hang does not stall the suite.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How one `paddock run` ended.
#[derive(Debug)]
pub struct GuestRun {
    /// None when it was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
    /// The deadline it ran under.
    pub timeout: Duration,
}

impl GuestRun {
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

impl std::fmt::Display for GuestRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "paddock ended with {s}")?,
            None => write!(
                f,
                "paddock did not finish within {BOOT_TIMEOUT:?} and was killed"
            )?,
        }
        write!(
            f,
            " after {:.2?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.elapsed,
            String::from_utf8_lossy(&self.stdout).escape_debug(),
            self.stderr
        )
    }
}

/// `paddock run --kernel KERNEL --cpus 1 --memory 64M --serial stdout`, killed after `timeout`.
pub fn boot(kernel: &Path, timeout: Duration) -> Result<GuestRun, TinyGuestError> {
    let bin = workspace::paddock_bin();
    if !bin.exists() {
        return Err(TinyGuestError::PaddockMissing(bin));
    }
    workspace::share_with_paddock(kernel).map_err(|source| TinyGuestError::Io {
        what: format!("making {} readable", kernel.display()),
        source,
    })?;
    let mut cmd = Command::new(&bin);
    cmd.arg("run")
        .args(workspace::paddock_user_args())
        .arg("--kernel")
        .arg(kernel)
        .args(["--cpus", "1", "--memory", "64M", "--serial", "stdout"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a kill at the deadline reaches anything it started.
        .process_group(0);
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|source| TinyGuestError::Io {
        what: format!("starting {}", bin.display()),
        source,
    })?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_until(&mut child, start + timeout)?;
    let elapsed = start.elapsed();
    Ok(GuestRun {
        status,
        stdout: join(stdout),
        stderr: String::from_utf8_lossy(&join(stderr)).into_owned(),
        elapsed,
        timeout,
    })
}

fn wait_until(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>, TinyGuestError> {
    loop {
        let polled = child.try_wait().map_err(|source| TinyGuestError::Io {
            what: "waiting for paddock".into(),
            source,
        })?;
        if let Some(status) = polled {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            kill_group(child);
            return Ok(None);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn kill_group(child: &mut Child) {
    if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; the group id is
        // the pid of the child we spawned as a group leader and have not reaped yet.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Option<JoinHandle<Vec<u8>>> {
    pipe.map(|mut p| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            // A read error ends the capture; what arrived so far is still reported.
            let _ = p.read_to_end(&mut buf);
            buf
        })
    })
}

fn join(reader: Option<JoinHandle<Vec<u8>>>) -> Vec<u8> {
    reader.and_then(|h| h.join().ok()).unwrap_or_default()
}
