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
