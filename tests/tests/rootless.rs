//! Rootless by construction, with a real Linux guest in the KVM test host (or on hardware KVM):
//! started as root, `paddock --user UID:GID` runs as that user with no capability and
//! no_new_privs, every thread under seccomp; guest RAM on hugetlbfs takes exactly size/2M pages
//! while the guest runs and leaves nothing on the mount, even after `kill -9`; bad memory
//! settings are refused with exit status 2.
//!
//! Needs the release binaries first: `cargo build --release -p sandbox -p paddock-tests`.

use std::time::Duration;

use paddock_tests::testhost::{CheckResult, Scenario, Verdict};

const BOOT: Duration = Duration::from_secs(180);

/// Root's part of every check: a hugepage pool of 300 2M pages and the group owning /dev/kvm.
const PREAMBLE: &str = r#"echo 300 > /proc/sys/vm/nr_hugepages
KVM_GID=$(stat -c %g /dev/kvm)
PADDOCK="paddock --user 1000:$KVM_GID"
GUEST_ARGS="--kernel $GUEST/vmlinuz --initramfs $GUEST/initramfs.cpio.gz --cpus 2"
free_pages() { awk '/HugePages_Free/ { print $2 }' /proc/meminfo; }
wait_for() { i=0; while [ $i -lt 600 ]; do grep -q "$1" "$2" 2>/dev/null && return 0; sleep 0.1; i=$((i+1)); done; return 1; }
"#;

fn script(body: &str) -> String {
    format!("{PREAMBLE}{body}")
}

fn field<'a>(r: &'a CheckResult, key: &str) -> Option<&'a str> {
    r.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(key).map(str::trim))
}

#[test]
fn unprivileged_guest_on_hugetlbfs_leaves_nothing_behind() {
    let mut s = Scenario::new("rootless");
    s.check_as_root(
        "hugetlbfs-guest",
        BOOT,
        &script(
            r#"echo "free_before=$(free_pages)"
$PADDOCK run $GUEST_ARGS --memory size=256M,hugetlbfs=/dev/hugepages,hugepages=2M,prefault=on -- sh -c "echo guest-up; sleep 5" > "$HOME/out" 2>&1 &
wait_for guest-up "$HOME/out" || { cat "$HOME/out"; exit 1; }
echo "free_during=$(free_pages)"
echo "mount_entries_during=$(ls -A /dev/hugepages | wc -l)"
P=$(pidof paddock)
grep -E '^(Uid|Gid|CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs):' /proc/$P/status | sed -e 's/:/=/' -e 's/\t/ /g'
for t in /proc/$P/task/*; do echo "thread $(cat $t/comm | tr ' ' _) seccomp=$(awk '/^Seccomp:/ { print $2 }' $t/status)"; done
wait %1; echo "status=$?"
echo "free_after=$(free_pages)"
cat "$HOME/out""#,
        ),
    )
    .check_as_root(
        "kill-9",
        BOOT,
        &script(
            r#"$PADDOCK run $GUEST_ARGS --memory size=256M,hugetlbfs=/dev/hugepages,hugepages=2M -- sh -c "echo guest-up; sleep 60" > "$HOME/out" 2>&1 &
wait_for guest-up "$HOME/out" || { cat "$HOME/out"; exit 1; }
echo "free_during=$(free_pages)"
kill -9 $(pidof paddock); wait
echo "mount_entries_after=$(ls -A /dev/hugepages | wc -l)"
echo "free_after=$(free_pages)""#,
        ),
    )
    .check_as_root(
        "too-few-hugepages",
        BOOT,
        &script(r#"$PADDOCK run $GUEST_ARGS --memory size=1G,hugetlbfs=/dev/hugepages,hugepages=2M -- true"#),
    )
    .check_as_root(
        "not-hugetlbfs",
        BOOT,
        &script(r#"$PADDOCK run $GUEST_ARGS --memory size=256M,hugetlbfs=/tmp,hugepages=2M -- true"#),
    )
    .check_as_root(
        "root-without-user",
        BOOT,
        &script("paddock run $GUEST_ARGS --memory 256M -- true"),
    );
    let Some(report) = s.run().expect("rootless scenario") else {
        return;
    };
    let mut v = Verdict::default();

    let r = report.check("hugetlbfs-guest");
    let num = |k: &str| field(r, k).and_then(|v| v.parse::<i64>().ok());
    v.expect(
        r.status == 0 && field(r, "status=") == Some("0"),
        "the guest must run and power off",
        r,
    );
    v.expect(
        num("free_before=")
            .zip(num("free_during="))
            .map(|(b, d)| b - d)
            == Some(128),
        "a 256M guest must take 128 2M pages while it runs",
        r,
    );
    v.expect(
        num("free_after=") == num("free_before="),
        "the pages must come back after exit",
        r,
    );
    v.expect(
        field(r, "mount_entries_during=") == Some("0"),
        "nothing may stay on the hugetlbfs mount while the guest runs",
        r,
    );
    v.expect(
        field(r, "Uid=").is_some_and(|u| u.split_whitespace().all(|x| x == "1000")),
        "paddock must run as uid 1000 (real, effective, saved, fs)",
        r,
    );
    for set in ["CapEff=", "CapPrm=", "CapBnd=", "CapAmb="] {
        v.expect(
            field(r, set) == Some("0000000000000000"),
            &format!("{set} must be empty"),
            r,
        );
    }
    v.expect(
        field(r, "NoNewPrivs=") == Some("1"),
        "no_new_privs must be set",
        r,
    );
    let threads: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("thread "))
        .collect();
    v.expect(
        threads.iter().any(|t| t.contains("CPU_1/KVM"))
            && threads.iter().all(|t| t.ends_with("seccomp=2")),
        "every thread (CPU 0/KVM and CPU 1/KVM among them) must run under a seccomp filter",
        r,
    );

    let r = report.check("kill-9");
    v.expect(r.status == 0, "the kill -9 check must run", r);
    v.expect(
        field(r, "mount_entries_after=") == Some("0"),
        "kill -9 must leave nothing on the hugetlbfs mount",
        r,
    );
    v.expect(
        field(r, "free_after=") == Some("300"),
        "kill -9 must give every hugepage back",
        r,
    );

    for (name, needle) in [
        ("too-few-hugepages", "free 2M hugepages"),
        ("not-hugetlbfs", "/tmp"),
        ("root-without-user", "--user"),
    ] {
        v.refused(&report, name, needle);
    }
    v.assert_passed();
}
