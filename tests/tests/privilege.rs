//! Rootless by construction: what `paddock` holds while a guest runs, and its refusal to run as root.
//! A Linux guest is used only as a guest that keeps running for a while (on this host's emulating
//! /dev/kvm it boots slowly; on hardware KVM it may finish quickly, which the test tolerates).

use paddock_tests::workspace;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn status_field(pid: u32, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn refuses_root_without_user() {
    if !is_root() {
        eprintln!("not root: the refusal to run as root cannot be shown by this user; checked where CI runs as root");
        return;
    }
    let out = Command::new(workspace::paddock_bin())
        .args(["run", "--kernel", "/nonexistent", "--", "true"])
        .output()
        .expect("run paddock");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refuses to run as root") && stderr.contains("--user"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

#[test]
fn bad_user_is_refused() {
    let out = Command::new(workspace::paddock_bin())
        .args(["run", "--user", "0:0", "--", "true"])
        .output()
        .expect("run paddock");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--user"), "{stderr}");
}

#[test]
fn runs_unprivileged_with_no_capabilities_and_no_new_privs() {
    let guest = workspace::guest_dir();
    let kernel = guest.join("vmlinux");
    assert!(
        kernel.is_file(),
        "{} missing: run resources/guest/build.sh",
        kernel.display()
    );
    let mut child = Command::new(workspace::paddock_bin())
        .arg("run")
        .args(workspace::paddock_user_args())
        .arg("--kernel")
        .arg(&kernel)
        .args([
            "--cpus",
            "2",
            "--memory",
            "256M",
            "--cmdline",
            "console=ttyS0 earlyprintk=serial,ttyS0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start paddock");
    let pid = child.id();
    // The first console byte means the VM is built and the guest runs.
    let mut first = [0u8; 1];
    let mut stdout = child.stdout.take().expect("stdout");
    let started = Instant::now();
    let got = stdout.read(&mut first).unwrap_or(0);
    let fields: Vec<(&str, Option<String>)> = [
        "Uid:",
        "Gid:",
        "CapEff:",
        "CapPrm:",
        "CapBnd:",
        "CapAmb:",
        "NoNewPrivs:",
    ]
    .into_iter()
    .map(|f| (f, status_field(pid, f)))
    .collect();
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                .map(|s| s.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        got,
        1,
        "no console output within {:?}; stderr: {stderr}",
        started.elapsed()
    );
    let get = |f: &str| {
        fields
            .iter()
            .find(|(k, _)| *k == f)
            .and_then(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{f} unreadable (paddock exited early?) stderr: {stderr}"))
    };
    if is_root() {
        let uid = get("Uid:");
        assert!(
            uid.split_whitespace()
                .all(|u| u == workspace::TEST_UID.to_string()),
            "real, effective, saved and fs uid must all be {}: {uid}",
            workspace::TEST_UID
        );
        assert_eq!(get("CapBnd:"), "0000000000000000", "bounding set emptied");
    }
    for f in ["CapEff:", "CapPrm:", "CapAmb:"] {
        assert_eq!(
            get(f),
            "0000000000000000",
            "{f} must be empty: this configuration needs no capability"
        );
    }
    assert_eq!(get("NoNewPrivs:"), "1");
    for n in ["CPU 0/KVM", "CPU 1/KVM"] {
        assert!(
            threads.iter().any(|t| t == n),
            "thread {n} missing: {threads:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(60));
}
