//! Linux guests booted by `paddock run` in the KVM test host (or directly on hardware KVM): the
//! default guest as bzImage and as ELF vmlinux, with 1 and 2 vCPUs; the ready marker, `nproc`
//! matching `--cpus`, the command's exit status coming back, poweroff and reset endings, SIGTERM
//! shutting the guest down through its ACPI power button, and every
//! bad input refused with exit status 2 and one line on stderr. All checks share one L1 boot.
//!
//! Needs the release binaries first: `cargo build --release -p sandbox -p paddock-tests`, then
//! `cargo test -p paddock-tests --test linux_boot --release -- --nocapture` (see docs/testing.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use paddock_tests::testhost::{CheckResult, Report, RunAs, Scenario, Verdict};

/// An L2 boot takes 5-8 s in the test host on the 2-core development machine; 25x that.
const BOOT: Duration = Duration::from_secs(180);
const REFUSAL: Duration = Duration::from_secs(60);

/// `paddock run` of the default guest with `kernel` (a file in $GUEST) and `rest` appended.
fn run_guest(kernel: &str, cpus: u32, rest: &str) -> String {
    format!(
        r#"paddock run --kernel "$GUEST/{kernel}" --initramfs "$GUEST/initramfs.cpio.gz" --cpus {cpus} --memory 512M {rest}"#
    )
}

/// A `paddock run` that must be refused; `args` replace the good defaults they name.
fn refused(args: &str) -> String {
    format!("paddock run {args} -- true")
}

const GOOD_KERNEL: &str = r#"--kernel "$GUEST/vmlinuz" --initramfs "$GUEST/initramfs.cpio.gz""#;

/// SIGTERM to paddock while the guest runs `sleep 600`: the guest's power button is pressed,
/// its acpid ends the command (status 143) and the guest powers off well within the grace period.
fn sigterm_check() -> String {
    let run = run_guest("vmlinuz", 1, "--shutdown-timeout 120 -- sleep 600");
    format!(
        r#"{run} > "$HOME/sigterm.out" 2> "$HOME/sigterm.err" &
P=$!
i=0
while ! grep -q PADDOCK-GUEST-READY "$HOME/sigterm.out"; do
    i=$((i + 1)); if [ $i -gt 900 ]; then echo "no ready marker"; kill -9 $P; exit 90; fi; sleep 0.2
done
sleep 1
T0=$(date +%s); kill -TERM $P; wait $P; S=$?
cat "$HOME/sigterm.out"; cat "$HOME/sigterm.err" >&2
echo "paddock_status=$S seconds=$(( $(date +%s) - T0 ))""#
    )
}

fn scenario() -> Scenario {
    let mut s = Scenario::new("linux_boot");
    s.check_as_user(
        "kvm-access",
        REFUSAL,
        "id; ls -l /dev/kvm; test -r /dev/kvm && test -w /dev/kvm",
    )
    .check_as_user(
        "bzimage-1cpu-nproc",
        BOOT,
        &run_guest("vmlinuz", 1, "-- nproc"),
    )
    .check_as_user(
        "bzimage-2cpu-nproc",
        BOOT,
        &run_guest("vmlinuz", 2, "-- nproc"),
    )
    .check_as_user("elf-2cpu-nproc", BOOT, &run_guest("vmlinux", 2, "-- nproc"))
    .check_as_user(
        "exit-status-7",
        BOOT,
        &run_guest("vmlinuz", 1, "-- sh -c 'exit 7'"),
    )
    .check_as_user("poweroff", BOOT, &run_guest("vmlinuz", 1, "-- poweroff -f"))
    .check_as_user("reboot", BOOT, &run_guest("vmlinuz", 1, "-- reboot -f"))
    .check_as_user("sigterm", BOOT, &sigterm_check())
    .check_as_user(
        "pci-host-bridge",
        BOOT,
        &run_guest(
            "vmlinuz",
            1,
            "-- sh -c 'cat /sys/bus/pci/devices/0000:00:00.0/class; dmesg | grep -c MMCONFIG.fo[r].domain'",
        ),
    )
    .check_as_user(
        "panic",
        BOOT,
        &run_guest("vmlinuz", 1, "-- sh -c 'echo c > /proc/sysrq-trigger'"),
    )
    .check_as_user(
        "bad-kernel-missing",
        REFUSAL,
        &refused("--kernel /nonexistent/vmlinuz --cpus 1 --memory 512M"),
    )
    .check_as_user(
        "bad-not-a-kernel",
        REFUSAL,
        &refused("--kernel /etc/passwd --cpus 1 --memory 512M"),
    )
    .check_as_user(
        "bad-initramfs-too-big",
        REFUSAL,
        &format!(
            // 300 MiB of initramfs for 256 MiB of guest RAM (64M would not even hold the kernel).
            "dd if=/dev/zero of=\"$HOME/big.cpio\" bs=1048576 count=300 2>/dev/null && {}",
            refused(
                r#"--kernel "$GUEST/vmlinuz" --initramfs "$HOME/big.cpio" --cpus 1 --memory 256M"#
            )
        ),
    )
    .check_as_user(
        "bad-memory-malformed",
        REFUSAL,
        &refused(&format!("{GOOD_KERNEL} --cpus 1 --memory 12XB")),
    )
    .check_as_user(
        "bad-memory-too-large",
        REFUSAL,
        &refused(&format!("{GOOD_KERNEL} --cpus 1 --memory 64T")),
    )
    .check_as_user(
        "bad-cpus-0",
        REFUSAL,
        &refused(&format!("{GOOD_KERNEL} --cpus 0 --memory 512M")),
    )
    .check_as_user(
        "bad-cpus-4096",
        REFUSAL,
        &refused(&format!("{GOOD_KERNEL} --cpus 4096 --memory 512M")),
    )
    .check(
        "bad-no-kvm-access",
        RunAs::UserWithoutKvm,
        REFUSAL,
        &refused(&format!("{GOOD_KERNEL} --cpus 1 --memory 512M")),
    );
    s.paddock_bench_bin(Path::new(env!("CARGO_BIN_EXE_paddock-bench")));
    s
}

fn guest_lines(r: &CheckResult) -> Vec<&str> {
    r.stdout.lines().map(str::trim).collect()
}

fn expect_boot(v: &mut Verdict, report: &Report, name: &str, nproc: &str) {
    let r = report.check(name);
    let lines = guest_lines(r);
    v.expect(r.status == 0, &format!("{name}: paddock must exit 0"), r);
    v.expect(
        lines.contains(&"PADDOCK-GUEST-READY"),
        &format!("{name}: the guest's ready marker is missing"),
        r,
    );
    v.expect(
        lines.contains(&nproc),
        &format!("{name}: nproc in the guest must print {nproc}"),
        r,
    );
    v.expect(
        lines.contains(&"PADDOCK-GUEST-EXIT 0"),
        &format!("{name}: the guest's exit marker is missing"),
        r,
    );
}

fn expect_refusal(v: &mut Verdict, report: &Report, name: &str, names_it: &[&str]) {
    let r = report.check(name);
    v.expect(r.status == 2, &format!("{name}: exit status must be 2"), r);
    let lines = r.stderr_lines();
    v.expect(
        lines.len() == 1,
        &format!("{name}: stderr must be exactly one line"),
        r,
    );
    let line = r.stderr_last_line().to_lowercase();
    v.expect(
        names_it.iter().any(|w| line.contains(&w.to_lowercase())),
        &format!("{name}: the error must name the problem (one of {names_it:?})"),
        r,
    );
    v.expect(
        !r.stdout.contains("PADDOCK-GUEST-READY"),
        &format!("{name}: no guest may boot"),
        r,
    );
}

/// Warns when the paddock binary is older than the sources it is built from.
fn warn_if_stale(bin: &Path) {
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
        return;
    };
    let root = paddock_tests::workspace::root();
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack: Vec<PathBuf> = ["sandbox/src", "vmm/src", "devices/src"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                newest = newest.max(t);
            }
        }
    }
    if newest > built {
        eprintln!(
            "linux_boot: WARNING: {} is older than the sources; rebuild with `cargo build --release -p sandbox`",
            bin.display()
        );
    }
}

#[test]
fn default_guest_boots_and_bad_input_is_refused() {
    warn_if_stale(&paddock_tests::workspace::paddock_bin());
    let report = match scenario().run() {
        Ok(Some(report)) => report,
        Ok(None) => return, // skipped with PADDOCK_SKIP_LINUX_TESTS=1; the reason was printed
        Err(e) => panic!("{e}"),
    };
    let mut v = Verdict::default();
    v.expect(
        report.check("kvm-access").status == 0,
        "kvm-access: the test user must read and write /dev/kvm",
        report.check("kvm-access"),
    );
    expect_boot(&mut v, &report, "bzimage-1cpu-nproc", "1");
    expect_boot(&mut v, &report, "bzimage-2cpu-nproc", "2");
    expect_boot(&mut v, &report, "elf-2cpu-nproc", "2");

    let r = report.check("exit-status-7");
    v.expect(
        r.status == 7,
        "exit-status-7: paddock must exit with CMD's status 7",
        r,
    );
    v.expect(
        guest_lines(r).contains(&"PADDOCK-GUEST-EXIT 7"),
        "exit-status-7: the guest's exit marker must say 7",
        r,
    );
    let r = report.check("poweroff");
    v.expect(r.status == 0, "poweroff: a guest poweroff must exit 0", r);
    let r = report.check("reboot");
    v.expect(
        r.status != 0 && !r.timed_out,
        "reboot: a guest reset must end paddock with a non-zero status",
        r,
    );
    v.expect(
        r.stderr.to_lowercase().contains("reset"),
        "reboot: the message must mention the reset",
        r,
    );
    let r = report.check("sigterm");
    let lines = guest_lines(r);
    v.expect(
        lines.contains(&"paddock-guest: power button pressed: stopping"),
        "sigterm: the guest's acpid must see the power button",
        r,
    );
    v.expect(
        lines.contains(&"PADDOCK-GUEST-EXIT 143")
            && lines.iter().any(|l| l.starts_with("paddock_status=143 ")),
        "sigterm: the command must end with TERM (143) and paddock exit with its status",
        r,
    );
    v.expect(
        !r.stderr.contains("did not power off"),
        "sigterm: the guest must power off by itself, not be stopped after the grace period",
        r,
    );
    let r = report.check("pci-host-bridge");
    let lines = guest_lines(r);
    v.expect(
        r.status == 0 && lines.contains(&"0x060000") && lines.contains(&"1"),
        "pci-host-bridge: the guest must find the host bridge at 00:00.0 and use the MCFG's ECAM",
        r,
    );
    let r = report.check("panic");
    v.expect(
        r.status != 0 && !r.timed_out && r.stderr.to_lowercase().contains("reset"),
        "panic: a kernel panic with panic=1 must end paddock as a reset, non-zero",
        r,
    );
    v.expect(
        r.stdout.contains("Kernel panic"),
        "panic: the guest's panic message must reach the console",
        r,
    );

    expect_refusal(
        &mut v,
        &report,
        "bad-kernel-missing",
        &["/nonexistent/vmlinuz"],
    );
    expect_refusal(&mut v, &report, "bad-not-a-kernel", &["/etc/passwd"]);
    expect_refusal(
        &mut v,
        &report,
        "bad-initramfs-too-big",
        &["initramfs", "big.cpio"],
    );
    expect_refusal(&mut v, &report, "bad-memory-malformed", &["12XB"]);
    expect_refusal(
        &mut v,
        &report,
        "bad-memory-too-large",
        &["memory", "64T", "64 T"],
    );
    expect_refusal(&mut v, &report, "bad-cpus-0", &["cpus", "vcpu"]);
    expect_refusal(&mut v, &report, "bad-cpus-4096", &["4096"]);
    expect_refusal(&mut v, &report, "bad-no-kvm-access", &["/dev/kvm"]);

    if !v.failures().is_empty() {
        panic!(
            "{} expectation(s) failed in {} mode (logs: {}):\n\n{}",
            v.failures().len(),
            report.mode,
            report
                .log_dir()
                .map_or("-".into(), |p| p.display().to_string()),
            v.failures().join("\n")
        );
    }
}

/// The harness itself, without paddock: one L1 boot with a passing check per identity, a failing
/// check and a timed-out one. `cargo test -p paddock-tests --test linux_boot -- --ignored harness`
#[test]
#[ignore = "boots an L1 to check the harness itself; run on demand"]
fn harness_reports_status_output_identity_and_timeouts() {
    let mut s = Scenario::new("harness_selftest");
    s.check_as_root("root", REFUSAL, "id -u; ls -l /dev/kvm")
        .check_as_user("user", REFUSAL, "id -u; id -G; test -w /dev/kvm")
        .check(
            "no-kvm",
            RunAs::UserWithoutKvm,
            REFUSAL,
            "id -u; test -w /dev/kvm && exit 0; echo denied >&2; exit 3",
        )
        .check_as_user(
            "payload",
            REFUSAL,
            "touch \"$HOME/w\" && ls \"$GUEST\" && command -v paddock && test -x \"$(command -v paddock-bench)\"",
        )
        .check_as_user("timeout", Duration::from_secs(3), "sleep 60")
        .check_as_user("overhead", REFUSAL, "true");
    s.paddock_bench_bin(Path::new(env!("CARGO_BIN_EXE_paddock-bench")));
    let report = match s.run() {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => panic!("{e}"),
    };
    let root = report.check("root");
    assert_eq!(
        (root.status, root.stdout.lines().next()),
        (0, Some("0")),
        "{root}"
    );
    let user = report.check("user");
    assert_eq!(
        (user.status, user.stdout.lines().next()),
        (0, Some("1000")),
        "{user}"
    );
    let no_kvm = report.check("no-kvm");
    assert_eq!(no_kvm.status, 3, "{no_kvm}");
    assert_eq!(no_kvm.stderr_last_line(), "denied", "{no_kvm}");
    let payload = report.check("payload");
    assert_eq!(payload.status, 0, "{payload}");
    for f in [
        "vmlinuz",
        "vmlinux",
        "initramfs.cpio.gz",
        "/opt/paddock/bin/paddock",
    ] {
        assert!(payload.stdout.contains(f), "{f} missing: {payload}");
    }
    let t = report.check("timeout");
    assert!(t.timed_out && t.status == 137, "{t}");
    assert!(t.elapsed < Duration::from_secs(10), "{t}");
    let o = report.check("overhead");
    eprintln!(
        "harness overhead of a `true` check: {:.2} s inside, {:.2} s as the host saw it",
        o.elapsed.as_secs_f64(),
        o.observed.unwrap_or_default().as_secs_f64()
    );
}
