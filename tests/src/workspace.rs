//! Paths of the workspace's build outputs, as the tests and the benchmark find them.

use std::path::PathBuf;

/// The workspace root (the parent of this crate's directory).
pub fn root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// `target/` of the workspace, honouring CARGO_TARGET_DIR.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// The `paddock` binary built alongside the running test (release if present, else debug), or
/// PADDOCK_BIN when set.
pub fn paddock_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PADDOCK_BIN") {
        return PathBuf::from(p);
    }
    let t = target_dir();
    let release = t.join("release/paddock");
    if release.exists() {
        release
    } else {
        t.join("debug/paddock")
    }
}

/// Where `resources/guest/build.sh` puts the default guest.
pub fn guest_dir() -> PathBuf {
    root().join("target/guest")
}

/// The uid tests give paddock when they run as root.
pub const TEST_UID: u32 = 1000;

/// Arguments that let the tests' `paddock` run: paddock refuses to run as root, so when the tests
/// run as root they switch it to uid 1000 with the group owning /dev/kvm
/// (`resources/setup/kvm-access.sh` makes that group kvm, mode 0660). Empty when not root.
pub fn paddock_user_args() -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Vec::new();
    }
    let gid = match std::fs::metadata("/dev/kvm") {
        Ok(m) if m.gid() != 0 && m.mode() & 0o060 == 0o060 => m.gid(),
        Ok(m) if m.mode() & 0o006 == 0o006 => TEST_UID,
        _ => panic!(
            "tests run as root and /dev/kvm is not group-accessible: run resources/setup/kvm-access.sh"
        ),
    };
    vec!["--user".into(), format!("{TEST_UID}:{gid}")]
}

/// Makes a file the tests wrote readable by the unprivileged paddock.
pub fn share_with_paddock(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}
