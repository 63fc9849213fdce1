//! Multi-queue virtio-net with a real Linux guest in the KVM test host (or on hardware KVM): root
//! makes a multi-queue tap owned by uid 1000; `paddock --user 1000:kvm run --cpus 2 --net tap=tap0`
//! gives the guest eth0 with 2 RX + 2 TX queues, a separate MSI-X interrupt per queue, and the
//! guest pings the host end of the tap. More queue pairs than vCPUs are refused.
//!
//! Needs the release binaries first: `cargo build --release -p sandbox -p paddock-tests`.

use std::time::Duration;

use paddock_tests::testhost::{CheckResult, Scenario};

const BOOT: Duration = Duration::from_secs(240);

/// Root's part: the tap (multi-queue, owned by uid 1000, host end 192.168.100.1) and the user.
const PREAMBLE: &str = r#"if ! ip link show tap0 > /dev/null 2>&1; then
    /bin/ip tuntap add dev tap0 mode tap multi_queue user 1000 || exit 10
    /bin/ip addr add 192.168.100.1/24 dev tap0
    /bin/ip link set tap0 up
fi
KVM_GID=$(stat -c %g /dev/kvm)
PADDOCK="paddock --user 1000:$KVM_GID"
GUEST_ARGS="--kernel $GUEST/vmlinuz --initramfs $GUEST/initramfs.cpio.gz --cpus 2 --memory 256M"
"#;

/// Run by the guest's sh; `\$` keeps L1's shell from expanding what the guest must.
const GUEST_COMMAND: &str = "ip addr add 192.168.100.2/24 dev eth0; ip link set eth0 up; \
echo queues=\\$(ls /sys/class/net/eth0/queues); \
grep virtio /proc/interrupts | sed 's/^/irq /'; \
ping -c 3 -W 5 192.168.100.1; echo ping_status=\\$?";

fn field<'a>(r: &'a CheckResult, key: &str) -> Option<&'a str> {
    r.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(key).map(str::trim))
}

#[test]
fn two_queue_pairs_with_an_interrupt_each_and_the_guest_pings_the_host() {
    let mut s = Scenario::new("net");
    s.check_as_root(
        "ping",
        BOOT,
        &format!(r#"{PREAMBLE}$PADDOCK run $GUEST_ARGS --net tap=tap0 -- sh -c "{GUEST_COMMAND}""#),
    )
    .check_as_root(
        "too-many-pairs",
        BOOT,
        &format!("{PREAMBLE}$PADDOCK run $GUEST_ARGS --net tap=tap0,queues=3 -- true"),
    );
    let Some(report) = s.run().expect("net scenario") else {
        return;
    };
    let mut failures = Vec::new();
    let mut expect = |ok: bool, what: &str, r: &CheckResult| {
        if !ok {
            failures.push(format!("{what}\n{r}"));
        }
    };

    let r = report.check("ping");
    expect(r.status == 0, "the guest must run and power off", r);
    let mut queues: Vec<&str> = field(r, "queues=")
        .map(|q| q.split_whitespace().collect())
        .unwrap_or_default();
    queues.sort_unstable();
    expect(
        queues == ["rx-0", "rx-1", "tx-0", "tx-1"],
        "eth0 must have 2 RX and 2 TX queues",
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
    expect(
        field(r, "ping_status=") == Some("0"),
        "the guest must ping 192.168.100.1 over the tap",
        r,
    );

    let r = report.check("too-many-pairs");
    expect(
        r.status == 2 && r.stderr.contains("more than the 2 vCPUs"),
        "queues=3 with 2 vCPUs: exit 2 naming the limit",
        r,
    );
    assert!(
        failures.is_empty(),
        "{} expectation(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
