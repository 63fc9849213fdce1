//! The hugetlbfs backend's file system side: check the mount, make a per-VM directory with one
//! file, and remove both once the file is mapped (the mapping keeps the pages; nothing is left
//! in the mount even if the process is killed later).

use super::config::human_size;
use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum HugetlbfsError {
    #[error("--memory hugetlbfs={dir}: {source}: give an existing hugetlbfs mount point")]
    Statfs {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("--memory hugetlbfs={dir} is not a hugetlbfs mount: mount one there (mount -t hugetlbfs -o pagesize=2M none {dir}) or leave hugetlbfs= out to use a hugetlb memfd")]
    NotHugetlbfs { dir: PathBuf },
    #[error("--memory hugetlbfs={dir} holds {mounted} pages but hugepages={asked}: give hugepages={mounted} or a mount with pagesize={asked}")]
    PageSizeMismatch {
        dir: PathBuf,
        mounted: String,
        asked: String,
    },
    #[error("cannot create {path}: {source}: the user paddock runs as needs write access to the hugetlbfs mount")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot size {path} to {size} bytes: {source}: the hugetlbfs mount may have a size= limit too small for --memory")]
    Resize {
        path: PathBuf,
        size: u64,
        source: std::io::Error,
    },
    #[error("cannot remove {path} after mapping it: {source}: remove it by hand; its pages are freed when paddock exits")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The page size of the hugetlbfs mounted at `dir` (its statfs block size), after checking that it
/// is one and, when `asked` is given, that the sizes agree.
pub fn mount_page_size(dir: &Path, asked: Option<u64>) -> Result<u64, HugetlbfsError> {
    let statfs_err = |source| HugetlbfsError::Statfs {
        dir: dir.to_path_buf(),
        source,
    };
    let c_dir = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| statfs_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_dir` is a NUL-terminated path and `stat` a writable statfs that outlives the call.
    if unsafe { libc::statfs(c_dir.as_ptr(), &mut stat) } != 0 {
        return Err(statfs_err(std::io::Error::last_os_error()));
    }
    // f_type's width differs between architectures; the magic fits in 32 bits.
    if stat.f_type as u32 != libc::HUGETLBFS_MAGIC as u32 {
        return Err(HugetlbfsError::NotHugetlbfs {
            dir: dir.to_path_buf(),
        });
    }
    let mounted = stat.f_bsize as u64;
    match asked {
        Some(asked) if asked != mounted => Err(HugetlbfsError::PageSizeMismatch {
            dir: dir.to_path_buf(),
            mounted: human_size(mounted),
            asked: human_size(asked),
        }),
        _ => Ok(mounted),
    }
}

/// Whether this process may create its per-VM directory under the mount `dir`.
pub fn check_writable(dir: &Path) -> Result<(), HugetlbfsError> {
    let denied = |source| HugetlbfsError::Create {
        path: dir.to_path_buf(),
        source,
    };
    let c_dir = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| denied(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: `c_dir` is a NUL-terminated path; faccessat only reads it. AT_EACCESS checks with
    // the effective ids, the ones mkdir will use.
    let ret = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c_dir.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if ret != 0 {
        return Err(denied(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Every hugetlbfs mount point this process sees, from `/proc/self/mountinfo`.
pub fn mounts() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "hugetlbfs" {
                return None;
            }
            // Mount points escape spaces as \040; such a path is rare enough to skip.
            left.split_whitespace()
                .nth(4)
                .filter(|p| !p.contains('\\'))
                .map(PathBuf::from)
        })
        .collect()
}

/// `paddock-<pid>-<random>`: unique per VM even when pods share a mount.
fn vm_dir_name() -> String {
    let mut random = [0u8; 8];
    // SAFETY: the kernel writes at most `random.len()` bytes into the buffer it is given.
    let got = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
    let random = if got == random.len() as isize {
        u64::from_ne_bytes(random)
    } else {
        // mkdir fails on a clash rather than sharing, so the time is a safe fallback.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default()
    };
    format!("paddock-{}-{random:016x}", std::process::id())
}

/// The per-VM directory and its file, removed by [`VmDir::remove`] or, on an error path, on drop.
#[derive(Debug)]
pub struct VmDir {
    dir: PathBuf,
    file: PathBuf,
    removed: bool,
}

impl VmDir {
    /// Creates `mount/paddock-<pid>-<random>/guest-ram` sized to `size` bytes, open read-write.
    pub fn create(mount: &Path, size: u64) -> Result<(Self, File), HugetlbfsError> {
        let dir = mount.join(vm_dir_name());
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|source| HugetlbfsError::Create {
                path: dir.clone(),
                source,
            })?;
        let vm_dir = Self {
            file: dir.join("guest-ram"),
            dir,
            removed: false,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&vm_dir.file)
            .map_err(|source| HugetlbfsError::Create {
                path: vm_dir.file.clone(),
                source,
            })?;
        file.set_len(size)
            .map_err(|source| HugetlbfsError::Resize {
                path: vm_dir.file.clone(),
                size,
                source,
            })?;
        Ok((vm_dir, file))
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Unlinks the file, then the directory.
    pub fn remove(mut self) -> Result<(), HugetlbfsError> {
        self.removed = true;
        remove_ignoring_absent(&self.file, |p| std::fs::remove_file(p))?;
        remove_ignoring_absent(&self.dir, |p| std::fs::remove_dir(p))
    }
}

fn remove_ignoring_absent(
    path: &Path,
    remove: fn(&Path) -> std::io::Result<()>,
) -> Result<(), HugetlbfsError> {
    match remove(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(HugetlbfsError::Remove {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

impl Drop for VmDir {
    fn drop(&mut self) {
        if !self.removed {
            // Error path: best effort, the error that got us here is the one worth reporting.
            let _ = std::fs::remove_file(&self.file);
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_not_hugetlbfs() {
        let dir = tempfile::tempdir().unwrap();
        let err = mount_page_size(dir.path(), Some(2 << 20)).unwrap_err();
        assert!(matches!(err, HugetlbfsError::NotHugetlbfs { .. }), "{err}");
        assert!(err.to_string().contains("is not a hugetlbfs mount"));
    }

    #[test]
    fn a_missing_directory_is_named() {
        let err = mount_page_size(Path::new("/nonexistent/hugepages"), None).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("--memory hugetlbfs=/nonexistent/hugepages: No such file"));
    }

    #[test]
    fn vm_dir_is_unique_and_removed() {
        let mount = tempfile::tempdir().unwrap();
        let (a, _fa) = VmDir::create(mount.path(), 4096).unwrap();
        let (b, fb) = VmDir::create(mount.path(), 4096).unwrap();
        assert_ne!(a.path(), b.path());
        assert_eq!(fb.metadata().unwrap().len(), 4096);
        a.remove().unwrap();
        drop(b); // the error path
        assert_eq!(std::fs::read_dir(mount.path()).unwrap().count(), 0);
    }
}
