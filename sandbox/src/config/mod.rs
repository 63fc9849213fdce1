//! The VM as the user describes it, parsed from the command line with clear errors.

pub mod keyvalue;

use keyvalue::{KeyValueError, KeyValues};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use vmm::memory::{MemoryConfig, OptionError};
use vmm::net::{NetSpec, TapSource};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    KeyValue(#[from] KeyValueError),
    #[error(transparent)]
    Memory(OptionError),
    #[error(
        "--net `{text}`: {reason}; the syntax is tap=NAME[,queues=PAIRS][,mac=52:54:00:12:34:56] or fd=N[,fd=M...][,mac=...]"
    )]
    Net { text: String, reason: String },
    #[error(
        "--fs `{text}`: {reason}; the syntax is tag=TAG,path=DIR[,ro] or tag=TAG,socket=PATH, each with [,queues=N][,queue_size=M]"
    )]
    Fs { text: String, reason: String },
    #[error("--serial `{0}`: use stdout, off, or file=PATH")]
    Serial(String),
    #[error("--rootfs `{text}`: {reason}; the syntax is --rootfs DIR[,ro]")]
    Rootfs { text: String, reason: String },
}

pub enum SerialTarget {
    Stdout,
    File(PathBuf),
    Off,
}

/// `--memory size=S[,hugepages=2M|1G][,hugetlbfs=DIR][,prefault=on][,shared=on]`, or a bare size.
pub fn parse_memory(text: &str) -> Result<MemoryConfig, ConfigError> {
    let kv = KeyValues::parse("--memory", text, Some("size"), &MemoryConfig::KEYS)?;
    MemoryConfig::from_options(|key| kv.get(key)).map_err(ConfigError::Memory)
}

/// Every `--net`, in order.
pub fn parse_nets(texts: &[String]) -> Result<Vec<NetSpec>, ConfigError> {
    texts.iter().map(|t| parse_net(t)).collect()
}

/// Every `--fs`, in order.
pub fn parse_fses(texts: &[String]) -> Result<Vec<FsRequest>, ConfigError> {
    texts.iter().map(|t| parse_fs(t)).collect()
}

/// `--net tap=NAME[,queues=PAIRS][,mac=MAC]` (a bare first value is the tap name) or
/// `--net fd=N[,fd=M...][,mac=MAC]` (tap queues inherited from the parent, one per pair).
///
/// Inherited fds are claimed here, so call this before the process opens any file of its own:
/// a number that is open then was inherited.
pub fn parse_net(text: &str) -> Result<NetSpec, ConfigError> {
    let fail = |reason: String| ConfigError::Net {
        text: text.to_string(),
        reason,
    };
    let kv = KeyValues::parse_repeatable(
        "--net",
        text,
        Some("tap"),
        &["tap", "fd", "queues", "mac"],
        &["fd"],
    )?;
    let queue_pairs =
        match kv.get("queues") {
            None => None,
            Some(q) => Some(q.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
                fail(format!("queues=`{q}` is not a number of queue pairs >= 1"))
            })?),
        };
    let mac = match kv.get("mac") {
        None => None,
        Some(m) => {
            Some(parse_mac(m).ok_or_else(|| fail(format!("mac=`{m}` is not six hex bytes")))?)
        }
    };
    let fds: Vec<&str> = kv.get_all("fd").collect();
    let tap = match (kv.get("tap").filter(|t| !t.is_empty()), fds.is_empty()) {
        (Some(_), false) => return Err(fail("give either tap= or fd=, not both".into())),
        (None, true) => return Err(fail("no tap name and no fd".into())),
        (Some(name), true) => TapSource::Name(name.to_string()),
        (None, false) => TapSource::Fds(claim_inherited_fds(&fds).map_err(fail)?),
    };
    Ok(NetSpec {
        tap,
        queue_pairs,
        mac,
    })
}

/// Takes ownership of inherited descriptors given as `fd=` values, after checking each is a
/// number above stderr, given once, and open; marks them close-on-exec.
fn claim_inherited_fds(numbers: &[&str]) -> Result<Vec<OwnedFd>, String> {
    let mut raws: Vec<RawFd> = Vec::with_capacity(numbers.len());
    for text in numbers {
        let fd: RawFd = text
            .parse()
            .ok()
            .filter(|&n: &RawFd| n >= 0)
            .ok_or_else(|| format!("fd=`{text}` is not a file descriptor number"))?;
        if fd <= 2 {
            return Err(format!(
                "fd={fd} is stdin, stdout or stderr: pass the tap queues on fds 3 and up"
            ));
        }
        if raws.contains(&fd) {
            return Err(format!("fd={fd} is given twice: one fd per queue pair"));
        }
        // SAFETY: F_GETFD only reads the descriptor flags of `fd`, if it is open.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            return Err(format!(
                "fd={fd} is not open in this process: the parent must pass it open across exec (without FD_CLOEXEC)"
            ));
        }
        // SAFETY: F_SETFD changes only the descriptor flags of `fd`, which is open.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
            return Err(format!(
                "fd={fd}: cannot mark it close-on-exec: {}",
                std::io::Error::last_os_error()
            ));
        }
        raws.push(fd);
    }
    Ok(raws
        .into_iter()
        // SAFETY: each fd is open, given once, and was open before this process opened any file
        // of its own (see parse_net), so it was inherited and nothing else in the process owns
        // it: ownership passes to the OwnedFd.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect())
}

/// Request queues and descriptors per queue when `--fs` does not say.
pub const FS_DEFAULT_QUEUES: usize = 1;
pub const FS_DEFAULT_QUEUE_SIZE: u32 = 1024;

/// One `--fs`: a share served by a backend the user started (listening on a socket), or a host
/// directory that paddock serves with the bundled backend (`paddock virtiofsd`).
#[derive(Debug, PartialEq, Eq)]
pub enum FsRequest {
    Socket(vmm::fs::FsSpec),
    Path {
        config: vmm::fs::FsConfig,
        dir: PathBuf,
        readonly: bool,
    },
}

/// `--fs tag=TAG,path=DIR[,ro]` or `--fs tag=TAG,socket=PATH`, each with
/// `[,queues=N][,queue_size=M]`.
pub fn parse_fs(text: &str) -> Result<FsRequest, ConfigError> {
    let fail = |reason: String| ConfigError::Fs {
        text: text.to_string(),
        reason,
    };
    // `ro` is a flag: the one item that is not key=value.
    let items: Vec<&str> = text
        .split(',')
        .map(|item| if item.trim() == "ro" { "ro=on" } else { item })
        .collect();
    let kv = KeyValues::parse(
        "--fs",
        &items.join(","),
        None,
        &["tag", "socket", "path", "ro", "queues", "queue_size"],
    )?;
    let tag = kv.get("tag").ok_or_else(|| fail("no tag".into()))?;
    if tag == ROOTFS_TAG {
        return Err(fail(format!(
            "the tag `{ROOTFS_TAG}` is reserved for --rootfs: choose another tag"
        )));
    }
    let number = |key: &str, default: u64| -> Result<u64, ConfigError> {
        match kv.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| fail(format!("{key}=`{v}` is not a whole number"))),
        }
    };
    let queues = number("queues", FS_DEFAULT_QUEUES as u64)?;
    let queue_size = number("queue_size", u64::from(FS_DEFAULT_QUEUE_SIZE))?;
    let config = vmm::fs::FsConfig::new(
        tag,
        usize::try_from(queues).unwrap_or(usize::MAX),
        u32::try_from(queue_size).unwrap_or(u32::MAX),
    )
    .map_err(|e| fail(e.to_string()))?;
    let readonly = match kv.get("ro") {
        None | Some("off") => false,
        Some("on") => true,
        Some(v) => return Err(fail(format!("ro=`{v}`: write just `ro` (or ro=on)"))),
    };
    match (kv.get("socket"), kv.get("path")) {
        (Some(_), Some(_)) => Err(fail(
            "both socket and path: give path=DIR to have paddock serve DIR, or socket=PATH for a backend you started".into(),
        )),
        (Some(socket), None) => {
            if socket.is_empty() {
                return Err(fail("no socket: give the vhost-user-fs backend's socket".into()));
            }
            if readonly {
                return Err(fail(
                    "ro applies to path= shares: start your backend read-only instead".into(),
                ));
            }
            Ok(FsRequest::Socket(vmm::fs::FsSpec {
                config,
                socket: PathBuf::from(socket),
            }))
        }
        (None, Some(dir)) if !dir.is_empty() => Ok(FsRequest::Path {
            config,
            dir: PathBuf::from(dir),
            readonly,
        }),
        _ => Err(fail(
            "no path or socket: give path=DIR (the host directory to share) or socket=PATH (a running vhost-user-fs backend)".into(),
        )),
    }
}

/// The virtio-fs tag of the `--rootfs` share, which the default guest's /init mounts as its root.
pub const ROOTFS_TAG: &str = "paddock-rootfs";

/// `--rootfs DIR[,ro]`: the guest's root filesystem served from host directory DIR by the bundled
/// backend, as a `path=` share with the reserved tag [`ROOTFS_TAG`]. Only a final `,ro` is an
/// option, so a DIR with commas in its name still works.
pub fn parse_rootfs(text: &str) -> Result<FsRequest, ConfigError> {
    let (dir, readonly) = match text.strip_suffix(",ro") {
        Some(dir) => (dir, true),
        None => (text, false),
    };
    if dir.is_empty() {
        return Err(ConfigError::Rootfs {
            text: text.to_string(),
            reason: "no directory: give the host directory that is the guest's /".into(),
        });
    }
    let config = vmm::fs::FsConfig::new(ROOTFS_TAG, FS_DEFAULT_QUEUES, FS_DEFAULT_QUEUE_SIZE)
        .map_err(|e| ConfigError::Rootfs {
            text: text.to_string(),
            reason: e.to_string(),
        })?;
    Ok(FsRequest::Path {
        config,
        dir: PathBuf::from(dir),
        readonly,
    })
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn parse_serial(text: &str) -> Result<SerialTarget, ConfigError> {
    match text {
        "stdout" => Ok(SerialTarget::Stdout),
        "off" => Ok(SerialTarget::Off),
        _ => match text.strip_prefix("file=") {
            Some(path) if !path.is_empty() => Ok(SerialTarget::File(PathBuf::from(path))),
            _ => Err(ConfigError::Serial(text.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_syntax() {
        let n = parse_net("tap=tap0,queues=2,mac=52:54:00:ab:cd:0e").expect("net");
        assert!(matches!(&n.tap, TapSource::Name(t) if t == "tap0"));
        assert_eq!(n.queue_pairs, Some(2));
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0xab, 0xcd, 0x0e]));
        let bare = parse_net("tap1").expect("bare");
        assert!(matches!(&bare.tap, TapSource::Name(t) if t == "tap1"));
        assert_eq!((bare.queue_pairs, bare.mac), (None, None));
        for bad in [
            "queues=2",
            "tap=t,queues=0",
            "tap=t,queues=x",
            "tap=t,mac=1:2:3",
            "tap=t,mtu=9000",
            "tap=t,tap=u",
            "tap=t,fd=5",
            "fd=x",
            "fd=-1",
            "fd=2",
        ] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn net_inherited_fds_are_claimed() {
        use std::os::fd::{AsRawFd, IntoRawFd};
        let open = || std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        let (a, b) = (open(), open());
        let n = parse_net(&format!("fd={a},fd={b},mac=52:54:00:00:00:01")).expect("fds");
        let TapSource::Fds(fds) = &n.tap else {
            panic!("{:?}", n.tap)
        };
        assert_eq!(
            fds.iter().map(AsRawFd::as_raw_fd).collect::<Vec<_>>(),
            [a, b]
        );
        assert_eq!(n.tap.to_string(), format!("fd={a},fd={b}"));
        // SAFETY: F_GETFD only reads the flags of an fd this test owns.
        assert_ne!(
            unsafe { libc::fcntl(a, libc::F_GETFD) } & libc::FD_CLOEXEC,
            0
        );
        drop(n);

        let c = open();
        let err = |text: String| parse_net(&text).unwrap_err().to_string();
        assert!(err(format!("fd={c},fd={c}")).contains("given twice"));
        // A number far above anything this test process has open.
        assert!(err("fd=100000".into()).contains("fd=100000 is not open in this process"));
        assert!(err("fd=1".into()).contains("stdin, stdout or stderr"));
        // SAFETY: closes the fd this test opened and still owns (the refusals above took none).
        unsafe { libc::close(c) };
    }

    #[test]
    fn fs_syntax() {
        let socket = |text: &str| match parse_fs(text).expect(text) {
            FsRequest::Socket(spec) => spec,
            other => panic!("{text}: {other:?}"),
        };
        let f = socket("tag=data,socket=/run/vfs.sock");
        assert_eq!(f.config.tag, "data");
        assert_eq!(f.socket, PathBuf::from("/run/vfs.sock"));
        assert_eq!((f.config.request_queues, f.config.queue_size), (1, 1024));
        let f = socket("socket=s,tag=t,queues=2,queue_size=256");
        assert_eq!((f.config.request_queues, f.config.queue_size), (2, 256));
        let err = |text: &str| parse_fs(text).unwrap_err().to_string();
        assert!(err("socket=s").contains("no tag"));
        assert!(err("tag=t").contains("no path or socket"));
        assert!(err("tag=t,socket=").contains("no socket"));
        assert!(err("tag=t,path=").contains("no path or socket"));
        assert!(err(&format!("tag={},socket=s", "x".repeat(37))).contains("more than the 36"));
        assert!(err("tag=t,socket=s,queues=0").contains("queues=0"));
        assert!(err("tag=t,socket=s,queue_size=1000").contains("power of two"));
        assert!(err("tag=t,socket=s,queue_size=big").contains("not a whole number"));
        assert!(err("tag=t,socket=s,cache=auto").contains("unknown key `cache`"));
        assert!(err("data").contains("not key=value"));
    }

    #[test]
    fn fs_path_syntax() {
        let path = |text: &str| match parse_fs(text).expect(text) {
            FsRequest::Path {
                config,
                dir,
                readonly,
            } => (config, dir, readonly),
            other => panic!("{text}: {other:?}"),
        };
        let (config, dir, ro) = path("tag=data,path=/srv/data");
        assert_eq!(
            (config.tag.as_str(), dir, ro),
            ("data", PathBuf::from("/srv/data"), false)
        );
        assert_eq!((config.request_queues, config.queue_size), (1, 1024));
        assert!(path("tag=d,path=/srv,ro").2);
        assert!(path("ro,path=/srv,tag=d").2);
        assert!(path("tag=d,path=/srv,ro=on").2);
        assert!(!path("tag=d,path=/srv,ro=off").2);
        let (config, _, _) = path("tag=d,path=/srv,queues=2,queue_size=256");
        assert_eq!((config.request_queues, config.queue_size), (2, 256));
        let err = |text: &str| parse_fs(text).unwrap_err().to_string();
        assert!(err("path=/srv").contains("no tag"));
        assert!(err("tag=t,path=/srv,socket=/s").contains("both socket and path"));
        assert!(err("tag=t,socket=/s,ro").contains("ro applies to path= shares"));
        assert!(err("tag=t,path=/srv,ro=yes").contains("ro=`yes`"));
        assert!(err("tag=t,path=/srv,ro,ro").contains("given twice"));
        assert!(err(&format!("tag={},path=/srv", "x".repeat(37))).contains("more than the 36"));
    }

    #[test]
    fn rootfs_syntax() {
        let rootfs = |text: &str| match parse_rootfs(text).expect(text) {
            FsRequest::Path {
                config,
                dir,
                readonly,
            } => (config.tag, dir, readonly),
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(
            rootfs("/srv/debian"),
            (ROOTFS_TAG.to_string(), PathBuf::from("/srv/debian"), false)
        );
        assert_eq!(
            rootfs("/srv/debian,ro"),
            (ROOTFS_TAG.to_string(), PathBuf::from("/srv/debian"), true)
        );
        // Only a final `,ro` is the flag.
        assert_eq!(rootfs("/srv/a,b").1, PathBuf::from("/srv/a,b"));
        assert!(parse_rootfs("")
            .unwrap_err()
            .to_string()
            .contains("no directory"));
        assert!(parse_rootfs(",ro")
            .unwrap_err()
            .to_string()
            .contains("no directory"));
        let taken = parse_fs(&format!("tag={ROOTFS_TAG},path=/srv"))
            .unwrap_err()
            .to_string();
        assert!(taken.contains("reserved for --rootfs"), "{taken}");
    }

    #[test]
    fn memory_and_serial() {
        assert_eq!(parse_memory("size=1G").unwrap().size, 1 << 30);
        assert_eq!(parse_memory("256M").unwrap().size, 256 << 20);
        assert!(parse_memory("12XB").is_err());
        assert!(matches!(parse_serial("off"), Ok(SerialTarget::Off)));
        assert!(matches!(
            parse_serial("file=/tmp/x"),
            Ok(SerialTarget::File(_))
        ));
        assert!(parse_serial("file=").is_err());
        assert!(parse_serial("tty").is_err());
    }

    #[test]
    fn memory_full_syntax() {
        let m = parse_memory("size=2G,hugepages=2M,hugetlbfs=/dev/hugepages,prefault=on,shared=on")
            .unwrap();
        assert_eq!(m.size, 2 << 30);
        assert_eq!(m.hugepages, Some(2 << 20));
        assert_eq!(m.hugetlbfs, Some(PathBuf::from("/dev/hugepages")));
        assert!(m.prefault && m.shared);
        let m = parse_memory("1G,hugepages=1G").unwrap();
        assert_eq!((m.size, m.hugepages), (1 << 30, Some(1 << 30)));
        assert!(m.hugetlbfs.is_none() && !m.prefault && !m.shared);
        assert_eq!(
            parse_memory("512M").unwrap(),
            MemoryConfig::anonymous(512 << 20)
        );
    }

    #[test]
    fn memory_errors_name_the_option() {
        let err = |text: &str| parse_memory(text).unwrap_err().to_string();
        assert_eq!(
            err("1G,hugepages=3M"),
            "--memory hugepages=3M: write a hugepage size such as 2M or 1G"
        );
        assert_eq!(
            err("1G,prefault=yes"),
            "--memory prefault=yes: write prefault=on or prefault=off"
        );
        assert!(err("1G,numa=0").contains("unknown key `numa`"));
        assert!(err("hugepages=2M").starts_with("--memory: no size given"));
        assert!(err("12XB").starts_with("--memory size: malformed size `12XB`"));
    }
}
