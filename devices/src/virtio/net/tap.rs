//! An existing tap interface, opened once per queue pair (`IFF_MULTI_QUEUE`) with a virtio-net
//! header on every frame (`IFF_VNET_HDR`), or adopted from inherited file descriptors.
//!
//! Paddock never creates a tap here: opening a name that does not exist would create it when
//! the process holds CAP_NET_ADMIN, so the name is checked in sysfs first. A tap made with
//! `ip tuntap add dev NAME mode tap multi_queue user UID` can be opened by UID with no
//! capability.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};
use vmm_sys_util::{ioctl_ior_nr, ioctl_iow_nr};

const TUNTAP: u32 = b'T' as u32;
// TUNSETIFF and TUNSETQUEUE are declared with an `int` size but take a pointer to a struct
// ifreq: the number must be built from `int`, the argument passed by reference.
ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, ::std::os::raw::c_int);
ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, ::std::os::raw::c_uint);
ioctl_ior_nr!(TUNGETIFF, TUNTAP, 210, ::std::os::raw::c_uint);
ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, ::std::os::raw::c_int);
ioctl_iow_nr!(TUNSETQUEUE, TUNTAP, 217, ::std::os::raw::c_int);

pub const IFF_TUN: u16 = 0x0001;
pub const IFF_TAP: u16 = 0x0002;
pub const IFF_MULTI_QUEUE: u16 = 0x0100;
pub const IFF_ATTACH_QUEUE: u16 = 0x0200;
pub const IFF_DETACH_QUEUE: u16 = 0x0400;
pub const IFF_NO_PI: u16 = 0x1000;
pub const IFF_VNET_HDR: u16 = 0x4000;

/// Offloads the reader (the guest) accepts, for TUNSETOFFLOAD.
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;
pub const TUN_F_UFO: u32 = 0x10;

const TUN_DEVICE: &str = "/dev/net/tun";
const IFNAMSIZ: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name {0:?} is not a valid interface name (1 to 15 bytes, no '/', no whitespace)")]
    BadName(String),
    #[error(
        "{TUN_DEVICE} does not exist: load the tun module or give the pod the /dev/net/tun device"
    )]
    TunMissing,
    #[error("{TUN_DEVICE} is not readable and writable by this user: give it mode 0666 (the usual default) or pass tap fds")]
    TunDenied,
    #[error("cannot open {TUN_DEVICE}: {0}")]
    OpenTun(io::Error),
    #[error("tap {0} does not exist: create it first (`ip tuntap add dev {0} mode tap multi_queue user UID`); Paddock does not create taps")]
    Missing(String),
    #[error("{0} is not a tap interface (a tun or another kind of device): give a tap")]
    NotTap(String),
    #[error("tap {name} has no multi_queue flag, so it cannot serve {pairs} queue pairs: recreate it with `ip tuntap add dev {name} mode tap multi_queue user UID`, or use 1 queue pair")]
    NotMultiQueue { name: String, pairs: usize },
    #[error("tap {name} belongs to uid {owner} and this process runs as uid {uid}: create the tap with `user {uid}`")]
    NotOwner {
        name: String,
        owner: String,
        uid: u32,
    },
    #[error("tap {name} is busy: another process holds it (a tap without multi_queue has one opener) or it has no queue left")]
    Busy { name: String },
    #[error("tap {name}: {what} failed: {source}")]
    Ioctl {
        name: String,
        what: &'static str,
        source: io::Error,
    },
    #[error("inherited fd {fd} is not a tap queue (TUNGETIFF: {source}): pass /dev/net/tun fds bound to the tap with TUNSETIFF")]
    InheritedNotTap { fd: RawFd, source: io::Error },
    #[error("inherited fd {fd} is not a tap opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR (flags {flags:#x}): open it with those flags")]
    InheritedFlags { fd: RawFd, flags: u16 },
    #[error("inherited fds {fds:?} are queues of tap {name}, which has no multi_queue flag: pass one fd, or queues of a multi_queue tap")]
    InheritedNotMultiQueue { fds: Vec<RawFd>, name: String },
    #[error("inherited tap fds belong to different interfaces ({0} and {1}): pass the queues of one tap")]
    InheritedMismatch(String, String),
}

/// struct ifreq as the tun ioctls use it: a name and the flags in the union.
#[repr(C)]
#[derive(Clone, Copy)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: u16,
    _rest: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: u16) -> Self {
        let mut req = Self {
            name: [0; IFNAMSIZ],
            flags,
            _rest: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req
    }

    fn name(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

/// One queue of a tap: a non-blocking file descriptor.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace())
}

/// Whether an interface of that name exists in this thread's network namespace (sysfs may show
/// another namespace's interfaces).
fn interface_exists(name: &str) -> bool {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: if_nametoindex reads a NUL-terminated string and has no other effect.
    unsafe { libc::if_nametoindex(cname.as_ptr()) != 0 }
}

fn sysfs_owner(name: &str) -> String {
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("owner"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

impl Tap {
    /// Opens `pairs` queues of the existing tap `name`.
    pub fn open_queues(name: &str, pairs: usize) -> Result<Vec<Tap>, TapError> {
        if !valid_name(name) {
            return Err(TapError::BadName(name.to_string()));
        }
        if !interface_exists(name) {
            return Err(TapError::Missing(name.to_string()));
        }
        let base = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        // TUNSETIFF refuses (EINVAL) a multi_queue mismatch and a device that is not a tap: try
        // multi-queue first, then single-queue to tell the two apart.
        let first = match Self::open_one(name, base | IFF_MULTI_QUEUE) {
            Err(TapError::Ioctl { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                match Self::open_one(name, base) {
                    Ok(_) if pairs > 1 => {
                        return Err(TapError::NotMultiQueue {
                            name: name.to_string(),
                            pairs,
                        })
                    }
                    Ok(tap) => return Ok(vec![tap]),
                    Err(TapError::Ioctl { source, .. })
                        if source.raw_os_error() == Some(libc::EINVAL) =>
                    {
                        return Err(TapError::NotTap(name.to_string()))
                    }
                    Err(e) => return Err(e),
                }
            }
            other => other?,
        };
        let mut taps = vec![first];
        for _ in 1..pairs {
            taps.push(Self::open_one(name, base | IFF_MULTI_QUEUE)?);
        }
        Ok(taps)
    }

    fn open_one(name: &str, flags: u16) -> Result<Tap, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => TapError::TunMissing,
                io::ErrorKind::PermissionDenied => TapError::TunDenied,
                _ => TapError::OpenTun(e),
            })?;
        Self::set_iff(file, name, flags)
    }

    /// TUNSETIFF on an open /dev/net/tun: binds `file` to a queue of the tap `name`.
    fn set_iff(file: File, name: &str, flags: u16) -> Result<Tap, TapError> {
        let req = IfReq::new(name, flags);
        // SAFETY: `file` is an open /dev/net/tun; TUNSETIFF reads a struct ifreq, which `req`
        // is (same size and layout), and the kernel does not keep the pointer.
        let ret = unsafe { ioctl_with_ref(&file, TUNSETIFF(), &req) };
        if ret < 0 {
            let source = io::Error::last_os_error();
            return Err(match source.raw_os_error() {
                Some(libc::EPERM) => TapError::NotOwner {
                    name: name.to_string(),
                    owner: sysfs_owner(name),
                    // SAFETY: geteuid has no preconditions and cannot fail.
                    uid: unsafe { libc::geteuid() },
                },
                Some(libc::EBUSY) | Some(libc::E2BIG) => TapError::Busy {
                    name: name.to_string(),
                },
                _ => TapError::Ioctl {
                    name: name.to_string(),
                    what: "TUNSETIFF",
                    source,
                },
            });
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// Adopts tap queue fds handed over by a parent (e.g. a node agent). They must already be
    /// set up with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, all on the same interface, and with more
    /// than one, IFF_MULTI_QUEUE.
    pub fn from_fds(fds: Vec<OwnedFd>) -> Result<Vec<Tap>, TapError> {
        let raws: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let mut taps: Vec<Tap> = Vec::with_capacity(fds.len());
        for fd in fds {
            let raw = fd.as_raw_fd();
            let tap = Tap {
                file: File::from(fd),
                name: String::new(),
            };
            let req = tap.get_iff().map_err(|e| match e {
                TapError::Ioctl { source, .. } => TapError::InheritedNotTap { fd: raw, source },
                other => other,
            })?;
            if raws.len() > 1 && req.flags & IFF_MULTI_QUEUE == 0 {
                return Err(TapError::InheritedNotMultiQueue {
                    fds: raws,
                    name: req.name(),
                });
            }
            let needed = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
            if req.flags & needed != needed {
                return Err(TapError::InheritedFlags {
                    fd: raw,
                    flags: req.flags,
                });
            }
            // SAFETY: F_SETFL on an fd we own; only the status flags change.
            let ret = unsafe {
                let old = libc::fcntl(raw, libc::F_GETFL);
                libc::fcntl(raw, libc::F_SETFL, old | libc::O_NONBLOCK)
            };
            if ret < 0 {
                return Err(TapError::Ioctl {
                    name: req.name(),
                    what: "fcntl(O_NONBLOCK)",
                    source: io::Error::last_os_error(),
                });
            }
            let tap = Tap {
                name: req.name(),
                ..tap
            };
            if let Some(first) = taps.first() {
                if first.name != tap.name {
                    return Err(TapError::InheritedMismatch(first.name.clone(), tap.name));
                }
            }
            taps.push(tap);
        }
        Ok(taps)
    }

    /// Adopts raw inherited descriptors.
    ///
    /// # Safety
    /// Each fd must be open, owned by nobody else, and not used elsewhere afterwards.
    pub unsafe fn from_raw_fds(fds: &[RawFd]) -> Result<Vec<Tap>, TapError> {
        // SAFETY: the caller hands over ownership of each open fd (this function's contract).
        Self::from_fds(fds.iter().map(|&fd| OwnedFd::from_raw_fd(fd)).collect())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn get_iff(&self) -> Result<IfReq, TapError> {
        let mut req = IfReq::new("", 0);
        // SAFETY: TUNGETIFF writes a struct ifreq into `req`, which has that size and layout.
        let ret = unsafe { ioctl_with_mut_ref(&self.file, TUNGETIFF(), &mut req) };
        if ret < 0 {
            return Err(self.ioctl_error("TUNGETIFF"));
        }
        Ok(req)
    }

    /// The tun flags of this queue (TUNGETIFF); IFF_DETACH_QUEUE is set while it is detached.
    pub fn flags(&self) -> Result<u16, TapError> {
        Ok(self.get_iff()?.flags)
    }

    fn ioctl_error(&self, what: &'static str) -> TapError {
        TapError::Ioctl {
            name: self.name.clone(),
            what,
            source: io::Error::last_os_error(),
        }
    }

    /// Size of the virtio-net header in front of every frame (12 for virtio 1.x).
    pub fn set_vnet_hdr_size(&self, size: i32) -> Result<(), TapError> {
        // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer.
        let ret = unsafe { ioctl_with_ref(&self.file, TUNSETVNETHDRSZ(), &size) };
        if ret < 0 {
            return Err(self.ioctl_error("TUNSETVNETHDRSZ"));
        }
        Ok(())
    }

    /// The offloads the guest accepts on receive (TUN_F_* bits).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let ret =
            unsafe { ioctl_with_val(&self.file, TUNSETOFFLOAD(), libc::c_ulong::from(flags)) };
        if ret < 0 {
            return Err(self.ioctl_error("TUNSETOFFLOAD"));
        }
        Ok(())
    }

    /// Attaches or detaches this queue (TUNSETQUEUE): a detached queue gets no traffic.
    pub fn set_attached(&self, attached: bool) -> Result<(), TapError> {
        let flag = if attached {
            IFF_ATTACH_QUEUE
        } else {
            IFF_DETACH_QUEUE
        };
        let req = IfReq::new("", flag);
        // SAFETY: TUNSETQUEUE reads a struct ifreq, which `req` is.
        let ret = unsafe { ioctl_with_ref(&self.file, TUNSETQUEUE(), &req) };
        if ret < 0 {
            return Err(self.ioctl_error("TUNSETQUEUE"));
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;

    /// Moves the calling test thread into a new network namespace (its `ip` children and the
    /// threads it starts follow), so test taps are private and vanish with the thread. False
    /// when this machine does not allow it (not root): the caller skips.
    pub(crate) fn private_netns() -> bool {
        // SAFETY: unshare only changes this thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "skipping: cannot create a network namespace: {}",
                io::Error::last_os_error()
            );
            return false;
        }
        true
    }

    fn ip(args: &[&str]) -> bool {
        Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A tap created with `ip` in this thread's private network namespace.
    pub(crate) struct TestTap {
        pub name: String,
    }

    impl TestTap {
        /// None when this machine cannot create taps: the caller skips with a message.
        pub fn create(name: &str, multi_queue: bool) -> Option<Self> {
            if !Path::new(TUN_DEVICE).exists() {
                eprintln!("skipping: no {TUN_DEVICE}");
                return None;
            }
            if !private_netns() {
                return None;
            }
            let mut args = vec!["tuntap", "add", "dev", name, "mode", "tap"];
            if multi_queue {
                args.push("multi_queue");
            }
            if !ip(&args) {
                eprintln!("skipping: cannot create tap {name}");
                return None;
            }
            Some(Self {
                name: name.to_string(),
            })
        }

        /// Brings the tap up with IPv6 off, so the kernel sends no neighbour discovery noise.
        pub fn up(&self) {
            let _ = std::fs::write(
                format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", self.name),
                "1",
            );
            assert!(ip(&["link", "set", &self.name, "up"]), "ip link set up");
        }
    }

    impl Drop for TestTap {
        fn drop(&mut self) {
            let _ = ip(&["link", "del", &self.name]);
        }
    }

    #[test]
    fn missing_and_invalid_names() {
        assert!(matches!(
            Tap::open_queues("ptap-nothere", 1),
            Err(TapError::Missing(_))
        ));
        assert!(matches!(
            Tap::open_queues("a/b", 1),
            Err(TapError::BadName(_))
        ));
        assert!(matches!(
            Tap::open_queues("sixteen-bytes-xx", 1),
            Err(TapError::BadName(_))
        ));
        if private_netns() {
            assert!(matches!(
                Tap::open_queues("lo", 1),
                Err(TapError::NotTap(_))
            ));
        }
    }

    #[test]
    fn opens_every_queue_and_attaches_detaches() {
        let Some(tap) = TestTap::create("ptapq0", true) else {
            return;
        };
        let queues = Tap::open_queues(&tap.name, 3).unwrap();
        assert_eq!(queues.len(), 3);
        for q in &queues {
            let flags = q.flags().unwrap();
            assert_eq!(
                flags & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE),
                IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE,
                "{flags:#x}"
            );
            assert_eq!(flags & IFF_DETACH_QUEUE, 0);
            q.set_vnet_hdr_size(12).unwrap();
            q.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6).unwrap();
        }
        queues[2].set_attached(false).unwrap();
        assert_ne!(queues[2].flags().unwrap() & IFF_DETACH_QUEUE, 0);
        queues[2].set_attached(true).unwrap();
        assert_eq!(queues[2].flags().unwrap() & IFF_DETACH_QUEUE, 0);

        // The same queues, adopted as inherited fds.
        let fds: Vec<OwnedFd> = queues.into_iter().map(|t| OwnedFd::from(t.file)).collect();
        let adopted = Tap::from_fds(fds).unwrap();
        assert!(adopted.iter().all(|t| t.name() == "ptapq0"));
    }

    #[test]
    fn inherited_fds_that_are_not_tap_queues_are_refused() {
        let null = OwnedFd::from(File::open("/dev/null").unwrap());
        let err = Tap::from_fds(vec![null]).unwrap_err();
        assert!(matches!(err, TapError::InheritedNotTap { .. }), "{err}");
        let Some(tap) = TestTap::create("ptapq3", false) else {
            return;
        };
        // Two fds of a single-queue tap can only be the same queue twice.
        let one = Tap::open_queues(&tap.name, 1).unwrap().remove(0);
        let fd = OwnedFd::from(one.file);
        let twice = vec![fd.try_clone().unwrap(), fd];
        let err = Tap::from_fds(twice).unwrap_err();
        assert!(
            matches!(err, TapError::InheritedNotMultiQueue { .. }),
            "{err}"
        );
    }

    #[test]
    fn single_queue_tap_refuses_several_pairs() {
        let Some(tap) = TestTap::create("ptapq1", false) else {
            return;
        };
        let err = Tap::open_queues(&tap.name, 2).unwrap_err();
        assert!(
            matches!(err, TapError::NotMultiQueue { pairs: 2, .. }),
            "{err}"
        );
        let one = Tap::open_queues(&tap.name, 1).unwrap();
        // A second opener of a single-queue tap is refused as busy.
        let err = Tap::open_queues(&tap.name, 1).unwrap_err();
        assert!(matches!(err, TapError::Busy { .. }), "{err}");
        drop(one);
    }

    #[test]
    fn tap_of_another_user_is_eperm() {
        let Some(tap) = TestTap::create("ptapq2", true) else {
            return;
        };
        assert!(ip(&["link", "del", &tap.name]));
        assert!(ip(&[
            "tuntap",
            "add",
            "dev",
            &tap.name,
            "mode",
            "tap",
            "multi_queue",
            "user",
            "4242"
        ]));
        // Root passes the owner check with CAP_NET_ADMIN: run TUNSETIFF as uid 1000, in this
        // test binary re-executed with only the helper test selected. /dev/net/tun is opened
        // here and handed over as fd HANDED_FD, since it may be root-only on this machine.
        use std::os::unix::process::CommandExt;
        let tun = OpenOptions::new()
            .read(true)
            .write(true)
            .open(TUN_DEVICE)
            .unwrap();
        let tun_fd = tun.as_raw_fd();
        let mut child = Command::new(std::env::current_exe().unwrap());
        child
            .args([
                "--exact",
                "virtio::net::tap::tests::open_as_other_user",
                "--ignored",
            ])
            .env("PADDOCK_TEST_TAP", &tap.name)
            .uid(1000)
            .gid(1000);
        // SAFETY: dup2 is async-signal-safe and touches only the child's descriptor table.
        unsafe {
            child.pre_exec(move || {
                if libc::dup2(tun_fd, HANDED_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = child.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Where the parent test puts /dev/net/tun for its child (clear of the fds std uses).
    const HANDED_FD: i32 = 100;

    /// Helper for `tap_of_another_user_is_eperm`, run as another uid with /dev/net/tun on fd HANDED_FD.
    #[test]
    #[ignore = "run by tap_of_another_user_is_eperm as uid 1000"]
    fn open_as_other_user() {
        let name = std::env::var("PADDOCK_TEST_TAP").unwrap();
        // SAFETY: the parent test put an open /dev/net/tun on fd HANDED_FD for this process alone.
        let tun = unsafe { File::from_raw_fd(HANDED_FD) };
        let err = Tap::set_iff(
            tun,
            &name,
            IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE,
        )
        .unwrap_err();
        assert!(matches!(err, TapError::NotOwner { .. }), "{err}");
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        assert_eq!(uid, 1000);
    }
}
