//! `paddock virtiofsd`: the bundled vhost-user-fs backend, one process per share.
//!
//! Start-up, in this order: switch user and drop privileges, open the shared directory and
//! /proc/self/fd, bind the socket, set up the optional namespace sandbox, then put the
//! `virtiofsd` seccomp filter on the (still only) thread. The threads vhost-user-backend starts
//! afterwards (one per queue worker, one for the vhost-user connection) inherit that filter, so
//! everything that touches guest requests runs under it.

mod abi;
mod backend;
mod io;
pub mod launch;
mod passthrough;
mod sandbox;
mod server;

use crate::cli::{SandboxMode, VirtiofsdArgs};
use crate::privilege;
use crate::seccomp;
use crate::EXIT_CANNOT_START;
use caps::CapsHashSet;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::process::ExitCode;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm::threads::ThreadCategory;

pub use passthrough::PassthroughFs;
pub use server::Server;

#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdError {
    #[error(transparent)]
    Setup(#[from] passthrough::SetupError),
    #[error("--socket-path {path}: {source}: give a path in a writable directory (an old socket there is replaced)")]
    Socket {
        path: String,
        source: std::io::Error,
    },
    #[error("--queues {0}: give 1 to {max} request queues", max = MAX_REQUEST_QUEUES)]
    Queues(usize),
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("starting the vhost-user daemon: {0}")]
    Daemon(String),
}

/// Request queues one backend offers at most (each gets a worker thread by default).
pub const MAX_REQUEST_QUEUES: usize = 16;

fn cannot_start(err: impl std::fmt::Display) -> ExitCode {
    eprintln!("paddock virtiofsd: {err}");
    ExitCode::from(EXIT_CANNOT_START)
}

pub fn run(user: Option<&str>, args: VirtiofsdArgs) -> ExitCode {
    let user = match user.map(privilege::parse_user).transpose() {
        Ok(u) => u,
        Err(e) => return cannot_start(e),
    };
    if let Err(e) = privilege::enter(user, &CapsHashSet::new()) {
        return cannot_start(e);
    }
    match serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cannot_start(e),
    }
}

/// Binds the listening socket; returns it and an fd of its directory (to remove the socket
/// once the frontend is connected, even from inside the namespace sandbox).
fn bind(path: &std::path::Path) -> Result<(Listener, OwnedFd, std::ffi::OsString), VirtiofsdError> {
    let err = |source| VirtiofsdError::Socket {
        path: path.display().to_string(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| err(std::io::Error::from_raw_os_error(libc::EINVAL)))?
        .to_os_string();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let dir: OwnedFd = nix::fcntl::open(
        &parent,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| err(e.into()))?;
    let _ = std::fs::remove_file(path);
    let socket = std::os::unix::net::UnixListener::bind(path).map_err(err)?;
    // SAFETY: the fd comes from a UnixListener we own and give up here; Listener takes sole
    // ownership (without a path, so it never unlinks anything itself).
    let listener = unsafe { Listener::from_raw_fd(socket.into_raw_fd()) };
    Ok((listener, dir, name))
}

fn serve(args: &VirtiofsdArgs) -> Result<(), VirtiofsdError> {
    if args.queues == 0 || args.queues > MAX_REQUEST_QUEUES {
        return Err(VirtiofsdError::Queues(args.queues));
    }
    let fs = PassthroughFs::new(&args.shared_dir, args.readonly)?;
    sandbox::raise_fd_limit();
    let (mut listener, socket_dir, socket_name) = bind(&args.socket_path)?;
    if args.sandbox == SandboxMode::Namespace {
        sandbox::enter_namespace(&args.shared_dir)?;
    }
    // glibc installs its thread-cancellation signal handler (rt_sigaction) on the first
    // pthread_create: let that happen before the filter, which then need not allow it.
    std::thread::spawn(|| ())
        .join()
        .map_err(|_| VirtiofsdError::Daemon("a warm-up thread failed".into()))?;
    if args.seccomp != seccomp::Mode::Off {
        seccomp::install_own(ThreadCategory::Virtiofsd, args.seccomp)
            .map_err(VirtiofsdError::Seccomp)?;
    }
    let backend = backend::FsBackend::new(Server::new(fs), args.queues, args.thread_pool_size);
    let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon = VhostUserDaemon::new("virtiofsd".into(), backend, memory)
        .map_err(|e| VirtiofsdError::Daemon(e.to_string()))?;
    log::info!(
        "virtiofsd: serving {} on {}",
        args.shared_dir.display(),
        args.socket_path.display()
    );
    daemon
        .start(&mut listener)
        .map_err(|e| VirtiofsdError::Daemon(e.to_string()))?;
    // One frontend per process: the socket is no longer needed by anyone.
    drop(listener);
    let _ = nix::unistd::unlinkat(
        &socket_dir,
        socket_name.as_os_str(),
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    );
    // The frontend going away ends the daemon; that is the normal end of a VM.
    use vhost::vhost_user::Error as VuError;
    match daemon.wait() {
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(
            VuError::Disconnected | VuError::PartialMessage,
        )) => Ok(()),
        Err(e) => Err(VirtiofsdError::Daemon(e.to_string())),
    }
}

#[cfg(test)]
mod tests;
