//! virtio-fs shares served by the standard Rust virtiofsd (crates.io `virtiofsd` 1.14, unchanged)
//! through Paddock's vhost-user-fs frontend, in the KVM test host (or on hardware KVM): files,
//! links, modes and a 256 MiB file with the same SHA-256 in guest and host, a read-only share,
//! two shares at once with every thread under seccomp, the backend dying under the guest, and the
//! `--fs` errors. The check list is `paddock_tests::virtiofs`, shared with `paddock virtiofsd`.
//!
//! Needs the release binaries (`cargo build --release -p sandbox -p paddock-tests`) and virtiofsd
//! (`resources/setup/virtiofsd.sh`, which this test runs when target/virtiofsd lacks it).

use std::process::Command;

use paddock_tests::testhost::Scenario;
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
