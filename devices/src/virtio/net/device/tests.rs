//! The device end to end: mock guest rings on one side, a real tap in a private network
//! namespace on the other, read and written with a packet socket.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::interrupt::RecordingInterrupts;
use crate::virtio::net::tap::tests::TestTap;
use crate::virtio::net::tap::IFF_DETACH_QUEUE;
use crate::virtio::{SharedStatus, StdThreads, VirtioInterrupt, STATUS_DEVICE_NEEDS_RESET};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const ETHERTYPE_TEST: u16 = 0x88b5;
const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const DATA: u64 = 0x10_0000;

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A raw packet socket on the tap's host side.
struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    fn bind(name: &str) -> Self {
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket creation; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(protocol),
            )
        };
        assert!(
            raw >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a new descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let cname = std::ffi::CString::new(name).unwrap();
        // SAFETY: reads a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        assert!(ifindex > 0);
        let addr = Self::address(ifindex, protocol);
        // SAFETY: `addr` is a sockaddr_ll of the size given.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(ret, 0, "bind: {}", std::io::Error::last_os_error());
        Self { fd, ifindex }
    }

    fn address(ifindex: i32, protocol: u16) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = ifindex;
        addr
    }

    /// The next frame with the test ethertype, skipping anything else.
    fn recv_test_frame(&self) -> Vec<u8> {
        match self.try_recv_test_frame(Duration::from_secs(10)) {
            Some(frame) => frame,
            None => panic!("no test frame on the packet socket within 10 s"),
        }
    }

    /// The next test frame within `wait`, or None.
    fn try_recv_test_frame(&self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 70000];
        while Instant::now() < deadline {
            // SAFETY: reads into `buf`, whose length is passed.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 14 && u16::from_be_bytes([buf[12], buf[13]]) == ETHERTYPE_TEST {
                buf.truncate(n as usize);
                return Some(buf);
            }
            if n < 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        None
    }

    fn send(&self, frame: &[u8]) {
        let addr = Self::address(self.ifindex, 0);
        // SAFETY: sends `frame` to the address built above.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    }
}

/// Every warning and error logged by this test binary, as text.
struct CapturedLog(std::sync::Mutex<Vec<String>>);

static LOG: CapturedLog = CapturedLog(std::sync::Mutex::new(Vec::new()));

impl log::Log for CapturedLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
            lines.push(record.args().to_string());
        }
    }

    fn flush(&self) {}
}

/// Starts capturing (once per test binary; tests tell their records apart by device name).
fn capture_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_logger(&LOG).expect("no other logger in the device tests");
        log::set_max_level(log::LevelFilter::Warn);
    });
}

/// Captured records that mention `device` (its workers are `{device}-qpN`) and `word`.
fn logged(device: &str, word: &str) -> Vec<String> {
    let lines = LOG.0.lock().unwrap_or_else(|e| e.into_inner());
    lines
        .iter()
        .filter(|l| l.contains(&format!("{device}-qp")) && l.contains(word))
        .cloned()
        .collect()
}

fn test_frame(payload_len: usize, seed: u8) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]);
    frame.extend_from_slice(&ETHERTYPE_TEST.to_be_bytes());
    frame.extend((0..payload_len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    frame
}

struct Rig {
    net: Net,
    mem: &'static GuestMemoryMmap,
    /// The driver's view of each ring (creating a mock zeroes its ring, so there is one each).
    rings: Vec<MockSplitQueue<'static, GuestMemoryMmap>>,
    rec: Arc<RecordingInterrupts>,
    shared: Arc<SharedStatus>,
    notify: Vec<EventFd>,
    /// VIRTIO_F_RING_EVENT_IDX was negotiated: the driver kicks only when the device asked.
    event_idx: bool,
    _tap: TestTap,
}

/// Entries per ring. The mock places its used ring only RING_SIZE bytes after the avail ring's
/// entries start (it counts elements as bytes), so avail entries from RING_SIZE / 2 on overlap
/// the used ring: a test keeps fewer than RING_SIZE / 2 buffers in a ring over its life.
const RING_SIZE: u16 = 32;

const QUEUE_BASES: [u64; 5] = [0x1_0000, 0x2_0000, 0x3_0000, 0x4_0000, 0x5_0000];

impl Rig {
    /// A device with `pairs` pairs over a fresh tap, activated with queues at QUEUE_BASES.
    fn new(tap_name: &str, pairs: usize, acked: u64) -> Option<Self> {
        let tap = TestTap::create(tap_name, true)?;
        tap.up();
        // Leaked so the mock rings can borrow it for the whole test.
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap(),
        ));
        let net = Net::new(
            NetConfig {
                mac: MAC,
                queue_size: RING_SIZE,
                name: tap_name.into(),
            },
            Tap::open_queues(&tap.name, pairs).unwrap(),
            Arc::new(StdThreads),
        )
        .unwrap();
        let mut rig = Self {
            net,
            mem,
            rings: Vec::new(),
            rec: Arc::new(RecordingInterrupts::new()),
            shared: Arc::new(SharedStatus::default()),
            notify: Vec::new(),
            event_idx: false,
            _tap: tap,
        };
        rig.activate(pairs, acked);
        Some(rig)
    }

    /// What the transport does at DRIVER_OK: fresh (zeroed) rings at QUEUE_BASES, new notify
    /// eventfds and interrupts, handed to the device.
    fn activate(&mut self, pairs: usize, acked: u64) {
        self.rec = Arc::new(RecordingInterrupts::new());
        self.shared = Arc::new(SharedStatus::default());
        self.event_idx = acked & feature(F_RING_EVENT_IDX) != 0;
        self.rings.clear();
        self.notify.clear();
        let mut queues = Vec::new();
        for (index, base) in QUEUE_BASES.iter().take(2 * pairs + 1).enumerate() {
            let vq = MockSplitQueue::create(self.mem, GuestAddress(*base), RING_SIZE);
            let mut queue: Queue = vq.create_queue().unwrap();
            queue.set_event_idx(self.event_idx);
            self.rings.push(vq);
            let event = EventFd::new(EFD_NONBLOCK).unwrap();
            self.notify.push(event.try_clone().unwrap());
            queues.push(QueueActivation {
                queue,
                notify: event,
                vector: index as u16,
            });
        }
        self.net
            .activate(Activation {
                mem: self.mem.clone(),
                queues,
                interrupt: VirtioInterrupt::new(self.rec.clone(), self.shared.clone()),
                acked_features: acked,
            })
            .unwrap();
    }

    fn vq(&self, index: usize) -> &MockSplitQueue<'static, GuestMemoryMmap> {
        &self.rings[index]
    }

    fn used(&self, index: usize) -> Vec<(u32, u32)> {
        let vq = self.vq(index);
        let idx = vq.used().idx().load();
        (0..idx)
            .map(|i| {
                let e = vq.used().ring().ref_at(usize::from(i)).unwrap().load();
                (e.id(), e.len())
            })
            .collect()
    }

    fn kick(&self, index: usize) {
        self.notify[index].write(1).unwrap();
    }

    /// The avail ring's index, as the driver last published it.
    fn avail_idx(&self, index: usize) -> u16 {
        self.vq(index).avail().idx().load()
    }

    /// What a Linux driver does after publishing buffers up to `new` (from `old`): kick always,
    /// or with EVENT_IDX only when the device's avail_event lies in between (vring_need_event).
    fn driver_kick(&self, index: usize, old: u16, new: u16) {
        if self.event_idx {
            let vq = self.vq(index);
            let at = vq.used_addr().unchecked_add(4 + 8 * u64::from(RING_SIZE));
            let event: u16 = self.mem.read_obj(at).unwrap();
            if new.wrapping_sub(event).wrapping_sub(1) >= new.wrapping_sub(old) {
                return;
            }
        }
        self.kick(index);
    }

    fn wait_used(&self, index: usize, count: usize) -> Vec<(u32, u32)> {
        wait_for(&format!("{count} used entries on queue {index}"), || {
            self.used(index).len() >= count
        });
        self.used(index)
    }
}

fn acked(extra: &[u32]) -> u64 {
    [F_VERSION_1, F_GUEST_CSUM, F_CTRL_VQ]
        .iter()
        .chain(extra)
        .map(|&b| feature(b))
        .fold(0, |a, b| a | b)
}

#[test]
fn features_and_config_space() {
    let Some(tap) = TestTap::create("ptapn0", true) else {
        return;
    };
    let net = Net::new(
        NetConfig {
            mac: MAC,
            queue_size: 256,
            name: "net0".into(),
        },
        Tap::open_queues(&tap.name, 4).unwrap(),
        Arc::new(StdThreads),
    )
    .unwrap();
    assert_eq!(
        net.queue_max_sizes(),
        vec![256, 256, 256, 256, 256, 256, 256, 256, 64]
    );
    let f = net.features();
    for bit in [
        F_VERSION_1,
        F_RING_EVENT_IDX,
        F_RING_INDIRECT_DESC,
        F_CSUM,
        F_GUEST_CSUM,
        F_GUEST_TSO4,
        F_GUEST_TSO6,
        F_HOST_TSO4,
        F_HOST_TSO6,
        F_MRG_RXBUF,
        F_MAC,
        F_STATUS,
        F_CTRL_VQ,
        F_MQ,
    ] {
        assert_ne!(f & feature(bit), 0, "feature bit {bit}");
    }
    let mut config = [0u8; CONFIG_LEN];
    net.read_config(0, &mut config);
    assert_eq!(&config[..6], &MAC);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), STATUS_LINK_UP);
    assert_eq!(u16::from_le_bytes([config[8], config[9]]), 4);
}

#[test]
fn tx_frame_reaches_the_tap_with_its_header() {
    let Some(rig) = Rig::new("ptapn1", 1, acked(&[])) else {
        return;
    };
    let socket = PacketSocket::bind("ptapn1");
    let frame = test_frame(100, 1);
    // Header and frame in separate descriptors, as Linux sends them.
    rig.mem.write_slice(&[0u8; 12], GuestAddress(DATA)).unwrap();
    rig.mem
        .write_slice(&frame, GuestAddress(DATA + 0x100))
        .unwrap();
    rig.vq(1)
        .add_desc_chains(
            &[
                desc(DATA, 12, F_NEXT, 1),
                desc(DATA + 0x100, frame.len() as u32, 0, 0),
            ],
            0,
        )
        .unwrap();
    rig.kick(1);
    assert_eq!(socket.recv_test_frame(), frame);
    assert_eq!(rig.wait_used(1, 1), vec![(0, 0)]);
    wait_for("TX interrupt", || rig.rec.triggered().contains(&1));
}

#[test]
fn rx_frame_spans_mergeable_buffers() {
    let Some(rig) = Rig::new("ptapn2", 1, acked(&[F_MRG_RXBUF])) else {
        return;
    };
    let socket = PacketSocket::bind("ptapn2");
    // Four 1 KiB device-writable buffers, one per chain.
    let chains: Vec<_> = (0..4u16)
        .map(|i| desc(DATA + u64::from(i) * 0x1000, 1024, F_WRITE, 0))
        .collect();
    rig.vq(0).add_desc_chains(&chains, 0).unwrap();
    rig.kick(0);
    let frame = test_frame(1400, 9);
    socket.send(&frame);
    let used = rig.wait_used(0, 2);
    let total = 12 + frame.len() as u32;
    assert_eq!(used, vec![(0, 1024), (1, total - 1024)]);
    let mut header = [0u8; 12];
    rig.mem.read_slice(&mut header, GuestAddress(DATA)).unwrap();
    assert_eq!(
        u16::from_le_bytes([header[10], header[11]]),
        2,
        "num_buffers"
    );
    let mut got = vec![0u8; frame.len()];
    rig.mem
        .read_slice(&mut got[..1012], GuestAddress(DATA + 12))
        .unwrap();
    rig.mem
        .read_slice(&mut got[1012..], GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(got, frame);
    wait_for("RX interrupt", || rig.rec.triggered().contains(&0));

    // A second frame uses the remaining buffers; a third waits until the guest adds more.
    socket.send(&test_frame(60, 3));
    assert_eq!(rig.wait_used(0, 3)[2], (2, 12 + 74));
    // One 1 KiB buffer left is less than a full-size frame: the next frame waits for more.
    socket.send(&test_frame(60, 4));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(rig.used(0).len(), 3, "waits for buffer space");
    rig.vq(0)
        .add_desc_chains(&[desc(DATA + 0x8000, 2048, F_WRITE, 0)], 4)
        .unwrap();
    rig.kick(0);
    assert_eq!(
        rig.wait_used(0, 4)[3],
        (3, 12 + 74),
        "the 1 KiB buffer sufficed"
    );
    socket.send(&test_frame(60, 5));
    assert_eq!(rig.wait_used(0, 5)[4], (4, 12 + 74));
    let mut first = [0u8; 1];
    rig.mem
        .read_slice(&mut first, GuestAddress(DATA + 0x8000 + 12 + 14))
        .unwrap();
    assert_eq!(first[0], 5, "payload of the fifth frame");
}

const F_INDIRECT: u16 = 4;

#[test]
fn malformed_tx_chains_are_dropped_and_the_queue_goes_on() {
    let Some(rig) = Rig::new("ptapn3", 1, acked(&[])) else {
        return;
    };
    let socket = PacketSocket::bind("ptapn3");
    let frame = test_frame(64, 2);
    let mut with_header = vec![0u8; 12];
    with_header.extend_from_slice(&frame);
    rig.mem
        .write_slice(&with_header, GuestAddress(DATA))
        .unwrap();
    // One call per chain: the mock starts a new chain after a descriptor without NEXT only.
    let chains: [(u16, Vec<RawDescriptor>); 9] = [
        // 0 -> 1 -> 0: a loop.
        (
            0,
            vec![desc(DATA, 12, F_NEXT, 1), desc(DATA, 12, F_NEXT, 0)],
        ),
        // Outside guest RAM.
        (2, vec![desc(0x4000_0000, 100, 0, 0)]),
        // Zero length.
        (3, vec![desc(DATA, 0, 0, 0)]),
        // A device-writable buffer in a TX chain.
        (4, vec![desc(DATA, 80, F_WRITE, 0)]),
        // A next index past the table: a runaway chain.
        (5, vec![desc(DATA, 12, F_NEXT, 200)]),
        // Shorter than the virtio-net header.
        (6, vec![desc(DATA, 10, 0, 0)]),
        // Only the header, no frame.
        (7, vec![desc(DATA, 12, 0, 0)]),
        // An indirect table (not offered) outside guest RAM.
        (8, vec![desc(0x4000_0000, 64, F_INDIRECT, 0)]),
        // And a good frame after all that.
        (9, vec![desc(DATA, with_header.len() as u32, 0, 0)]),
    ];
    for (offset, descs) in &chains {
        rig.vq(1).add_desc_chains(descs, *offset).unwrap();
    }
    rig.kick(1);
    assert_eq!(socket.recv_test_frame(), frame);
    let used = rig.wait_used(1, chains.len());
    assert_eq!(
        used.iter().map(|u| u.0).collect::<Vec<_>>(),
        chains.iter().map(|c| u32::from(c.0)).collect::<Vec<_>>(),
        "every chain is returned, in order"
    );
    assert_eq!(
        rig.shared.device_status.load(Ordering::SeqCst) & STATUS_DEVICE_NEEDS_RESET,
        0,
        "a bad chain is dropped, not fatal"
    );
}

/// Writes an indirect descriptor table at `at`.
fn write_table(mem: &GuestMemoryMmap, at: u64, table: &[RawDescriptor]) {
    for (i, d) in table.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(at + 16 * i as u64)).unwrap();
    }
}

#[test]
fn indirect_chains_carry_tx_and_rx_frames() {
    let Some(rig) = Rig::new("ptapn9", 1, acked(&[F_MRG_RXBUF, F_RING_INDIRECT_DESC])) else {
        return;
    };
    let socket = PacketSocket::bind("ptapn9");
    // TX: header and frame (split in two) through one ring entry pointing at a 3-entry table.
    let frame = test_frame(300, 4);
    rig.mem.write_slice(&[0u8; 12], GuestAddress(DATA)).unwrap();
    rig.mem
        .write_slice(&frame, GuestAddress(DATA + 0x100))
        .unwrap();
    let table = DATA + 0x2000;
    write_table(
        rig.mem,
        table,
        &[
            desc(DATA, 12, F_NEXT, 1),
            desc(DATA + 0x100, 100, F_NEXT, 2),
            desc(DATA + 0x164, frame.len() as u32 - 100, 0, 0),
        ],
    );
    rig.vq(1)
        .add_desc_chains(&[desc(table, 48, F_INDIRECT, 0)], 0)
        .unwrap();
    rig.kick(1);
    assert_eq!(socket.recv_test_frame(), frame);
    assert_eq!(rig.wait_used(1, 1), vec![(0, 0)]);

    // RX: an indirect chain of two 800 B buffers, then a direct 1 KiB one (together a full
    // frame's worth, so the worker reads); the frame fills the indirect chain only.
    let rx_table = DATA + 0x3000;
    write_table(
        rig.mem,
        rx_table,
        &[
            desc(DATA + 0x4000, 800, F_WRITE | F_NEXT, 1),
            desc(DATA + 0x5000, 800, F_WRITE, 0),
        ],
    );
    rig.vq(0)
        .add_desc_chains(&[desc(rx_table, 32, F_INDIRECT, 0)], 0)
        .unwrap();
    rig.vq(0)
        .add_desc_chains(&[desc(DATA + 0x6000, 1024, F_WRITE, 0)], 1)
        .unwrap();
    rig.kick(0);
    let frame = test_frame(1200, 6);
    socket.send(&frame);
    let total = 12 + frame.len();
    assert_eq!(rig.wait_used(0, 1), vec![(0, total as u32)]);
    let mut got = vec![0u8; 1600];
    rig.mem
        .read_slice(&mut got[..800], GuestAddress(DATA + 0x4000))
        .unwrap();
    rig.mem
        .read_slice(&mut got[800..], GuestAddress(DATA + 0x5000))
        .unwrap();
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    assert_eq!(&got[12..total], &frame[..]);
}

#[test]
fn malformed_indirect_chains_are_dropped_and_the_queue_goes_on() {
    let Some(rig) = Rig::new("ptapn10", 1, acked(&[F_RING_INDIRECT_DESC])) else {
        return;
    };
    let socket = PacketSocket::bind("ptapn10");
    let frame = test_frame(64, 8);
    let mut with_header = vec![0u8; 12];
    with_header.extend_from_slice(&frame);
    rig.mem
        .write_slice(&with_header, GuestAddress(DATA))
        .unwrap();
    let tables = DATA + 0x1_0000;
    // An indirect descriptor inside an indirect table (the spec forbids nesting).
    write_table(rig.mem, tables, &[desc(tables + 0x100, 16, F_INDIRECT, 0)]);
    write_table(rig.mem, tables + 0x100, &[desc(DATA, 76, 0, 0)]);
    // A loop inside a table: 0 -> 1 -> 0.
    write_table(
        rig.mem,
        tables + 0x200,
        &[desc(DATA, 12, F_NEXT, 1), desc(DATA, 12, F_NEXT, 0)],
    );
    // A next index past the end of its table.
    write_table(rig.mem, tables + 0x300, &[desc(DATA, 12, F_NEXT, 5)]);
    let chains: [(u16, RawDescriptor); 6] = [
        (0, desc(tables, 16, F_INDIRECT, 0)),
        (1, desc(tables + 0x200, 32, F_INDIRECT, 0)),
        (2, desc(tables + 0x300, 16, F_INDIRECT, 0)),
        // A table length that is not a whole number of descriptors.
        (3, desc(tables + 0x100, 20, F_INDIRECT, 0)),
        // An empty table.
        (4, desc(tables + 0x100, 0, F_INDIRECT, 0)),
        // And a good frame after all that.
        (5, desc(DATA, with_header.len() as u32, 0, 0)),
    ];
    for (offset, d) in &chains {
        rig.vq(1).add_desc_chains(&[*d], *offset).unwrap();
    }
    rig.kick(1);
    assert_eq!(socket.recv_test_frame(), frame);
    let used = rig.wait_used(1, chains.len());
    assert_eq!(
        used,
        chains
            .iter()
            .map(|c| (u32::from(c.0), 0))
            .collect::<Vec<_>>(),
        "every chain is returned unused, in order"
    );
    assert_eq!(
        rig.shared.device_status.load(Ordering::SeqCst) & STATUS_DEVICE_NEEDS_RESET,
        0,
        "a bad indirect table is dropped, not fatal"
    );
    assert!(
        socket
            .try_recv_test_frame(Duration::from_millis(200))
            .is_none(),
        "only the good frame reached the tap"
    );
}

#[test]
fn malformed_rx_chains_are_returned_unused_and_the_frame_lands_in_a_good_one() {
    let Some(rig) = Rig::new("ptapn8", 1, acked(&[])) else {
        return;
    };
    let socket = PacketSocket::bind("ptapn8");
    let chains: [(u16, Vec<RawDescriptor>); 5] = [
        // Device-readable where the device must write.
        (0, vec![desc(DATA, 2048, 0, 0)]),
        // Writable but outside guest RAM.
        (1, vec![desc(0x4000_0000, 2048, F_WRITE, 0)]),
        // Too short for the virtio-net header.
        (2, vec![desc(DATA, 8, F_WRITE, 0)]),
        // A loop.
        (
            3,
            vec![
                desc(DATA, 1024, F_WRITE | F_NEXT, 4),
                desc(DATA + 0x400, 1024, F_WRITE | F_NEXT, 3),
            ],
        ),
        (5, vec![desc(DATA + 0x1000, 2048, F_WRITE, 0)]),
    ];
    for (offset, descs) in &chains {
        rig.vq(0).add_desc_chains(descs, *offset).unwrap();
    }
    rig.kick(0);
    let frame = test_frame(200, 6);
    socket.send(&frame);
    let used = rig.wait_used(0, chains.len());
    assert_eq!(
        used,
        vec![(0, 0), (1, 0), (2, 0), (3, 0), (5, 12 + frame.len() as u32)],
        "bad buffers come back empty, the frame is in the good one"
    );
    let mut got = vec![0u8; frame.len()];
    rig.mem
        .read_slice(&mut got, GuestAddress(DATA + 0x1000 + 12))
        .unwrap();
    assert_eq!(got, frame);
    assert_eq!(
        rig.shared.device_status.load(Ordering::SeqCst) & STATUS_DEVICE_NEEDS_RESET,
        0
    );
}

/// Bad chains on both pairs' TX queues: each is dropped, and the device logs one line in all.
#[test]
fn malformed_chains_are_logged_once_per_device() {
    capture_log();
    let Some(rig) = Rig::new("ptapn9", 2, acked(&[F_MQ])) else {
        return;
    };
    for tx in [1, 3] {
        for slot in 0..4u16 {
            rig.vq(tx)
                .add_desc_chains(&[desc(0x4000_0000, 100, 0, 0)], slot)
                .unwrap();
        }
        rig.kick(tx);
    }
    rig.wait_used(1, 4);
    rig.wait_used(3, 4);
    let lines = logged("ptapn9", "malformed");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("not in guest RAM"), "{lines:?}");
}

/// Rings no driver could have written: the device stops and asks for a reset, once, and the
/// VMM goes on.
#[test]
fn corrupt_rings_mark_the_device_broken_and_are_logged_once() {
    capture_log();
    let Some(rig) = Rig::new("ptapn4", 2, acked(&[F_MQ])) else {
        return;
    };
    rig.shared.config_vector.store(5, Ordering::SeqCst);
    // An available index that runs ahead of the ring on pair 0's TX ...
    rig.vq(1).avail().idx().store(100);
    rig.kick(1);
    wait_for("DEVICE_NEEDS_RESET", || {
        rig.shared.device_status.load(Ordering::SeqCst) & STATUS_DEVICE_NEEDS_RESET != 0
    });
    wait_for("config interrupt", || rig.rec.triggered().contains(&5));
    // ... and a head index past the descriptor table on pair 1's TX.
    rig.vq(3).avail().ring().ref_at(0).unwrap().store(200);
    rig.vq(3).avail().idx().store(1);
    rig.kick(3);
    wait_for("the second worker notices", || {
        logged("ptapn4", "")
            .iter()
            .any(|l| l.contains("ptapn4-qp1"))
    });
    // It marks its queue broken right after: give it the time to (wrongly) log that too.
    std::thread::sleep(Duration::from_millis(200));
    let broken = logged("ptapn4", "broken");
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert_eq!(
        rig.rec.triggered().iter().filter(|&&v| v == 5).count(),
        1,
        "one configuration interrupt for the reset request"
    );
    assert_eq!(rig.vq(3).used().idx().load(), 0, "nothing returned");
}

/// Puts one control request on the control queue (index `ctrl`) and returns its ack.
fn ctrl_request(rig: &Rig, ctrl: usize, slot: u16, request: &[u8]) -> u8 {
    let at = DATA + 0x1_0000 + u64::from(slot) * 0x100;
    rig.mem.write_slice(request, GuestAddress(at)).unwrap();
    rig.mem
        .write_slice(&[0xee], GuestAddress(at + 0x80))
        .unwrap();
    let old = rig.avail_idx(ctrl);
    rig.vq(ctrl)
        .add_desc_chains(
            &[
                desc(at, request.len() as u32, F_NEXT, 2 * slot + 1),
                desc(at + 0x80, 1, F_WRITE, 0),
            ],
            2 * slot,
        )
        .unwrap();
    rig.driver_kick(ctrl, old, rig.avail_idx(ctrl));
    let used = rig.wait_used(ctrl, usize::from(slot) + 1);
    assert_eq!(used[usize::from(slot)], (u32::from(2 * slot), 1));
    let mut ack = [0u8; 1];
    rig.mem
        .read_slice(&mut ack, GuestAddress(at + 0x80))
        .unwrap();
    ack[0]
}

#[test]
fn control_queue_switches_tap_queues() {
    let Some(rig) = Rig::new("ptapn5", 2, acked(&[F_MQ])) else {
        return;
    };
    let detached = |pair: usize| rig.net.pairs[pair].tap.flags().unwrap() & IFF_DETACH_QUEUE != 0;
    // Worker 0 applies the initial attach state as it starts.
    wait_for("the driver starts with one pair", || detached(1));
    assert!(!detached(0));
    // Control queue of 2 pairs is queue 4.
    assert_eq!(ctrl_request(&rig, 4, 0, &[4, 0, 2, 0]), 0);
    assert!(!detached(1));
    assert_eq!(
        ctrl_request(&rig, 4, 1, &[4, 0, 3, 0]),
        1,
        "more pairs than exist"
    );
    assert_eq!(ctrl_request(&rig, 4, 2, &[4, 0, 0, 0]), 1, "zero pairs");
    assert!(!detached(1));
    assert_eq!(ctrl_request(&rig, 4, 3, &[4, 0, 1, 0]), 0);
    assert!(detached(1));
    assert_eq!(
        ctrl_request(&rig, 4, 4, &[0, 0, 1]),
        1,
        "RX mode is not offered"
    );
    assert_eq!(ctrl_request(&rig, 4, 5, &[3, 0]), 0, "announce ack");
    assert!(rig.rec.triggered().contains(&4), "control queue interrupt");
}

/// Linux polls for the ack of a control request; with EVENT_IDX it kicks only when the device's
/// avail_event asks for it, so the device must ask again after each request (`ethtool -L` hung
/// the guest when it did not).
#[test]
fn control_queue_with_event_idx_answers_every_request() {
    let Some(rig) = Rig::new("ptapn7", 2, acked(&[F_MQ, F_RING_EVENT_IDX])) else {
        return;
    };
    for (slot, pairs) in [(0u16, 2u8), (1, 1), (2, 2), (3, 1)] {
        assert_eq!(
            ctrl_request(&rig, 4, slot, &[4, 0, pairs, 0]),
            0,
            "{pairs} pairs"
        );
    }
}

fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

/// Puts a TX frame (header + frame, one descriptor) at descriptor `slot` of TX queue `tx`.
fn send_from_guest(rig: &Rig, tx: usize, slot: u16, frame: &[u8]) {
    let at = DATA + 0x2_0000 + u64::from(slot) * 0x1000;
    let mut bytes = vec![0u8; 12];
    bytes.extend_from_slice(frame);
    rig.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
    rig.vq(tx)
        .add_desc_chains(&[desc(at, bytes.len() as u32, 0, 0)], slot)
        .unwrap();
    rig.kick(tx);
}

#[test]
fn reset_stops_the_workers() {
    let Some(mut rig) = Rig::new("ptapn6", 1, acked(&[])) else {
        return;
    };
    // The new thread names itself once it runs.
    wait_for("worker thread", || {
        thread_names().contains(&"ptapn6-qp0".to_string())
    });
    rig.net.reset();
    assert!(
        !thread_names().contains(&"ptapn6-qp0".to_string()),
        "reset returns once the worker has ended"
    );
}

/// A driver reset (status 0) stops and joins every worker; the tap queues stay open and the
/// next DRIVER_OK starts over with them: initial attach state, traffic both ways, pair switching.
#[test]
fn reset_then_activate_again_moves_traffic() {
    let acked = acked(&[F_MQ]);
    let Some(mut rig) = Rig::new("ptapna", 2, acked) else {
        return;
    };
    let socket = PacketSocket::bind("ptapna");
    let detached =
        |rig: &Rig, pair: usize| rig.net.pairs[pair].tap.flags().unwrap() & IFF_DETACH_QUEUE != 0;
    assert_eq!(ctrl_request(&rig, 4, 0, &[4, 0, 2, 0]), 0);
    assert!(!detached(&rig, 1));
    send_from_guest(&rig, 3, 0, &test_frame(80, 1));
    assert_eq!(socket.recv_test_frame(), test_frame(80, 1));

    rig.net.reset();
    let workers = |names: Vec<String>| names.iter().filter(|n| n.starts_with("ptapna-qp")).count();
    assert_eq!(workers(thread_names()), 0, "every worker joined by reset");

    rig.activate(2, acked);
    wait_for("two workers again", || workers(thread_names()) == 2);
    wait_for("pair 1 detached again at the start", || detached(&rig, 1));
    send_from_guest(&rig, 1, 0, &test_frame(90, 2));
    assert_eq!(
        socket.recv_test_frame(),
        test_frame(90, 2),
        "TX after reset"
    );
    rig.vq(0)
        .add_desc_chains(&[desc(DATA, 2048, F_WRITE, 0)], 0)
        .unwrap();
    rig.kick(0);
    let frame = test_frame(100, 3);
    socket.send(&frame);
    assert_eq!(
        rig.wait_used(0, 1),
        vec![(0, 12 + frame.len() as u32)],
        "RX after reset"
    );
    let mut got = vec![0u8; frame.len()];
    rig.mem
        .read_slice(&mut got, GuestAddress(DATA + 12))
        .unwrap();
    assert_eq!(got, frame);
    assert_eq!(ctrl_request(&rig, 4, 0, &[4, 0, 2, 0]), 0);
    assert!(!detached(&rig, 1));
    send_from_guest(&rig, 3, 0, &test_frame(70, 4));
    assert_eq!(
        socket.recv_test_frame(),
        test_frame(70, 4),
        "pair 1 after reset"
    );
}

/// Dropping the device (the VM ends) stops and joins its workers.
#[test]
fn drop_joins_the_workers() {
    let Some(rig) = Rig::new("ptapnb", 2, acked(&[F_MQ])) else {
        return;
    };
    let workers = || {
        thread_names()
            .iter()
            .filter(|n| n.starts_with("ptapnb-qp"))
            .count()
    };
    wait_for("two workers", || workers() == 2);
    drop(rig);
    assert_eq!(workers(), 0);
}
