//! `paddock run` refuses bad input up front: the cheap checks come before anything is created.

use paddock_tests::workspace;
use std::process::Command;

/// A file that is no kernel is named before guest memory is even made: with a hugetlbfs mount
/// that does not exist (which memory creation would trip over), the error is still the kernel's.
#[test]
fn a_file_that_is_no_kernel_is_refused_before_the_vm_is_created() {
    let out = Command::new(workspace::paddock_bin())
        .arg("run")
        .args(workspace::paddock_user_args())
        .args(["--kernel", "/etc/passwd", "--cpus", "1"])
        .args(["--memory", "size=64M,hugetlbfs=/nonexistent-hugetlbfs"])
        .args(["--", "true"])
        .output()
        .expect("run paddock");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("/etc/passwd") && stderr.contains("neither a bzImage"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hugetlbfs"),
        "kernel checked first: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}
