//! Images for a scenario: the cached L1 base (built by resources/testhost/build-l1.sh), the default
//! guest (resources/guest/build.sh), and the per-boot payload cpio with paddock and the scenario.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("{0} is missing: it builds {1}; check out the whole repository")]
    BuilderMissing(PathBuf, &'static str),
    #[error("{script} failed ({status}); its output is in {log}:\n{tail}")]
    BuilderFailed {
        script: PathBuf,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{script} succeeded but {missing} does not exist: the script and the harness disagree on its outputs")]
    OutputMissing { script: PathBuf, missing: PathBuf },
    #[error("{0} does not exist: build it first with `cargo build --release -p sandbox -p paddock-tests` (or set PADDOCK_BIN)")]
    BinaryMissing(PathBuf),
    #[error("{0} does not exist: build it first (the scenario ships it to the checks' $FILES)")]
    FileMissing(PathBuf),
    #[error("guest directory {0} lacks {1}: rebuild it with resources/guest/build.sh (or fix PADDOCK_GUEST_DIR)")]
    GuestFileMissing(PathBuf, &'static str),
    #[error("`{cmd}` failed while packing the payload: {why}")]
    Pack { cmd: String, why: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// An exclusive flock on a file, released on drop: builders run once even when tests run at once.
struct BuildLock {
    _held: File,
}

impl BuildLock {
    fn take(path: &Path) -> Result<Self, ImageError> {
        let f = File::create(path).map_err(io_err("cannot create lock file", path))?;
        // SAFETY: flock on a file descriptor we own and keep open for the lock's lifetime; it
        // touches no memory.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(io_err("cannot lock", path)(io::Error::last_os_error()));
        }
        Ok(BuildLock { _held: f })
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a builder script under a lock, its output into `log`.
fn run_builder(
    script: &Path,
    args: &[&Path],
    cwd: &Path,
    log: &Path,
    lock: &Path,
) -> Result<Duration, ImageError> {
    let _lock = BuildLock::take(lock)?;
    let started = Instant::now();
    let out = File::create(log).map_err(io_err("cannot create", log))?;
    let err = out.try_clone().map_err(io_err("cannot reopen", log))?;
    let status = Command::new("bash")
        .arg(script)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(io_err("cannot run bash for", script))?;
    if !status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        return Err(ImageError::BuilderFailed {
            script: script.to_path_buf(),
            status: status.to_string(),
            log: log.to_path_buf(),
            tail: tail(&text, 30),
        });
    }
    Ok(started.elapsed())
}

/// The L1 kernel and its base initramfs.
#[derive(Debug, Clone)]
pub struct L1Base {
    pub vmlinuz: PathBuf,
    pub cpio: PathBuf,
    pub build_time: Duration,
}

/// Builds (or finds cached: the script caches itself) the L1 base under `work/l1`.
pub fn l1_base(repo: &Path, work: &Path) -> Result<L1Base, ImageError> {
    let script = repo.join("resources/testhost/build-l1.sh");
    if !script.is_file() {
        return Err(ImageError::BuilderMissing(
            script,
            "the KVM test host's L1 image",
        ));
    }
    let out = work.join("l1");
    fs::create_dir_all(&out).map_err(io_err("cannot create", &out))?;
    let build_time = run_builder(
        &script,
        &[&out],
        repo,
        &work.join("build-l1.log"),
        &work.join("build-l1.lock"),
    )?;
    let base = L1Base {
        vmlinuz: out.join("vmlinuz"),
        cpio: out.join("l1-base.cpio"),
        build_time,
    };
    for p in [&base.vmlinuz, &base.cpio] {
        if !p.is_file() {
            return Err(ImageError::OutputMissing {
                script,
                missing: p.clone(),
            });
        }
    }
    Ok(base)
}

/// Files of the default guest that every scenario gets.
pub const GUEST_FILES: [&str; 3] = ["vmlinuz", "vmlinux", "initramfs.cpio.gz"];

/// The default guest's directory: PADDOCK_GUEST_DIR as given, or `target/guest` after running
/// resources/guest/build.sh (which caches itself).
pub fn guest(repo: &Path, work: &Path) -> Result<PathBuf, ImageError> {
    let dir = match std::env::var_os("PADDOCK_GUEST_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let script = repo.join("resources/guest/build.sh");
            if !script.is_file() {
                return Err(ImageError::BuilderMissing(script, "the default guest"));
            }
            fs::create_dir_all(work).map_err(io_err("cannot create", work))?;
            run_builder(
                &script,
                &[],
                repo,
                &work.join("build-guest.log"),
                &work.join("build-guest.lock"),
            )?;
            crate::workspace::guest_dir()
        }
    };
    for f in GUEST_FILES {
        if !dir.join(f).is_file() {
            return Err(ImageError::GuestFileMissing(dir, f));
        }
    }
    Ok(dir)
}

/// What goes into a scenario's payload.
#[derive(Debug, Clone)]
pub struct PayloadSpec {
    pub paddock: PathBuf,
    pub paddock_bench: PathBuf,
    pub guest_dir: PathBuf,
    /// (file name under `/scenario/`, contents); `run.sh` among them.
    pub scenario_files: Vec<(String, String)>,
    /// More programs a scenario uses (a vhost-user backend such as virtiofsd), staged next to
    /// `paddock` in `/opt/paddock/bin` under their own file names.
    pub extra_binaries: Vec<PathBuf>,
    /// Shared libraries the binaries need that L1 lacks; staged in `/opt/paddock/lib`, which the
    /// scenario puts on LD_LIBRARY_PATH.
    pub extra_libs: Vec<PathBuf>,
    /// Data the checks read (e.g. a tarball), staged as is (0644) in `/opt/paddock/files`, which
    /// the checks find as `$FILES`.
    pub extra_files: Vec<PathBuf>,
}

/// File names of the shared objects inside a cpio archive (the L1 base).
pub fn libraries_in(cpio: &Path) -> Result<Vec<String>, ImageError> {
    let file = File::open(cpio).map_err(io_err("cannot open", cpio))?;
    let out = Command::new("cpio")
        .args(["-it", "--quiet"])
        .stdin(file)
        .output()
        .map_err(|e| ImageError::Pack {
            cmd: "cpio -it".into(),
            why: e.to_string(),
        })?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(".so"))
        .filter_map(|l| l.rsplit('/').next().map(String::from))
        .collect())
}

/// Libraries `ldd` resolves for `binaries` whose file names are not in `present`.
pub fn missing_libraries(
    binaries: &[&Path],
    present: &[String],
) -> Result<Vec<PathBuf>, ImageError> {
    let mut missing: Vec<PathBuf> = Vec::new();
    for bin in binaries {
        let out = Command::new("ldd")
            .arg(bin)
            .output()
            .map_err(|e| ImageError::Pack {
                cmd: format!("ldd {}", bin.display()),
                why: e.to_string(),
            })?;
        // "\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x...)"; static binaries have none.
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((_, rest)) = line.split_once("=> ") else {
                continue;
            };
            let Some(path) = rest
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))
            else {
                continue;
            };
            let path = PathBuf::from(path);
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.is_some_and(|n| !present.contains(&n)) && !missing.contains(&path) {
                missing.push(path);
            }
        }
    }
    Ok(missing)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err("cannot chmod", path))
}

fn mkdir(path: &Path) -> Result<(), ImageError> {
    fs::create_dir_all(path).map_err(io_err("cannot create", path))?;
    set_mode(path, 0o755)
}

/// Copies `src` to `dst`, stripped of symbols when `strip` works (smaller initramfs for L1).
fn install_binary(src: &Path, dst: &Path) -> Result<(), ImageError> {
    if !src.is_file() {
        return Err(ImageError::BinaryMissing(src.to_path_buf()));
    }
    let stripped = Command::new("strip")
        .arg("--strip-unneeded")
        .arg("-o")
        .arg(dst)
        .arg(src)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        fs::copy(src, dst).map_err(io_err("cannot copy", src))?;
    }
    set_mode(dst, 0o755)
}

/// Lays the payload out under `root` as it will appear in L1's `/` (also direct mode's tree).
pub fn stage(spec: &PayloadSpec, root: &Path) -> Result<(), ImageError> {
    set_mode(root, 0o755)?;
    let bin = root.join("opt/paddock/bin");
    let guest = root.join("opt/paddock/guest");
    let checks = root.join("scenario/checks");
    for d in [
        root.join("opt"),
        root.join("opt/paddock"),
        bin.clone(),
        guest.clone(),
    ] {
        mkdir(&d)?;
    }
    mkdir(&checks)?;
    install_binary(&spec.paddock, &bin.join("paddock"))?;
    install_binary(&spec.paddock_bench, &bin.join("paddock-bench"))?;
    for b in &spec.extra_binaries {
        let name = b
            .file_name()
            .ok_or_else(|| ImageError::BinaryMissing(b.clone()))?;
        install_binary(b, &bin.join(name))?;
    }
    if !spec.extra_libs.is_empty() {
        let lib = root.join("opt/paddock/lib");
        mkdir(&lib)?;
        for l in &spec.extra_libs {
            let dst = lib.join(l.file_name().unwrap_or(l.as_os_str()));
            fs::copy(l, &dst).map_err(io_err("cannot copy", l))?;
            set_mode(&dst, 0o755)?;
        }
    }
    if !spec.extra_files.is_empty() {
        let files = root.join("opt/paddock/files");
        mkdir(&files)?;
        for f in &spec.extra_files {
            let name = f
                .file_name()
                .filter(|_| f.is_file())
                .ok_or_else(|| ImageError::FileMissing(f.clone()))?;
            let dst = files.join(name);
            fs::copy(f, &dst).map_err(io_err("cannot copy", f))?;
            set_mode(&dst, 0o644)?;
        }
    }
    for f in GUEST_FILES {
        let dst = guest.join(f);
        fs::copy(spec.guest_dir.join(f), &dst).map_err(io_err("cannot copy", &dst))?;
        set_mode(&dst, 0o644)?;
    }
    for (name, text) in &spec.scenario_files {
        let dst = root.join("scenario").join(name);
        fs::write(&dst, text).map_err(io_err("cannot write", &dst))?;
        set_mode(&dst, 0o755)?;
    }
    Ok(())
}

/// Packs `root`'s contents (not `root` itself, whose mode would replace L1's `/`) as newc cpio.
pub fn pack(root: &Path, out: &Path) -> Result<(), ImageError> {
    let cmd = "find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet";
    let file = File::create(out).map_err(io_err("cannot create", out))?;
    let res = Command::new("bash")
        .args(["-c", &format!("set -o pipefail; {cmd}")])
        .current_dir(root)
        .stdout(file)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| ImageError::Pack {
            cmd: cmd.into(),
            why: e.to_string(),
        })?;
    if !res.status.success() {
        return Err(ImageError::Pack {
            cmd: cmd.into(),
            why: String::from_utf8_lossy(&res.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Writes `parts` one after the other into `out` (the kernel unpacks concatenated cpio archives).
pub fn concat(parts: &[&Path], out: &Path) -> Result<(), ImageError> {
    let mut dst = File::create(out).map_err(io_err("cannot create", out))?;
    for p in parts {
        let mut src = File::open(p).map_err(io_err("cannot open", p))?;
        io::copy(&mut src, &mut dst).map_err(io_err("cannot append", p))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_packs_without_the_root_entry_and_keeps_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let guest = tmp.path().join("guest");
        fs::create_dir(&guest).unwrap();
        for f in GUEST_FILES {
            fs::write(guest.join(f), f).unwrap();
        }
        let exe = std::env::current_exe().unwrap();
        let spec = PayloadSpec {
            paddock: exe.clone(),
            paddock_bench: exe,
            guest_dir: guest,
            scenario_files: vec![("run.sh".into(), "#!/bin/sh\necho hi\n".into())],
            extra_binaries: vec![PathBuf::from("/bin/true")],
            extra_libs: Vec::new(),
            extra_files: vec![PathBuf::from("/etc/hostname")],
        };
        let root = tmp.path().join("stage");
        fs::create_dir(&root).unwrap();
        stage(&spec, &root).unwrap();
        let out = tmp.path().join("p.cpio");
        pack(&root, &out).unwrap();
        let list = Command::new("sh")
            .arg("-c")
            .arg(format!("cpio -itv --quiet < {}", out.display()))
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(list.contains("opt/paddock/bin/paddock-bench"), "{list}");
        assert!(list.contains("opt/paddock/bin/true"), "{list}");
        assert!(list.contains("opt/paddock/guest/vmlinux"), "{list}");
        assert!(list
            .lines()
            .any(|l| l.starts_with("-rw-r--r--") && l.ends_with("opt/paddock/files/hostname")));
        assert!(list
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("scenario/run.sh")));
        assert!(!list.lines().any(|l| l.ends_with(" .")), "{list}");
        let present = libraries_in(&out).unwrap();
        assert!(present.is_empty(), "{present:?}");
        // This test binary is dynamic (libc at least): every library is missing from the payload.
        let libs = missing_libraries(&[&spec.paddock], &present).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        let libc = vec!["libc.so.6".to_string()];
        let libs = missing_libraries(&[&spec.paddock], &libc).unwrap();
        assert!(!libs.iter().any(|l| l.ends_with("libc.so.6")), "{libs:?}");
        let missing = PayloadSpec {
            paddock: tmp.path().join("nope"),
            ..spec
        };
        assert!(matches!(
            stage(&missing, &root),
            Err(ImageError::BinaryMissing(_))
        ));
    }
}
