//! Starting the bundled backend for a `--fs tag=T,path=DIR[,ro]` share: `paddock virtiofsd` (this
//! very binary, as the same user) with its socket in a private runtime directory, which is removed
//! as soon as the frontend has connected. A share that never got connected (paddock failed to
//! start) is stopped and cleaned up when its [`RunningShare`] drops; a connected backend ends by
//! itself when paddock closes the connection (the VM ended, or paddock died).

use clap::ValueEnum;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a backend may take to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{}: creating the runtime directory under {base}: {source}: set XDG_RUNTIME_DIR or TMPDIR to a writable directory", option_name(tag))]
    RuntimeDir {
        tag: String,
        base: String,
        source: std::io::Error,
    },
    #[error("{}: starting `{exe} virtiofsd`: {source}", option_name(tag))]
    Spawn {
        tag: String,
        exe: String,
        source: std::io::Error,
    },
    #[error(
        "{}: the virtiofsd for {dir} exited with {status} before serving (its message is above)",
        option_name(tag)
    )]
    Exited {
        tag: String,
        dir: String,
        status: std::process::ExitStatus,
    },
    #[error(
        "{}: the virtiofsd for {dir} made no socket within {secs} s",
        option_name(tag)
    )]
    Timeout { tag: String, dir: String, secs: u64 },
}

/// The option a share came from, for messages: `--rootfs` or `--fs tag=T`.
fn option_name(tag: &str) -> String {
    match tag == crate::config::ROOTFS_TAG {
        true => "--rootfs".into(),
        false => format!("--fs tag={tag}"),
    }
}

/// What to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareSpec {
    pub tag: String,
    pub dir: PathBuf,
    pub readonly: bool,
    pub request_queues: usize,
    /// The backend's `--seccomp`: the same as the VMM's.
    pub seccomp: crate::seccomp::Mode,
}

/// A started backend.
pub struct RunningShare {
    child: Option<Child>,
    runtime_dir: Option<PathBuf>,
    socket: PathBuf,
}

/// A 0700 directory for this run's sockets: under $XDG_RUNTIME_DIR when set, else the temp dir.
fn runtime_dir(tag: &str) -> Result<PathBuf, LaunchError> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let pid = std::process::id();
    let mut last = None;
    for attempt in 0..100u32 {
        let dir = base.join(format!("paddock-{pid}-fs-{attempt}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => {
                last = Some(e);
                break;
            }
        }
    }
    Err(LaunchError::RuntimeDir {
        tag: tag.to_string(),
        base: base.display().to_string(),
        source: last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EEXIST)),
    })
}

impl RunningShare {
    /// Starts `exe virtiofsd` for `spec` and waits until its socket exists. `as_user`: a
    /// caller still running as root (tests) has the backend switch to that uid:gid, and hands
    /// it the runtime directory; `paddock run` has already switched and passes None.
    pub fn start(
        exe: &Path,
        as_user: Option<(u32, u32)>,
        spec: &ShareSpec,
    ) -> Result<Self, LaunchError> {
        let dir = runtime_dir(&spec.tag)?;
        if let Some((uid, gid)) = as_user {
            if let Err(source) = std::os::unix::fs::chown(&dir, Some(uid), Some(gid)) {
                let _ = std::fs::remove_dir(&dir);
                return Err(LaunchError::RuntimeDir {
                    tag: spec.tag.clone(),
                    base: dir.display().to_string(),
                    source,
                });
            }
        }
        let socket = dir.join("virtiofsd.sock");
        let mut share = RunningShare {
            child: None,
            runtime_dir: Some(dir),
            socket: socket.clone(),
        };
        let mut cmd = Command::new(exe);
        if let Some((uid, gid)) = as_user {
            cmd.arg("--user").arg(format!("{uid}:{gid}"));
        }
        cmd.arg("virtiofsd")
            .arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&spec.dir)
            .arg("--queues")
            .arg(spec.request_queues.to_string())
            .stdin(Stdio::null())
            // Its own process group: Ctrl-C in a terminal reaches paddock, which shuts the guest
            // down, and not the backend the guest still needs while it does.
            .process_group(0);
        if spec.readonly {
            cmd.arg("--readonly");
        }
        if let Some(mode) = spec.seccomp.to_possible_value() {
            cmd.arg("--seccomp").arg(mode.get_name());
        }
        // SAFETY: the closure runs in the child between fork and exec and only makes
        // async-signal-safe calls (sigemptyset, sigprocmask, prctl) on a set it owns.
        unsafe {
            cmd.pre_exec(|| {
                // paddock run blocks SIGTERM/SIGINT for its signalfd, and the mask survives exec:
                // the backend starts with none blocked, or the signal below would never arrive.
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Not left waiting for a frontend that will never come if paddock dies first.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| LaunchError::Spawn {
            tag: spec.tag.clone(),
            exe: exe.display().to_string(),
            source,
        })?;
        share.child = Some(child);
        let started = Instant::now();
        while !socket.exists() {
            if let Some(child) = share.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    share.child = None;
                    return Err(LaunchError::Exited {
                        tag: spec.tag.clone(),
                        dir: spec.dir.display().to_string(),
                        status,
                    });
                }
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(LaunchError::Timeout {
                    tag: spec.tag.clone(),
                    dir: spec.dir.display().to_string(),
                    secs: START_TIMEOUT.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(share)
    }

    /// The socket the frontend connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Call once the frontend is connected: the socket and its directory go (nothing is left
    /// on disk), and the backend now ends with the connection.
    pub fn connected(&mut self) {
        if let Some(dir) = self.runtime_dir.take() {
            let _ = std::fs::remove_file(&self.socket);
            let _ = std::fs::remove_dir(&dir);
        }
        // Reaped by the kernel's reparenting only when paddock ends; it ends with the connection.
        self.child = None;
    }
}

impl Drop for RunningShare {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.runtime_dir.take() {
            let _ = std::fs::remove_file(&self.socket);
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// `paddock run`'s `--fs`: starts the bundled backend for every `path=` share, and gives back what
/// the VM connects to (in `--fs` order) with the started shares.
pub mod bundled_shares {
    use super::{option_name, LaunchError, RunningShare, ShareSpec};
    use crate::config::FsRequest;
    use std::path::{Path, PathBuf};
    use vmm::fs::FsSpec;

    #[derive(Debug, thiserror::Error)]
    pub enum ShareError {
        #[error("{what} does not exist: give an existing directory")]
        Missing { what: String },
        #[error("{what} is not a directory: give a directory")]
        NotDirectory { what: String },
        #[error("{what}: {source}: this user (uid {uid}) cannot list it; give it read and search (r-x) permission")]
        Unreadable {
            what: String,
            uid: u32,
            source: std::io::Error,
        },
        #[error(transparent)]
        Launch(#[from] LaunchError),
    }

    /// This very binary, whatever the name it was started by.
    const SELF_EXE: &str = "/proc/self/exe";

    /// Whether the backend, which runs as this process's user, can serve `dir`: a directory it
    /// can list. `paddock check` reports the same.
    pub fn check_dir(tag: &str, dir: &Path) -> Result<(), ShareError> {
        // `--rootfs DIR` or `--fs tag=T: path=DIR`.
        let what = match tag == crate::config::ROOTFS_TAG {
            true => format!("--rootfs {}", dir.display()),
            false => format!("{}: path={}", option_name(tag), dir.display()),
        };
        let unreadable = |what, source| ShareError::Unreadable {
            what,
            // SAFETY: geteuid has no preconditions and cannot fail.
            uid: unsafe { libc::geteuid() },
            source,
        };
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => std::fs::read_dir(dir)
                .map(drop)
                .map_err(|e| unreadable(what, e)),
            Ok(_) => Err(ShareError::NotDirectory { what }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ShareError::Missing { what }),
            Err(e) => Err(unreadable(what, e)),
        }
    }

    /// Every directory is checked before any backend starts; on an error the backends started
    /// so far are stopped and their runtime directories removed (dropped).
    pub fn start(
        requests: Vec<FsRequest>,
        seccomp: crate::seccomp::Mode,
    ) -> Result<(Vec<FsSpec>, Vec<RunningShare>), ShareError> {
        for request in &requests {
            if let FsRequest::Path { config, dir, .. } = request {
                check_dir(&config.tag, dir)?;
            }
        }
        let mut specs = Vec::with_capacity(requests.len());
        let mut shares = Vec::new();
        for request in requests {
            match request {
                FsRequest::Socket(spec) => specs.push(spec),
                FsRequest::Path {
                    config,
                    dir,
                    readonly,
                } => {
                    let share = RunningShare::start(
                        Path::new(SELF_EXE),
                        None,
                        &ShareSpec {
                            tag: config.tag.clone(),
                            dir,
                            readonly,
                            request_queues: config.request_queues,
                            seccomp,
                        },
                    )?;
                    specs.push(FsSpec {
                        config,
                        socket: PathBuf::from(share.socket()),
                    });
                    shares.push(share);
                }
            }
        }
        Ok((specs, shares))
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::config::parse_fs;

        fn start_one(text: &str) -> Result<usize, ShareError> {
            let (specs, _shares) =
                start(vec![parse_fs(text).unwrap()], crate::seccomp::Mode::Enforce)?;
            Ok(specs.len())
        }

        #[test]
        fn a_missing_or_plain_path_is_refused_naming_it() {
            let dir = tempfile::tempdir().unwrap();
            let missing = dir.path().join("nope");
            let err = start_one(&format!("tag=t,path={}", missing.display())).unwrap_err();
            assert!(matches!(err, ShareError::Missing { .. }), "{err}");
            assert!(err.to_string().contains(&missing.display().to_string()));
            let file = dir.path().join("file");
            std::fs::write(&file, b"x").unwrap();
            let err = start_one(&format!("tag=t,path={},ro", file.display())).unwrap_err();
            assert!(matches!(err, ShareError::NotDirectory { .. }), "{err}");
            assert!(err.to_string().contains(&file.display().to_string()));
        }

        #[test]
        fn rootfs_errors_name_the_option() {
            let dir = tempfile::tempdir().unwrap();
            let missing = dir.path().join("nope");
            let request = crate::config::parse_rootfs(&missing.display().to_string()).unwrap();
            let err = start(vec![request], crate::seccomp::Mode::Enforce)
                .err()
                .expect("a missing rootfs was served");
            assert_eq!(
                err.to_string(),
                format!(
                    "--rootfs {} does not exist: give an existing directory",
                    missing.display()
                )
            );
        }

        #[test]
        fn socket_shares_pass_through_untouched() {
            let (specs, shares) = start(
                vec![parse_fs("tag=t,socket=/run/x.sock,queues=2").unwrap()],
                crate::seccomp::Mode::Enforce,
            )
            .unwrap();
            assert!(shares.is_empty());
            assert_eq!(specs[0].socket, PathBuf::from("/run/x.sock"));
            assert_eq!(specs[0].config.request_queues, 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// The `paddock` binary next to this test binary (target/release/deps/..).
    fn paddock() -> PathBuf {
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().and_then(Path::parent).unwrap().join("paddock");
        assert!(
            bin.exists(),
            "{} missing: cargo build --release -p sandbox first",
            bin.display()
        );
        bin
    }

    /// As root (the test machines), the backend runs as uid/gid 1000, like under `paddock run
    /// --user 1000`; the share must then be that user's.
    fn as_user() -> Option<(u32, u32)> {
        // SAFETY: geteuid has no preconditions.
        (unsafe { libc::geteuid() } == 0).then_some((1000, 1000))
    }

    fn share_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        if let Some((uid, gid)) = as_user() {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        dir
    }

    /// The tests look at this process's runtime directories: one test at a time.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn spec(dir: &Path) -> ShareSpec {
        ShareSpec {
            tag: "data".into(),
            dir: dir.to_path_buf(),
            readonly: false,
            request_queues: 1,
            seccomp: crate::seccomp::Mode::Enforce,
        }
    }

    fn is_running(pid: u32) -> bool {
        // Gone or a zombie both count as stopped.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    }

    #[test]
    fn started_backend_accepts_a_connection_and_leaves_nothing_behind() {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let share = share_dir();
        let mut running = RunningShare::start(&paddock(), as_user(), &spec(share.path())).unwrap();
        let socket = running.socket().to_path_buf();
        let dir = socket.parent().unwrap().to_path_buf();
        let mode = std::fs::metadata(&dir).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o700
        );
        let _conn = UnixStream::connect(&socket).unwrap();
        running.connected();
        assert!(!socket.exists() && !dir.exists());
    }

    /// `paddock run` blocks SIGTERM and SIGINT (its signalfd); the backend must not inherit
    /// that, or its parent-death signal would never arrive.
    #[test]
    fn backend_starts_with_no_signal_blocked() {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let share = share_dir();
        let mut blocked = nix::sys::signal::SigSet::empty();
        blocked.add(nix::sys::signal::Signal::SIGTERM);
        blocked.add(nix::sys::signal::Signal::SIGINT);
        blocked.thread_block().unwrap();
        let started = RunningShare::start(&paddock(), as_user(), &spec(share.path()));
        blocked.thread_unblock().unwrap();
        let running = started.unwrap();
        let pid = running.child.as_ref().map(|c| c.id()).unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let mask = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .map(str::trim)
            .unwrap();
        assert_eq!(
            mask, "0000000000000000",
            "the backend inherited a signal mask"
        );
    }

    #[test]
    fn a_failing_backend_is_reported_and_cleaned_up() {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let missing = tempfile::tempdir().unwrap().path().join("nope");
        let err = match RunningShare::start(&paddock(), as_user(), &spec(&missing)) {
            Ok(_) => panic!("a missing directory was served"),
            Err(e) => e,
        };
        assert!(matches!(err, LaunchError::Exited { .. }), "{err}");
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let prefix = format!("paddock-{}-fs-", std::process::id());
        let left: Vec<_> = std::fs::read_dir(base)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .collect();
        assert!(left.is_empty(), "runtime dir left behind: {left:?}");
    }

    #[test]
    fn dropping_an_unconnected_share_stops_its_backend() {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let share = share_dir();
        let running = RunningShare::start(&paddock(), as_user(), &spec(share.path())).unwrap();
        let pid = running.child.as_ref().map(Child::id).unwrap();
        let dir = running.socket().parent().unwrap().to_path_buf();
        assert!(is_running(pid));
        drop(running);
        assert!(!is_running(pid), "backend still running after drop");
        assert!(!dir.exists());
    }
}
