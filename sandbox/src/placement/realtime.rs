//! Whether this process may put threads under SCHED_FIFO, and how: CAP_SYS_NICE in the effective
//! set, or an RLIMIT_RTPRIO at least as high as the priority (which needs no capability). Where
//! SYS_NICE came from matters in a pod: Kubernetes gives a non-root container no permitted
//! capabilities and `allowPrivilegeEscalation: false` disables file capabilities, so there it only
//! arrives by starting as root with `--user`.

use super::PlacementError;
use caps::{CapSet, Capability};

/// What permits SCHED_FIFO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    SysNice,
    Rlimit(u64),
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Grant::SysNice => f.write_str("CAP_SYS_NICE"),
            Grant::Rlimit(n) => write!(f, "RLIMIT_RTPRIO {n}"),
        }
    }
}

pub fn has_sys_nice() -> bool {
    caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_NICE).unwrap_or(false)
}

/// The soft RLIMIT_RTPRIO; `None` is unlimited.
pub fn rtprio_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a writable rlimit that outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_RTPRIO, &mut lim) } != 0 {
        return Some(0);
    }
    (lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

pub fn describe_limit(limit: Option<u64>) -> String {
    limit.map_or("unlimited".to_string(), |n| n.to_string())
}

/// Whether SCHED_FIFO at `prio` is permitted now, and by what.
pub fn grant(prio: u8) -> Result<Grant, PlacementError> {
    if has_sys_nice() {
        return Ok(Grant::SysNice);
    }
    match rtprio_limit() {
        None => Ok(Grant::Rlimit(u64::MAX)),
        Some(n) if n >= u64::from(prio) => Ok(Grant::Rlimit(n)),
        other => Err(PlacementError::RealtimeNotPermitted {
            prio,
            rlimit: describe_limit(other),
        }),
    }
}

/// How SYS_NICE can reach Paddock here; see [`origin`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Started as root with `--user`: kept across the switch (keepcaps), the way that works in a pod.
    RootWithUser,
    /// Started unprivileged with SYS_NICE permitted, from the binary's file capability.
    FileCapability,
    /// Started unprivileged with SYS_NICE permitted by the parent (ambient capabilities).
    Inherited,
    /// Not available; `file_caps_ignored` when the binary has a file capability the kernel did
    /// not grant (no_new_privs, as `allowPrivilegeEscalation: false` sets, or a bounding set
    /// without SYS_NICE).
    None { file_caps_ignored: bool },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::RootWithUser => f.write_str("started as root with --user: kept across the switch (keepcaps), the way that works in a pod"),
            Origin::FileCapability => f.write_str("the paddock binary's file capability (a pod with allowPrivilegeEscalation: false ignores it)"),
            Origin::Inherited => f.write_str("inherited from the process that started paddock (ambient capabilities)"),
            Origin::None { file_caps_ignored: true } => f.write_str("not available: the binary has a file capability but the kernel did not grant it (no_new_privs, as allowPrivilegeEscalation: false sets, or SYS_NICE not in the bounding set)"),
            Origin::None { file_caps_ignored: false } => f.write_str("not available: start paddock as root with --user, or use RLIMIT_RTPRIO"),
        }
    }
}

/// Where SYS_NICE would come from. Call before the privilege drop, which removes it unless the
/// configuration needs it; `switching_user` is true when started as root with `--user`.
pub fn origin(switching_user: bool) -> Origin {
    let permitted =
        caps::has_cap(None, CapSet::Permitted, Capability::CAP_SYS_NICE).unwrap_or(false);
    let bounded = caps::has_cap(None, CapSet::Bounding, Capability::CAP_SYS_NICE).unwrap_or(false);
    match (switching_user, permitted && bounded, exe_has_file_caps()) {
        (true, true, _) => Origin::RootWithUser,
        (false, true, true) => Origin::FileCapability,
        (false, true, false) => Origin::Inherited,
        (_, false, file_caps) => Origin::None {
            file_caps_ignored: file_caps,
        },
    }
}

/// Whether the running binary carries a `security.capability` extended attribute.
fn exe_has_file_caps() -> bool {
    let Ok(path) = std::fs::read_link("/proc/self/exe") else {
        return false;
    };
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let name = c"security.capability";
    // SAFETY: both strings are NUL-terminated; a null buffer of size 0 asks only for the length.
    let len = unsafe { libc::getxattr(c_path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    len > 0
}
