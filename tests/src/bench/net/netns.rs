//! The host side of the worker benchmark: a private network namespace with one tap, its packet
//! counters, and a packet socket that injects frames into the tap's queue.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("paddock-bench net worker needs root: it creates a tap in a private network namespace (run it with sudo)")]
    NotRoot,
    #[error("{0} needs root: it creates the tap the guests use (run it with sudo)")]
    NotRootFor(&'static str),
    #[error("cannot create a private network namespace (unshare CLONE_NEWNET): {0}")]
    Unshare(io::Error),
    #[error("`ip {args}` failed: {why}")]
    Ip { args: String, why: String },
    #[error("cannot read the counters of {name} from /proc/thread-self/net/dev: {why}")]
    Counters { name: String, why: String },
    #[error("packet socket on {name}: {what} failed: {source}")]
    Socket {
        name: String,
        what: &'static str,
        source: io::Error,
    },
}

/// Moves the calling thread (and the threads and children it starts afterwards) into a new network
/// namespace: the tap, its traffic and its counters are seen by nothing else, and vanish with
/// the process.
pub fn enter_private_netns() -> Result<(), NetnsError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(NetnsError::NotRoot);
    }
    // SAFETY: unshare only changes this thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(NetnsError::Unshare(io::Error::last_os_error()));
    }
    // No IPv6 on new interfaces: no neighbour discovery frames to mix with the measured ones
    // (a kernel without IPv6 has no such file, and then nothing to switch off).
    let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
    Ok(())
}

pub(crate) fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let err = |why: String| NetnsError::Ip {
        args: args.join(" "),
        why,
    };
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| err(format!("{e} (is iproute2 installed?)")))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(())
}

/// Creates a multi-queue tap named `name` in this namespace with the largest MTU a tap takes
/// (65521, so a 65535-byte frame can be injected whole) and brings it up.
pub fn create_tap(name: &str) -> Result<(), NetnsError> {
    ip(&["tuntap", "add", "dev", name, "mode", "tap", "multi_queue"])?;
    ip(&["link", "set", name, "mtu", "65521", "up"])
}

/// Packet counters of one interface, from the kernel's point of view: `rx` is what the tap's
/// file descriptors wrote into the stack, `tx` what the stack gave the tap to read.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

/// Reads `name`'s counters from this thread's /proc/net/dev: per namespace, unlike
/// /sys/class/net (which shows the namespace sysfs was mounted in), and per thread, unlike
/// /proc/net (the main thread's namespace), as a test thread may have a namespace of its own.
pub fn link_counters(name: &str) -> Result<LinkCounters, NetnsError> {
    let err = |why: String| NetnsError::Counters {
        name: name.to_string(),
        why,
    };
    let text =
        std::fs::read_to_string("/proc/thread-self/net/dev").map_err(|e| err(e.to_string()))?;
    let line = text
        .lines()
        .find_map(|l| {
            let (iface, rest) = l.split_once(':')?;
            (iface.trim() == name).then_some(rest)
        })
        .ok_or_else(|| err("no such interface".into()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().map_err(|_| err(format!("bad field {f:?}"))))
        .collect::<Result<_, _>>()?;
    if v.len() < 12 {
        return Err(err(format!("{} fields, expected 16", v.len())));
    }
    // receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes packets
    // errs drop ...
    Ok(LinkCounters {
        rx_bytes: v[0],
        rx_packets: v[1],
        rx_dropped: v[3],
        tx_packets: v[9],
        tx_dropped: v[11],
    })
}

const SOL_PACKET: libc::c_int = 263;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_QDISC_BYPASS: libc::c_int = 20;

/// An AF_PACKET socket that transmits on the tap: what it sends lands in the tap's queue, for
/// whoever reads the tap (the worker or the plain loop). Frames carry a `virtio_net_hdr`, so a
/// 64 KiB TCP frame enters as one GSO packet, as the host stack would hand it to a guest.
pub struct PacketInjector {
    fd: OwnedFd,
    addr: libc::sockaddr_ll,
}

impl PacketInjector {
    pub fn open(name: &str) -> Result<Self, NetnsError> {
        // Protocol 0: the socket receives nothing, it only sends.
        let (fd, ifindex) = vnet_packet_socket(name, 0, 0)?;
        // Straight to the driver: no qdisc between the socket and the tap's queue.
        set_int_opt(&fd, SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            .map_err(|e| socket_error(name, "PACKET_QDISC_BYPASS", e))?;
        let mut addr = link_address(ifindex, (libc::ETH_P_IP as u16).to_be());
        addr.sll_halen = 6;
        Ok(Self { fd, addr })
    }

    /// Sends `count` copies of `header` + `frame` in one sendmmsg. Returns how many the kernel
    /// took (a full socket buffer takes fewer).
    pub fn send(&self, header: &[u8], frame: &[u8], count: usize) -> io::Result<usize> {
        let mut iov = [
            libc::iovec {
                iov_base: header.as_ptr() as *mut libc::c_void,
                iov_len: header.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        let mut addr = self.addr;
        // SAFETY: mmsghdr is plain data; all zeroes is a valid value.
        let mut msg: libc::mmsghdr = unsafe { std::mem::zeroed() };
        msg.msg_hdr.msg_name = (&mut addr as *mut libc::sockaddr_ll).cast();
        msg.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        msg.msg_hdr.msg_iov = iov.as_mut_ptr();
        msg.msg_hdr.msg_iovlen = iov.len();
        let mut msgs = vec![msg; count];
        // SAFETY: every message points at `addr` and `iov`, which outlive the call; the kernel
        // only reads the buffers and writes each message's msg_len.
        let ret = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                count as libc::c_uint,
                0,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ret as usize)
    }
}

fn socket_error(name: &str, what: &'static str, source: io::Error) -> NetnsError {
    NetnsError::Socket {
        name: name.to_string(),
        what,
        source,
    }
}

/// An AF_PACKET socket for `protocol` (network order; 0 receives nothing) whose frames carry a
/// `virtio_net_hdr`, and the index of interface `name`.
fn vnet_packet_socket(
    name: &str,
    protocol: u16,
    flags: libc::c_int,
) -> Result<(OwnedFd, libc::c_int), NetnsError> {
    // SAFETY: plain socket creation; the result is checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags,
            libc::c_int::from(protocol),
        )
    };
    if raw < 0 {
        return Err(socket_error(name, "socket", io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a new descriptor owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_int_opt(&fd, SOL_PACKET, PACKET_VNET_HDR, 1)
        .map_err(|e| socket_error(name, "PACKET_VNET_HDR", e))?;
    let cname = std::ffi::CString::new(name)
        .map_err(|_| socket_error(name, "interface name", io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: reads a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(socket_error(
            name,
            "if_nametoindex",
            io::Error::last_os_error(),
        ));
    }
    Ok((fd, ifindex as libc::c_int))
}

/// The link-layer address of interface `ifindex` for `protocol` (network order).
fn link_address(ifindex: libc::c_int, protocol: u16) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = ifindex;
    addr
}

/// Sets an int socket option.
fn set_int_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: an int option, passed with its size.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A frame a [`PacketReceiver`] took from the tap.
pub struct Received {
    /// The `virtio_net_hdr` (10 bytes) the kernel wrote for it.
    pub header: [u8; 10],
    pub frame: Vec<u8>,
    /// Whether it was longer than the receive buffer (and cut).
    pub truncated: bool,
}

/// An AF_PACKET socket bound to the tap that receives every frame the tap hands the namespace's
/// stack (what a writer of the tap's queue wrote), GSO frames whole with their virtio-net header.
pub struct PacketReceiver {
    fd: OwnedFd,
    buffer: Vec<u8>,
}

/// Largest frame a tap takes from its writer in one piece, plus room to see a longer one.
const RECEIVE_MAX: usize = 10 + 65550 + 64;

impl PacketReceiver {
    /// `rcvbuf`: the socket's receive buffer in bytes (set past the system limit, as root).
    pub fn open(name: &str, rcvbuf: usize) -> Result<Self, NetnsError> {
        let all = (libc::ETH_P_ALL as u16).to_be();
        let (fd, ifindex) = vnet_packet_socket(name, all, libc::SOCK_NONBLOCK)?;
        let rcvbuf = libc::c_int::try_from(rcvbuf).unwrap_or(libc::c_int::MAX);
        set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, rcvbuf)
            .map_err(|e| socket_error(name, "SO_RCVBUFFORCE", e))?;
        let addr = link_address(ifindex, all);
        // SAFETY: binds to a sockaddr_ll passed with its size.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if ret < 0 {
            return Err(socket_error(name, "bind", io::Error::last_os_error()));
        }
        Ok(Self {
            fd,
            buffer: vec![0; RECEIVE_MAX],
        })
    }

    /// The next frame the tap received from its writer, if one is queued. Frames the stack sent
    /// out of the tap are skipped.
    pub fn try_recv(&mut self) -> io::Result<Option<Received>> {
        loop {
            // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: the buffer and the address are valid for their lengths; recvfrom writes
            // only into them.
            let ret = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    self.buffer.as_mut_ptr().cast(),
                    self.buffer.len(),
                    libc::MSG_TRUNC,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if ret < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let len = ret as usize;
            let kept = len.min(self.buffer.len());
            if kept < 10 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a {len}-byte packet has no virtio-net header"),
                ));
            }
            let mut header = [0u8; 10];
            header.copy_from_slice(&self.buffer[..10]);
            return Ok(Some(Received {
                header,
                frame: self.buffer[10..kept].to_vec(),
                truncated: len > kept,
            }));
        }
    }

    /// Waits up to `timeout` for a frame to be queued.
    pub fn wait(&self, timeout: std::time::Duration) {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; poll writes only `revents`.
        unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().min(1000) as libc::c_int) };
    }
}
