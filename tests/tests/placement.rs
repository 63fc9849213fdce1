//! CPU placement with a real Linux guest in the KVM test host (2 CPUs) or on hardware KVM, paddock
//! running as uid 1000 (`--user` from root, or started as that user):
//! - `affinity=0@[1],1@[0],emulator=1`: each `CPU N/KVM` thread's Cpus_allowed_list is what was
//!   asked, net queue worker i sits on vCPU i's CPU, every other thread on the emulator CPU;
//! - `realtime=fifo:10` started as root with `--user`: the vCPU thread runs SCHED_FIFO 10 and
//!   CapEff/CapPrm/CapBnd hold SYS_NICE only; started as uid 1000 with RLIMIT_RTPRIO 10 and no
//!   capability it works too; without either it is refused with one line naming the fixes;
//! - `paddock check` says which way SYS_NICE arrives, and fails the realtime need without it;
//! - refused before the VM starts (exit 2, one line): affinity outside the cgroup cpuset or the
//!   inherited mask, affinity=auto with more vCPUs than CPUs, a hugepage size the host lacks.
//!
//! Needs the release binaries first: `cargo build --release -p sandbox -p paddock-tests`.

use std::time::Duration;

use paddock_tests::testhost::{CheckResult, Scenario, Verdict};

const BOOT: Duration = Duration::from_secs(240);
const QUICK: Duration = Duration::from_secs(60);

/// Root's part: a multi-queue tap for uid 1000, helpers to wait for the guest and list threads.
/// `thread NAME cpus=LIST policy=P rtprio=N` per thread: policy and rt_priority are fields 41 and
/// 40 of /proc/PID/task/TID/stat (counted after the `(comm)` field, which may hold spaces).
const PREAMBLE: &str = r#"if ! /bin/ip link show tap0 > /dev/null 2>&1; then
    /bin/ip tuntap add dev tap0 mode tap multi_queue user 1000 || exit 10
    /bin/ip link set tap0 up
fi
KVM_GID=$(stat -c %g /dev/kvm)
PADDOCK="paddock --user 1000:$KVM_GID"
# util-linux setpriv by its path: busybox's own applet cannot change uids.
SETPRIV=""
for d in $(echo "$PATH" | tr ':' ' '); do
    [ -x "$d/setpriv" ] && "$d/setpriv" --reuid=0 --regid=0 --clear-groups true 2>/dev/null && { SETPRIV="$d/setpriv"; break; }
done
[ -n "$SETPRIV" ] || { echo "no util-linux setpriv"; exit 15; }
AS_USER="$SETPRIV --reuid=1000 --regid=$KVM_GID --clear-groups"
GUEST_ARGS="--kernel $GUEST/vmlinuz --initramfs $GUEST/initramfs.cpio.gz"
# HOME is shared by the checks of a scenario: no check may see another's guest output.
rm -f "$HOME/out"
wait_for() { i=0; while [ $i -lt 900 ]; do grep -q "$1" "$2" 2>/dev/null && return 0; sleep 0.1; i=$((i+1)); done; return 1; }
threads() {
    for t in /proc/$1/task/*; do
        rest=$(sed 's/.*) //' $t/stat)
        echo "thread $(tr ' ' _ < $t/comm) cpus=$(awk '/^Cpus_allowed_list:/ { print $2 }' $t/status) policy=$(echo $rest | awk '{ print $39 }') rtprio=$(echo $rest | awk '{ print $38 }')"
    done
}
caps() { grep -E '^(Uid|CapEff|CapPrm|CapBnd|CapAmb):' /proc/$1/status | sed -e 's/:/=/' -e 's/\t/ /g'; }
"#;

/// The guest stays up a few seconds after it says so, while the host looks at paddock's threads.
const GUEST_UP: &str = r#"-- sh -c "echo guest-up; sleep 4""#;

fn script(body: &str) -> String {
    format!("{PREAMBLE}{body}")
}

fn field<'a>(r: &'a CheckResult, key: &str) -> Option<&'a str> {
    r.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(key).map(str::trim))
}

/// `thread` lines as (name, cpus, policy, rtprio).
fn threads(r: &CheckResult) -> Vec<(String, String, String, String)> {
    r.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("thread "))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?.to_string();
            let mut value = |key: &str| {
                words
                    .next()
                    .and_then(|w| w.strip_prefix(key))
                    .map(str::to_string)
            };
            Some((name, value("cpus=")?, value("policy=")?, value("rtprio=")?))
        })
        .collect()
}

#[test]
fn vcpus_workers_and_emulator_threads_run_where_asked() {
    let mut s = Scenario::new("placement");
    s.check_as_root(
        "pinned",
        BOOT,
        &script(&format!(
            r#"$PADDOCK run $GUEST_ARGS --memory 256M --cpus boot=2,affinity=0@[1],1@[0],emulator=1 --net tap=tap0 {GUEST_UP} > "$HOME/out" 2>&1 &
wait_for guest-up "$HOME/out" || {{ cat "$HOME/out"; exit 1; }}
threads $(pidof paddock)
wait %1; echo "status=$?""#
        )),
    )
    .check_as_root(
        "realtime-root-with-user",
        BOOT,
        &script(&format!(
            r#"$PADDOCK run $GUEST_ARGS --memory 256M --cpus boot=1,affinity=0@[1],emulator=0,realtime=fifo:10 {GUEST_UP} > "$HOME/out" 2>&1 &
wait_for guest-up "$HOME/out" || {{ cat "$HOME/out"; exit 1; }}
P=$(pidof paddock); threads $P; caps $P
wait %1; echo "status=$?""#
        )),
    )
    .check_as_root(
        "realtime-rlimit",
        BOOT,
        &script(&format!(
            r#"ulimit -r 10 || exit 11
$AS_USER paddock run $GUEST_ARGS --memory 256M --cpus boot=1,affinity=0@[1],realtime=fifo:10 {GUEST_UP} > "$HOME/out" 2>&1 &
wait_for guest-up "$HOME/out" || {{ cat "$HOME/out"; exit 1; }}
P=$(pidof paddock); threads $P; caps $P
wait %1; echo "status=$?""#
        )),
    )
    .check_as_user(
        "realtime-without-sys-nice",
        QUICK,
        "paddock run --kernel $GUEST/vmlinuz --initramfs $GUEST/initramfs.cpio.gz --memory 256M --cpus boot=1,realtime=fifo:10 -- true",
    )
    .check_as_root(
        "check-sys-nice",
        QUICK,
        &script(
            r#"$PADDOCK check $GUEST_ARGS --memory 256M --cpus boot=2,affinity=0@[1],1@[0],realtime=fifo:10 --net tap=tap0
echo "root_status=$?"
$AS_USER paddock check $GUEST_ARGS --memory 256M --cpus boot=2,realtime=fifo:10 > "$HOME/user-check"
echo "user_status=$?"
sed 's/^/user: /' "$HOME/user-check""#,
        ),
    )
    .check_as_root(
        "auto-too-few",
        QUICK,
        &script("$PADDOCK run $GUEST_ARGS --memory 256M --cpus boot=3,affinity=auto -- true"),
    )
    .check_as_root(
        "page-size-missing",
        QUICK,
        &script("$PADDOCK run $GUEST_ARGS --cpus 1 --memory size=1G,hugepages=1G -- true"),
    )
    .check_as_root(
        "outside-mask",
        QUICK,
        &script("taskset -c 0 $PADDOCK run $GUEST_ARGS --memory 256M --cpus boot=2,affinity=0@[0],1@[1] -- true"),
    )
    .check_as_root(
        "outside-cpuset",
        QUICK,
        &script(
            r#"echo +cpuset > /sys/fs/cgroup/cgroup.subtree_control || exit 12
mkdir -p /sys/fs/cgroup/narrow && echo 0 > /sys/fs/cgroup/narrow/cpuset.cpus || exit 13
echo $$ > /sys/fs/cgroup/narrow/cgroup.procs || exit 14
$PADDOCK run $GUEST_ARGS --memory 256M --cpus boot=1,affinity=0@[1] -- true
status=$?
echo $$ > /sys/fs/cgroup/cgroup.procs; rmdir /sys/fs/cgroup/narrow
exit $status"#,
        ),
    );
    let Some(report) = s.run().expect("placement scenario") else {
        return;
    };
    let mut v = Verdict::default();

    let r = report.check("pinned");
    let t = threads(r);
    v.expect(
        r.status == 0 && field(r, "status=") == Some("0"),
        "the pinned guest must run and power off",
        r,
    );
    let cpus_of = |name: &str| {
        t.iter()
            .find(|(n, ..)| n == name)
            .map(|(_, c, ..)| c.as_str())
    };
    for (name, cpu) in [
        ("CPU_0/KVM", "1"),
        ("CPU_1/KVM", "0"),
        ("net0-qp0", "1"),
        ("net0-qp1", "0"),
    ] {
        v.expect(
            cpus_of(name) == Some(cpu),
            &format!("{name} must be allowed on CPU {cpu} only"),
            r,
        );
    }
    let emulator: Vec<_> = t
        .iter()
        .filter(|(n, ..)| !n.starts_with("CPU_") && !n.starts_with("net0-qp"))
        .collect();
    v.expect(
        emulator.len() >= 2 && emulator.iter().all(|(_, c, p, _)| c == "1" && p == "0"),
        "every other thread (main, spawner, serial) must be on the emulator CPU 1, SCHED_OTHER",
        r,
    );

    for name in ["realtime-root-with-user", "realtime-rlimit"] {
        let r = report.check(name);
        let t = threads(r);
        v.expect(
            r.status == 0 && field(r, "status=") == Some("0"),
            &format!("{name}: the realtime guest must run and power off"),
            r,
        );
        v.expect(
            t.iter()
                .any(|(n, c, p, prio)| n == "CPU_0/KVM" && c == "1" && p == "1" && prio == "10"),
            &format!("{name}: CPU 0/KVM must run SCHED_FIFO (policy 1) priority 10 on CPU 1"),
            r,
        );
        v.expect(
            t.iter()
                .filter(|(n, ..)| n != "CPU_0/KVM")
                .all(|(_, _, p, _)| p == "0"),
            &format!("{name}: only the vCPU is realtime"),
            r,
        );
        v.expect(
            field(r, "Uid=").is_some_and(|u| u.split_whitespace().all(|x| x == "1000")),
            &format!("{name}: paddock must run as uid 1000"),
            r,
        );
    }
    let r = report.check("realtime-root-with-user");
    v.expect(
        t_all_on(r, "0"),
        "realtime-root-with-user: the threads other than the vCPU must be on emulator CPU 0",
        r,
    );
    for set in ["CapEff=", "CapPrm=", "CapBnd="] {
        v.expect(
            field(r, set) == Some("0000000000800000"),
            &format!("started as root with --user: {set} must hold SYS_NICE (bit 23) only"),
            r,
        );
    }
    v.expect(
        field(r, "CapAmb=") == Some("0000000000000000"),
        "no ambient capabilities",
        r,
    );
    let r = report.check("realtime-rlimit");
    for set in ["CapEff=", "CapPrm="] {
        v.expect(
            field(r, set) == Some("0000000000000000"),
            &format!("with RLIMIT_RTPRIO: {set} must be empty"),
            r,
        );
    }

    let r = report.check("realtime-without-sys-nice");
    v.expect(
        r.status == 2
            && r.stderr.trim().lines().count() == 1
            && r.stderr
                .contains("needs CAP_SYS_NICE or an RLIMIT_RTPRIO of at least 10")
            && r.stderr.contains("--user"),
        "realtime without SYS_NICE: exit 2, one line naming SYS_NICE, the rlimit and --user",
        r,
    );

    let r = report.check("check-sys-nice");
    let has = |line: &str| r.stdout.lines().any(|l| l.starts_with(line));
    v.expect(
        field(r, "root_status=") == Some("0")
            && has("ok   realtime: SCHED_FIFO 10 permitted by CAP_SYS_NICE")
            && has("--   SYS_NICE: started as root with --user")
            && has("ok   placement: vCPU 0 -> 1 (SCHED_FIFO 10), vCPU 1 -> 0 (SCHED_FIFO 10)")
            && has("ok   net tap=tap0: 2 queue(s) of tap tap0; owner uid 1000, multi_queue on")
            && has("ok   /dev/kvm: read-write"),
        "paddock check as root with --user: every need met, SYS_NICE kept across --user",
        r,
    );
    v.expect(
        field(r, "user_status=") == Some("1")
            && has("user: FAIL realtime: --cpus realtime=fifo:10 needs CAP_SYS_NICE")
            && has("user: --   SYS_NICE: not available"),
        "paddock check as uid 1000: the realtime need fails, exit 1",
        r,
    );

    for (name, needle) in [
        ("auto-too-few", "lower boot= to 2"),
        ("page-size-missing", "1G hugepages"),
        ("outside-mask", "CPU 1 for vCPU 1 is outside the CPUs paddock may use: 0 (affinity mask 0"),
        ("outside-cpuset", "CPU 1 for vCPU 0 is outside the CPUs paddock may use: 0 (affinity mask 0, cgroup cpuset 0 in /sys/fs/cgroup/narrow/cpuset.cpus.effective)"),
    ] {
        v.refused(&report, name, needle);
    }
    v.assert_passed();
}

/// Every thread but the vCPU is allowed on `cpu` only.
fn t_all_on(r: &CheckResult, cpu: &str) -> bool {
    let t = threads(r);
    t.iter().any(|(n, ..)| n == "CPU_0/KVM")
        && t.iter()
            .filter(|(n, ..)| n != "CPU_0/KVM")
            .all(|(_, c, ..)| c == cpu)
}
