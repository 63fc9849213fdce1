//! Privilege: never run as root; keep at most the capabilities the seed grants virt-launcher pods
//! (SYS_NICE, NET_BIND_SERVICE) and only those the configuration uses; no_new_privs.
//!
//! Started as root (a pod whose container starts as root and drops), `--user UID[:GID]` switches to
//! that user first, keeping only the needed capabilities across the switch. Started as any other
//! user, Paddock drops whatever it may hold beyond what it needs, and refuses to start when a
//! capability outside the allowed set cannot be dropped.

use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities Paddock may ever keep. SYS_PTRACE, which the seed also grants, is never kept.
pub const ALLOWED: [Capability; 2] = [Capability::CAP_SYS_NICE, Capability::CAP_NET_BIND_SERVICE];

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("paddock refuses to run as root: pass --user UID[:GID] to switch to an unprivileged user, or start it as that user")]
    RootWithoutUser,
    #[error(
        "--user `{0}`: write UID or UID:GID with numeric ids other than 0, e.g. --user 107:107"
    )]
    BadUser(String),
    #[error("--user given but paddock is not running as root (uid {0}): drop --user, paddock already runs unprivileged")]
    UserWithoutRoot(u32),
    #[error("switching to uid {uid} gid {gid}: {what} failed: {source}")]
    Switch {
        uid: u32,
        gid: u32,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("capabilities: {what}: {source}")]
    Caps {
        what: &'static str,
        source: caps::errors::CapsError,
    },
    #[error("paddock holds {0} outside the allowed set (SYS_NICE, NET_BIND_SERVICE) and cannot drop it: remove it from the container's capabilities")]
    CannotDrop(String),
    #[error("setting no_new_privs failed: {0}")]
    NoNewPrivs(std::io::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

pub fn parse_user(text: &str) -> Result<User, PrivilegeError> {
    let bad = || PrivilegeError::BadUser(text.to_string());
    let (u, g) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    let uid: u32 = u.parse().map_err(|_| bad())?;
    let gid: u32 = match g {
        Some(g) => g.parse().map_err(|_| bad())?,
        None => uid,
    };
    if uid == 0 || gid == 0 {
        return Err(bad());
    }
    Ok(User { uid, gid })
}

fn caps_err(what: &'static str) -> impl FnOnce(caps::errors::CapsError) -> PrivilegeError {
    move |source| PrivilegeError::Caps { what, source }
}

fn last_os_error(ret: libc::c_int) -> Result<(), std::io::Error> {
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Takes the process to the state it runs the VM in. `needed` must be a subset of [`ALLOWED`].
pub fn enter(user: Option<User>, needed: &CapsHashSet) -> Result<(), PrivilegeError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    match (euid, user) {
        (0, None) => return Err(PrivilegeError::RootWithoutUser),
        (0, Some(u)) => switch_user(u, needed)?,
        (uid, Some(_)) => return Err(PrivilegeError::UserWithoutRoot(uid)),
        (_, None) => {}
    }
    drop_to(needed)?;
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integer arguments and touches no memory.
    let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    last_os_error(ret).map_err(PrivilegeError::NoNewPrivs)
}

/// As root: empties the bounding set (needs CAP_SETPCAP, so before the switch), then changes ids
/// while keeping the permitted set, so that `needed` survives the switch.
fn switch_user(user: User, needed: &CapsHashSet) -> Result<(), PrivilegeError> {
    let User { uid, gid } = user;
    let fail = |what: &'static str| {
        move |source| PrivilegeError::Switch {
            uid,
            gid,
            what,
            source,
        }
    };
    for cap in caps::all() {
        if !needed.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(caps_err("dropping from the bounding set"))?;
        }
    }
    // SAFETY: PR_SET_KEEPCAPS takes plain integer arguments and touches no memory.
    last_os_error(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) })
        .map_err(fail("prctl(PR_SET_KEEPCAPS)"))?;
    let groups = [gid];
    // SAFETY: `groups` is a valid array of one gid that outlives the call.
    last_os_error(unsafe { libc::setgroups(1, groups.as_ptr()) }).map_err(fail("setgroups"))?;
    // SAFETY: plain integer arguments.
    last_os_error(unsafe { libc::setresgid(gid, gid, gid) }).map_err(fail("setresgid"))?;
    // SAFETY: plain integer arguments.
    last_os_error(unsafe { libc::setresuid(uid, uid, uid) }).map_err(fail("setresuid"))?;
    Ok(())
}

/// Leaves exactly `needed` in the permitted and effective sets, nothing inheritable or ambient,
/// and checks that nothing outside the allowed set remains.
fn drop_to(needed: &CapsHashSet) -> Result<(), PrivilegeError> {
    let permitted =
        caps::read(None, CapSet::Permitted).map_err(caps_err("reading the permitted set"))?;
    let keep: CapsHashSet = permitted.intersection(needed).copied().collect();
    caps::clear(None, CapSet::Ambient).map_err(caps_err("clearing the ambient set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err("clearing the inheritable set"))?;
    caps::set(None, CapSet::Effective, &keep).map_err(caps_err("setting the effective set"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(caps_err("setting the permitted set"))?;
    let left =
        caps::read(None, CapSet::Permitted).map_err(caps_err("reading the permitted set"))?;
    let outside: Vec<String> = left
        .iter()
        .filter(|c| !ALLOWED.contains(c))
        .map(|c| c.to_string())
        .collect();
    if !outside.is_empty() {
        return Err(PrivilegeError::CannotDrop(outside.join(", ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_syntax() {
        assert_eq!(parse_user("107").unwrap(), User { uid: 107, gid: 107 });
        assert_eq!(parse_user("1000:36").unwrap(), User { uid: 1000, gid: 36 });
        assert!(parse_user("0").is_err());
        assert!(parse_user("1000:0").is_err());
        assert!(parse_user("qemu").is_err());
        assert!(parse_user("1000:").is_err());
    }
}
