//! Multi-queue virtio-net with a real Linux guest in the KVM test host (or on hardware KVM): root
//! makes a multi-queue tap owned by uid 1000 (host end 192.168.100.1, guest 192.168.100.2);
//! `paddock --user 1000:kvm run --cpus 2 --net tap=tap0` gives the guest eth0 with 2 RX + 2 TX
//! queues and a separate MSI-X interrupt per queue. Traffic goes both ways: ping from the guest
//! and from L1, iperf3 with the guest as client (both directions) and as server; `ethtool -L`
//! switches to 1 pair and back to 2 with traffic after each change; the guest unbinds and binds
//! the driver (a device reset: workers stopped and joined, then started again) and traffic goes
//! on; workers stop when the VM ends. Bad taps (missing, without
//! multi_queue, another user's) and more pairs than vCPUs are refused with exit 2 and one line
//! naming the tap and the fix. No traffic leaves the L1.
//!
//! Needs the release binaries first: `cargo build --release -p sandbox -p paddock-tests`.

use std::time::Duration;

use paddock_tests::testhost::{CheckResult, Scenario};

const BOOT: Duration = Duration::from_secs(240);
/// A boot, five short iperf3 runs and two queue changes under nested emulation.
const TRAFFIC: Duration = Duration::from_secs(480);

/// Root's part: the taps and the user. tap0 is the working one; tap1 lacks multi_queue; tap2
/// belongs to uid 1001.
const PREAMBLE: &str = r#"if ! /bin/ip link show tap0 > /dev/null 2>&1; then
    /bin/ip tuntap add dev tap0 mode tap multi_queue user 1000 || exit 10
    /bin/ip addr add 192.168.100.1/24 dev tap0
    /bin/ip link set tap0 up
    /bin/ip tuntap add dev tap1 mode tap user 1000 || exit 11
    /bin/ip tuntap add dev tap2 mode tap multi_queue user 1001 || exit 12
fi
KVM_GID=$(stat -c %g /dev/kvm)
PADDOCK="paddock --user 1000:$KVM_GID"
GUEST_ARGS="--kernel $GUEST/vmlinuz --initramfs $GUEST/initramfs.cpio.gz --cpus 2 --memory 256M"
wait_for() { i=0; while [ $i -lt 3000 ]; do grep -q "$1" "$2" 2>/dev/null && return 0; sleep 0.1; i=$((i+1)); done; return 1; }
"#;

/// Run by the guest's sh; `\$` keeps L1's shell from expanding what the guest must. Each iperf3
/// summary line (`sender`/`receiver`) is tagged with the direction it measured.
const GUEST_COMMAND: &str = "ip addr add 192.168.100.2/24 dev eth0; ip link set eth0 up; \
echo queues=\\$(ls /sys/class/net/eth0/queues); \
echo features=\\$(cat /sys/class/net/eth0/device/features); \
echo tso=\\$(ethtool -k eth0 | awk '/^tcp-segmentation-offload/{print \\$2}'); \
grep virtio /proc/interrupts | sed 's/^/irq /'; \
ping -c 3 -W 5 192.168.100.1; echo ping_status=\\$?; \
iperf3 -c 192.168.100.1 -t 2 -f k | grep -E 'sender|receiver' | sed 's/^/to_l1 /'; \
iperf3 -c 192.168.100.1 -t 2 -f k -R | grep -E 'sender|receiver' | sed 's/^/from_l1 /'; \
ethtool -L eth0 combined 1; echo set1_status=\\$?; \
echo combined1=\\$(ethtool -l eth0 | awk '/Combined/{c=\\$2}END{print c}'); \
ping -c 2 -W 5 192.168.100.1; echo ping1_status=\\$?; \
iperf3 -c 192.168.100.1 -t 2 -f k | grep -E 'sender|receiver' | sed 's/^/pairs1 /'; \
ethtool -L eth0 combined 2; echo set2_status=\\$?; \
echo combined2=\\$(ethtool -l eth0 | awk '/Combined/{c=\\$2}END{print c}'); \
ping -c 2 -W 5 192.168.100.1; echo ping2_status=\\$?; \
d=\\$(cd /sys/bus/pci/drivers/virtio-pci && ls -d 0000:*); \
echo \\$d > /sys/bus/pci/drivers/virtio-pci/unbind; echo \\$d > /sys/bus/pci/drivers/virtio-pci/bind; \
echo rebind_status=\\$?; ip addr add 192.168.100.2/24 dev eth0; ip link set eth0 up; \
ping -c 2 -W 5 192.168.100.1; echo ping3_status=\\$?; \
echo guest-serving; iperf3 -s -1 -f k > /dev/null; echo guest_server_status=\\$?";

/// L1's side of the traffic check: an iperf3 server for the guest, then, once the guest serves,
/// a ping to it and an iperf3 client against it.
const TRAFFIC_SCRIPT: &str = r#"iperf3 -s -D -B 192.168.100.1 --pidfile "$HOME/iperf3.pid" || exit 13
PADDOCK_LOG=devices::virtio::net=info $PADDOCK run $GUEST_ARGS --net tap=tap0 -- sh -c "GUEST_COMMAND" > "$HOME/guest.out" 2>&1 &
if wait_for guest-serving "$HOME/guest.out"; then
    ping -c 3 -W 5 192.168.100.2; echo l1_ping_status=$?
    # The guest's server may need a moment to listen after its marker.
    for i in 1 2 3 4 5 6 7 8 9 10; do
        iperf3 -c 192.168.100.2 -t 2 -f k > "$HOME/client.out" 2>&1 && break
        sleep 1
    done
    grep -E 'sender|receiver' "$HOME/client.out" | sed 's/^/to_guest /'
fi
wait %1; echo paddock_status=$?
kill "$(cat "$HOME/iperf3.pid")"
cat "$HOME/guest.out""#;

fn field<'a>(r: &'a CheckResult, key: &str) -> Option<&'a str> {
    r.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(key).map(str::trim))
}

/// Bytes moved, from the iperf3 summary line tagged `tag` that ends in `role` (`sender` or
/// `receiver`): `[  5]   0.00-2.00   sec  28.5 MBytes  119138 Kbits/sec    0   sender`.
fn iperf_bytes(stdout: &str, tag: &str, role: &str) -> Option<f64> {
    let line = stdout
        .lines()
        .find(|l| l.trim().starts_with(tag) && l.trim_end().ends_with(role))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let (at, scale) = words.iter().enumerate().find_map(|(i, w)| {
        let scale = match *w {
            "Bytes" => 1.0,
            "KBytes" => 1024.0,
            "MBytes" => 1024.0 * 1024.0,
            "GBytes" => 1024.0 * 1024.0 * 1024.0,
            _ => return None,
        };
        Some((i, scale))
    })?;
    let value: f64 = words.get(at.checked_sub(1)?)?.parse().ok()?;
    Some(value * scale)
}

#[test]
fn two_queue_pairs_carry_traffic_both_ways_and_bad_taps_are_refused() {
    let traffic = TRAFFIC_SCRIPT.replace("GUEST_COMMAND", GUEST_COMMAND);
    let refused = |args: &str| format!("{PREAMBLE}$PADDOCK run $GUEST_ARGS {args} -- true");
    let mut s = Scenario::new("net");
    s.check_as_root("traffic", TRAFFIC, &format!("{PREAMBLE}{traffic}"))
        .check_as_root("too-many-pairs", BOOT, &refused("--net tap=tap0,queues=3"))
        .check_as_root("missing-tap", BOOT, &refused("--net tap=tapnone"))
        .check_as_root("single-queue-tap", BOOT, &refused("--net tap=tap1"))
        .check_as_root("foreign-tap", BOOT, &refused("--net tap=tap2"));
    let Some(report) = s.run().expect("net scenario") else {
        return;
    };
    let mut failures = Vec::new();
    let mut expect = |ok: bool, what: &str, r: &CheckResult| {
        if !ok {
            failures.push(format!("{what}\n{r}"));
        }
    };

    let r = report.check("traffic");
    // The measured rates, for the record (nested emulation: they say nothing about speed).
    for line in r
        .stdout
        .lines()
        .filter(|l| l.ends_with("sender") || l.ends_with("receiver"))
    {
        eprintln!("net: {line}");
    }
    expect(
        r.status == 0 && field(r, "paddock_status=") == Some("0"),
        "the guest must run and power off",
        r,
    );
    let mut queues: Vec<&str> = field(r, "queues=")
        .map(|q| q.split_whitespace().collect())
        .unwrap_or_default();
    queues.sort_unstable();
    expect(
        queues == ["rx-0", "rx-1", "tx-0", "tx-1"],
        "eth0 must have 2 RX and 2 TX queues",
        r,
    );
    // The guest driver's negotiated features, bit N at character N.
    let features = field(r, "features=").unwrap_or_default();
    eprintln!("net: guest features {features}, tso {:?}", field(r, "tso="));
    for (bit, name) in [
        (0, "CSUM"),
        (1, "GUEST_CSUM"),
        (7, "GUEST_TSO4"),
        (11, "HOST_TSO4"),
        (15, "MRG_RXBUF"),
        (17, "CTRL_VQ"),
        (22, "MQ"),
        (28, "RING_INDIRECT_DESC"),
        (29, "RING_EVENT_IDX"),
        (32, "VERSION_1"),
    ] {
        expect(
            features.as_bytes().get(bit) == Some(&b'1'),
            &format!("the guest must negotiate {name} (bit {bit}) in {features:?}"),
            r,
        );
    }
    expect(
        field(r, "tso=") == Some("on"),
        "the guest must send TCP segmentation offloaded (ethtool -k: tcp-segmentation-offload on)",
        r,
    );
    let irqs: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with("irq ")).collect();
    for queue in ["input.0", "input.1", "output.0", "output.1"] {
        let lines: Vec<_> = irqs.iter().filter(|l| l.ends_with(queue)).collect();
        expect(
            lines.len() == 1 && lines.iter().all(|l| l.contains("PCI-MSI")),
            &format!("queue {queue} must have its own MSI-X interrupt"),
            r,
        );
    }
    for (key, what) in [
        (
            "ping_status=",
            "the guest must ping 192.168.100.1 over the tap",
        ),
        ("l1_ping_status=", "L1 must ping the guest at 192.168.100.2"),
        ("set1_status=", "ethtool -L eth0 combined 1 must succeed"),
        ("ping1_status=", "ping must work with 1 queue pair"),
        ("set2_status=", "ethtool -L eth0 combined 2 must succeed"),
        ("ping2_status=", "ping must work again with 2 queue pairs"),
        (
            "rebind_status=",
            "the guest must unbind (device reset) and bind virtio-pci again",
        ),
        (
            "ping3_status=",
            "ping must work after the driver reset and re-activated the device",
        ),
        (
            "guest_server_status=",
            "the guest's iperf3 server must serve L1's client",
        ),
    ] {
        expect(field(r, key) == Some("0"), what, r);
    }
    expect(
        field(r, "combined1=") == Some("1"),
        "ethtool -l must show 1 combined channel",
        r,
    );
    expect(
        field(r, "combined2=") == Some("2"),
        "ethtool -l must show 2 combined channels",
        r,
    );
    for (tag, what) in [
        ("to_l1", "iperf3 guest -> L1"),
        ("from_l1", "iperf3 L1 -> guest (-R)"),
        ("pairs1", "iperf3 guest -> L1 with 1 queue pair"),
        ("to_guest", "iperf3 L1 client -> guest server"),
    ] {
        for role in ["sender", "receiver"] {
            let bytes = iperf_bytes(&r.stdout, tag, role);
            expect(
                bytes.is_some_and(|b| b > 0.0),
                &format!(
                    "{what}: the {role} must report a positive number of bytes, got {bytes:?}"
                ),
                r,
            );
        }
    }

    // Workers are stopped and joined at reset and when the VM ends: each logs as it stops
    // (twice: the guest's unbind, then the power-off).
    for worker in ["net0-qp0", "net0-qp1"] {
        let stops = r
            .stdout
            .lines()
            .filter(|l| l.ends_with(&format!("{worker}: stopped")))
            .count();
        expect(
            stops == 2,
            &format!(
                "{worker} must stop at the driver reset and at the VM's end, stopped {stops} times"
            ),
            r,
        );
    }

    let refusals = [
        ("too-many-pairs", &["more than the 2 vCPUs", "queues="][..]),
        (
            "missing-tap",
            &["tap tapnone does not exist", "ip tuntap add dev tapnone"][..],
        ),
        (
            "single-queue-tap",
            &["tap tap1 has no multi_queue flag", "multi_queue user"][..],
        ),
        (
            "foreign-tap",
            &["tap tap2 belongs to uid 1001", "uid 1000", "user 1000"][..],
        ),
    ];
    for (check, phrases) in refusals {
        let r = report.check(check);
        let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        expect(
            r.status == 2 && lines.len() == 1 && phrases.iter().all(|p| lines[0].contains(p)),
            &format!("{check}: exit 2 with one line containing {phrases:?}"),
            r,
        );
    }
    assert!(
        failures.is_empty(),
        "{} expectation(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn iperf_summary_lines_parse() {
    let out = "to_l1 [  5]   0.00-2.00   sec  28.5 MBytes  119138 Kbits/sec    0             sender\n\
               to_l1 [  5]   0.00-2.03   sec   512 KBytes  2066 Kbits/sec                  receiver\n\
               from_l1 [  5]   0.00-2.03   sec  0.00 Bytes  0.00 Kbits/sec                  receiver\n";
    assert_eq!(iperf_bytes(out, "to_l1", "sender"), Some(28.5 * 1048576.0));
    assert_eq!(iperf_bytes(out, "to_l1", "receiver"), Some(512.0 * 1024.0));
    assert_eq!(iperf_bytes(out, "from_l1", "receiver"), Some(0.0));
    assert_eq!(iperf_bytes(out, "from_l1", "sender"), None);
}
