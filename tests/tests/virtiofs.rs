//! virtio-fs shares served by the standard Rust virtiofsd (crates.io `virtiofsd` 1.14, unchanged)
//! through Paddock's vhost-user-fs frontend, in the KVM test host (or on hardware KVM): files,
//! links, modes and a 256 MiB file with the same SHA-256 in guest and host, a read-only share,
//! two shares at once with every thread under seccomp, the backend dying under the guest, the
//! `--fs` errors, and guest RAM on 2M hugepages shared with the backend. The check list is `paddock_tests::virtiofs`, shared with `paddock virtiofsd`.
//!
//! Needs the release binaries (`cargo build --release -p sandbox -p paddock-tests`) and virtiofsd
//! (`resources/setup/virtiofsd.sh`, which this test runs when target/virtiofsd lacks it).

use std::process::Command;

use std::time::Duration;

use paddock_tests::testhost::{CheckResult, Scenario};
use paddock_tests::virtiofs::{add_checks, failures, FsBackend};
use paddock_tests::workspace;

/// target/virtiofsd/bin/virtiofsd, installed by resources/setup/virtiofsd.sh when absent.
fn standard_virtiofsd() -> std::path::PathBuf {
    let bin = workspace::target_dir().join("virtiofsd/bin/virtiofsd");
    if !bin.is_file() {
        let script = workspace::root().join("resources/setup/virtiofsd.sh");
        let status = Command::new("bash")
            .arg(&script)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(status.success(), "{} failed ({status})", script.display());
    }
    bin
}

/// Root's part: a 2M hugepage pool; then, as uid 1000, virtiofsd and `paddock --user` with guest
/// RAM in a hugetlb memfd. The backend must map that fd shared for the guest's write to reach the
/// host at all.
const HUGEPAGES_CHECK: &str = r#"echo 300 > /proc/sys/vm/nr_hugepages
KVM_GID=$(stat -c %g /dev/kvm)
H=/tmp/hp-share; rm -rf $H /tmp/hp.sock; mkdir -p $H; echo huge > $H/file; chown -R 1000:1000 $H
/usr/bin/setpriv --reuid=1000 --regid=1000 --clear-groups virtiofsd --socket-path /tmp/hp.sock --shared-dir $H --sandbox none > /tmp/hp.log 2>&1 &
i=0; while [ ! -S /tmp/hp.sock ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
paddock --user 1000:$KVM_GID run --kernel $GUEST/vmlinuz --initramfs $GUEST/initramfs.cpio.gz \
    --memory size=256M,hugepages=2M --fs tag=hp,socket=/tmp/hp.sock \
    -- sh -c "mount -t virtiofs hp /mnt && echo guest_read=\$(cat /mnt/file) && echo from-guest > /mnt/new"
echo "paddock_status=$?"
echo "host_new=$(cat $H/new)"
echo 0 > /proc/sys/vm/nr_hugepages
"#;

fn field<'a>(r: &'a CheckResult, key: &str) -> Option<&'a str> {
    r.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(key).map(str::trim))
}

#[test]
fn shares_served_by_the_standard_virtiofsd() {
    let backend = FsBackend {
        name: "virtiofsd".into(),
        command: "virtiofsd".into(),
        binaries: vec![standard_virtiofsd()],
        bundled: false,
    };
    let mut s = Scenario::new("virtiofs");
    add_checks(&mut s, &backend);
    s.check_as_root("hugepages", Duration::from_secs(300), HUGEPAGES_CHECK);
    let Some(report) = s.run().expect("virtiofs scenario") else {
        return;
    };
    let mut failed = failures(&report, &backend);
    let r = report.check("hugepages");
    if !(field(r, "paddock_status=") == Some("0")
        && field(r, "guest_read=") == Some("huge")
        && field(r, "host_new=") == Some("from-guest"))
    {
        failed.push(format!(
            "guest RAM on 2M hugepages (hugetlb memfd): the share must read and write\n{r}"
        ));
    }
    assert!(
        failed.is_empty(),
        "{} expectation(s) failed:\n\n{}",
        failed.len(),
        failed.join("\n\n")
    );
}

#[test]
fn shares_served_by_the_bundled_backend() {
    let backend = FsBackend {
        name: "bundled".into(),
        command: String::new(),
        binaries: Vec::new(),
        bundled: true,
    };
    let mut s = Scenario::new("virtiofs-bundled");
    add_checks(&mut s, &backend);
    let Some(report) = s.run().expect("virtiofs scenario") else {
        return;
    };
    let failed = failures(&report, &backend);
    assert!(
        failed.is_empty(),
        "{} expectation(s) failed:\n\n{}",
        failed.len(),
        failed.join("\n\n")
    );
}
