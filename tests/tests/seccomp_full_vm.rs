//! Seccomp under a full workload, in the KVM test host (or on hardware KVM): a 2-vCPU guest with a
//! multi-queue virtio-net device on a tap and a virtio-fs share served by the bundled
//! `paddock virtiofsd`, both run as uid 1000 under the default `--seccomp enforce`. While the guest
//! moves iperf3 traffic both ways and writes through the share, every thread of paddock and of the
//! backend shows `Seccomp: 2`; the run ends with exit 0 and no seccomp report (no SIGSYS).
//!
//! Needs the release binaries first: `cargo build --release -p sandbox -p paddock-tests`.

use std::time::Duration;

use paddock_tests::testhost::{CheckResult, Scenario};

const RUN: Duration = Duration::from_secs(600);

/// Root makes the tap (owned by uid 1000) and the share; everything else runs as uid 1000. The
/// guest's script lives on the share, so no quoting crosses the kernel command line.
const SCRIPT: &str = r#"if ! ip link show tap0 > /dev/null 2>&1; then
    /bin/ip tuntap add dev tap0 mode tap multi_queue user 1000 || exit 10
    /bin/ip addr add 192.168.100.1/24 dev tap0
    /bin/ip link set tap0 up
fi
KVM_GID=$(stat -c %g /dev/kvm)
W=/tmp/seccomp-vm; rm -rf $W; mkdir -p $W/share; chown -R 1000:1000 $W
cat > $W/share/guest.sh <<'GUEST'
ip addr add 192.168.100.2/24 dev eth0; ip link set eth0 up
iperf3 -c 192.168.100.1 -t 2 -f k | grep -E 'sender|receiver' | sed 's/^/to_l1 /'
iperf3 -c 192.168.100.1 -t 2 -f k -R | grep -E 'sender|receiver' | sed 's/^/from_l1 /'
dd if=/dev/urandom of=/mnt/blob bs=1M count=8 2> /dev/null
sha256sum /mnt/blob | sed 's/^/guest_sum /'
echo SAMPLE-NOW
i=0; while [ ! -e /mnt/sampled ] && [ $i -lt 900 ]; do sleep 0.2; i=$((i + 1)); done
GUEST
chmod 0644 $W/share/guest.sh
iperf3 -s -D -B 192.168.100.1 --pidfile $W/iperf3.pid || exit 13
paddock --user 1000:1000 virtiofsd --socket-path $W/fs.sock --shared-dir $W/share > $W/fs.log 2>&1 &
FS=$!
i=0; while [ ! -S $W/fs.sock ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
paddock --user 1000:$KVM_GID run --kernel $GUEST/vmlinuz --initramfs $GUEST/initramfs.cpio.gz \
    --cpus 2 --memory 512M --net tap=tap0 --fs tag=data,socket=$W/fs.sock \
    -- sh -c "mount -t virtiofs data /mnt && sh /mnt/guest.sh" > $W/guest.out 2> $W/guest.err &
P=$!
i=0; while ! grep -q SAMPLE-NOW $W/guest.out && [ $i -lt 3000 ]; do sleep 0.2; i=$((i + 1)); done
for t in /proc/$P/task/*; do echo "paddock_thread $(tr ' ' '_' < $t/comm) $(grep Seccomp: $t/status | tr -d '\t')"; done
for t in /proc/$FS/task/*; do echo "virtiofsd_thread $(tr ' ' '_' < $t/comm) $(grep Seccomp: $t/status | tr -d '\t')"; done
touch $W/share/sampled
wait $P; echo "paddock_status=$?"
wait $FS; echo "virtiofsd_status=$?"
kill "$(cat $W/iperf3.pid)"
echo "host_sum $(sha256sum $W/share/blob)"
cat $W/guest.out
sed 's/^/paddock_stderr /' $W/guest.err
sed 's/^/virtiofsd_log /' $W/fs.log
"#;

fn fields<'a>(r: &'a CheckResult, prefix: &str) -> Vec<&'a str> {
    r.stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
        .collect()
}

/// iperf3's summary lines end in "<rate> Kbits/sec ... sender|receiver": the rate must be positive.
fn moved_data(lines: &[&str]) -> bool {
    let rates: Vec<f64> = lines
        .iter()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let unit = words.iter().position(|w| *w == "Kbits/sec")?;
            words.get(unit.checked_sub(1)?)?.parse().ok()
        })
        .collect();
    rates.len() >= 2 && rates.iter().all(|r| *r > 0.0)
}

#[test]
fn net_and_virtiofs_vm_runs_every_thread_under_seccomp_without_sigsys() {
    let mut s = Scenario::new("seccomp_full_vm");
    s.check_as_root("workload", RUN, SCRIPT);
    let Some(report) = s.run().expect("seccomp_full_vm scenario") else {
        return;
    };
    let r = report.check("workload");
    let mut failures = Vec::new();
    let mut expect = |ok: bool, what: &str| {
        if !ok {
            failures.push(what.to_string());
        }
    };

    expect(
        fields(r, "paddock_status=") == ["0"],
        "paddock exits 0 (the guest's command succeeded, no SIGSYS)",
    );
    expect(
        fields(r, "virtiofsd_status=") == ["0"],
        "paddock virtiofsd exits 0 once the VM is gone",
    );
    let reports: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| {
            (l.starts_with("paddock_stderr") || l.starts_with("virtiofsd_log"))
                && (l.contains("seccomp") || l.contains("SIGSYS"))
        })
        .collect();
    expect(reports.is_empty(), "no seccomp report from either process");
    expect(
        moved_data(&fields(r, "to_l1 ")),
        "iperf3 moved data guest -> L1",
    );
    expect(
        moved_data(&fields(r, "from_l1 ")),
        "iperf3 moved data L1 -> guest",
    );

    let guest_sum = fields(r, "guest_sum ")
        .first()
        .and_then(|l| l.split_whitespace().next());
    let host_sum = fields(r, "host_sum ")
        .first()
        .and_then(|l| l.split_whitespace().next());
    expect(
        guest_sum.is_some() && guest_sum == host_sum,
        "the file written in the guest is on the host with the same SHA-256",
    );

    for (who, min_threads) in [("paddock_thread ", 6), ("virtiofsd_thread ", 2)] {
        let threads = fields(r, who);
        expect(
            threads.len() >= min_threads,
            &format!("{who}: at least {min_threads} threads sampled while the guest ran"),
        );
        for t in &threads {
            expect(
                t.ends_with("Seccomp:2"),
                &format!("{who}{t}: must run under its seccomp filter"),
            );
        }
    }
    // The device threads must have been among those sampled.
    let paddock_threads = fields(r, "paddock_thread ").join(" ");
    for name in ["CPU_0/KVM", "CPU_1/KVM", "net0-qp0", "net0-qp1"] {
        expect(
            paddock_threads.contains(name),
            &format!("thread {name} sampled"),
        );
    }

    assert!(
        failures.is_empty(),
        "{} expectation(s) failed:\n{}\n\n{r}",
        failures.len(),
        failures.join("\n")
    );
}
