//! The process around the backend: its fd limit and the optional namespace sandbox.
//!
//! `--sandbox namespace` moves the process into a new user + mount namespace (as the same uid and
//! gid, mapped to themselves), makes the shared directory its root with pivot_root and detaches
//! the old root, so even a path the process resolved by name could only be inside the share.
//! Everything it needs from outside (the shared directory, /proc/self/fd, the listening socket and
//! its directory) is opened before. Mounting here uses only what the seed grants virt-launcher
//! pods (`proc_t mounton` and `nfs_t dir mounton` for the bind of the share); no new proc is mounted.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("--sandbox namespace: {step}: {source}: the kernel must allow unprivileged user namespaces (sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1), or use --sandbox none")]
    Namespace {
        step: &'static str,
        source: nix::errno::Errno,
    },
}

fn step(step: &'static str) -> impl FnOnce(nix::errno::Errno) -> SandboxError {
    move |source| SandboxError::Namespace { step, source }
}

/// Each inode the guest holds is an open fd: allow as many as the hard limit permits.
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                log::warn!("virtiofsd: raising the open-file limit to {hard}: {e}");
            }
        }
    }
}

fn write_proc(file: &str, text: &str) -> Result<(), nix::errno::Errno> {
    std::fs::write(file, text)
        .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

fn set_dumpable(on: bool) -> Result<(), nix::errno::Errno> {
    // SAFETY: PR_SET_DUMPABLE takes an integer argument and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, libc::c_ulong::from(on)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(nix::errno::Errno::last())
    }
}

/// Enters the namespace sandbox with `shared_dir` as `/`. The process must be single-threaded.
pub fn enter_namespace(shared_dir: &Path) -> Result<(), SandboxError> {
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS).map_err(step("unshare"))?;
    // After a uid switch (`--user`) the process is not dumpable and its /proc/self files belong
    // to root: writable by the process itself only while it is dumpable.
    set_dumpable(true).map_err(step("PR_SET_DUMPABLE"))?;
    let maps = write_proc("/proc/self/setgroups", "deny")
        .map_err(step("writing /proc/self/setgroups"))
        .and_then(|()| {
            write_proc("/proc/self/uid_map", &format!("{uid} {uid} 1"))
                .map_err(step("writing /proc/self/uid_map"))
        })
        .and_then(|()| {
            write_proc("/proc/self/gid_map", &format!("{gid} {gid} 1"))
                .map_err(step("writing /proc/self/gid_map"))
        });
    set_dumpable(false).map_err(step("PR_SET_DUMPABLE"))?;
    maps?;
    // Nothing mounted here propagates back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step("making mounts private"))?;
    mount(
        Some(shared_dir),
        shared_dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(step("bind-mounting the shared directory"))?;
    nix::unistd::chdir(shared_dir).map_err(step("entering the shared directory"))?;
    nix::unistd::pivot_root(".", ".").map_err(step("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step("detaching the old root"))?;
    nix::unistd::chdir("/").map_err(step("chdir /"))?;
    Ok(())
}
