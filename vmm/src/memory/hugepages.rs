//! Preflight for hugepage-backed RAM: does the host have pages of that size, enough of them free,
//! and does the pod's hugetlb cgroup let this process take them? Checked before anything is mapped,
//! so a shortage is a one-line error instead of a SIGBUS in the middle of a guest's life.

use super::config::human_size;
use std::path::{Path, PathBuf};
use vm_memory::GuestAddress;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("this host has no {page} hugepages (it has: {available}; see {dir}): use hugepages= with one of those")]
    NoSuchPageSize {
        page: String,
        available: String,
        dir: PathBuf,
    },
    #[error("--memory size {size} is not a multiple of the {page} hugepage size: give a size that is, e.g. {suggest}")]
    SizeNotMultiple {
        size: String,
        page: String,
        suggest: String,
    },
    #[error("guest RAM range {start:#x}+{len:#x} is not aligned to {page} hugepages: give a --memory size that is a multiple of {page}")]
    RangeNotAligned { start: u64, len: u64, page: String },
    #[error("need {need} free {page} hugepages, host has {free} free: raise {nr_file} or lower --memory")]
    TooFewPages {
        need: u64,
        page: String,
        free: u64,
        nr_file: PathBuf,
    },
    #[error("need {need} {page} hugepages, the pod's hugetlb cgroup allows {room} more ({file}: max {max}, current {current}): raise the pod's hugepages-{page}i limit or lower --memory")]
    CgroupLimit {
        need: u64,
        page: String,
        room: u64,
        file: PathBuf,
        max: u64,
        current: u64,
    },
    #[error("cannot read {path}: {source}: hugepage accounting lives there (is sysfs/cgroupfs mounted?)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} holds `{text}`, not a page count: the kernel's hugepage accounting looks unusual"
    )]
    Parse { path: PathBuf, text: String },
}

/// Where the kernel reports hugepage pools and cgroup limits; tests point these at a fake tree.
#[derive(Clone, Debug)]
pub struct HostPaths {
    /// Usually `/sys/kernel/mm/hugepages`, holding one `hugepages-<kB>kB` directory per page size.
    pub pools: PathBuf,
    /// Usually `/proc/self/cgroup`.
    pub own_cgroup: PathBuf,
    /// The cgroup v2 mount, usually `/sys/fs/cgroup`; `None` when there is none.
    pub cgroup2_mount: Option<PathBuf>,
}

impl HostPaths {
    /// The real host, with the cgroup v2 mount found in `/proc/self/mountinfo`.
    pub fn system() -> Self {
        Self {
            pools: PathBuf::from("/sys/kernel/mm/hugepages"),
            own_cgroup: PathBuf::from("/proc/self/cgroup"),
            cgroup2_mount: find_cgroup2_mount(),
        }
    }

    /// The pool directory for one page size, present only when the host supports that size.
    pub fn pool_dir(&self, page: u64) -> PathBuf {
        self.pools.join(format!("hugepages-{}kB", page >> 10))
    }
}

/// Field 5 of a mountinfo line is the mount point; the file system type follows ` - `.
fn find_cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Every hugepage size the host offers, smallest first.
pub fn host_page_sizes(paths: &HostPaths) -> Vec<u64> {
    let mut sizes: Vec<u64> = std::fs::read_dir(&paths.pools)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let kb = name.strip_prefix("hugepages-")?.strip_suffix("kB")?;
            kb.parse::<u64>().ok().map(|kb| kb << 10)
        })
        .collect();
    sizes.sort_unstable();
    sizes
}

fn read_text(path: &Path) -> Result<String, PreflightError> {
    std::fs::read_to_string(path).map_err(|source| PreflightError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_count(path: &Path) -> Result<u64, PreflightError> {
    let text = read_text(path)?;
    text.trim().parse().map_err(|_| PreflightError::Parse {
        path: path.to_path_buf(),
        text: text.trim().to_string(),
    })
}

/// Pages of this size nobody has taken or reserved yet.
pub fn available_pages(paths: &HostPaths, page: u64) -> Result<u64, PreflightError> {
    let dir = paths.pool_dir(page);
    let free = read_count(&dir.join("free_hugepages"))?;
    let reserved = read_count(&dir.join("resv_hugepages"))?;
    Ok(free.saturating_sub(reserved))
}

/// The hugetlb controller names its files by page size: `hugetlb.2MB.max`, `hugetlb.1GB.max`.
fn cgroup_file_prefix(page: u64) -> String {
    match page {
        p if p >= 1 << 30 => format!("hugetlb.{}GB", p >> 30),
        p if p >= 1 << 20 => format!("hugetlb.{}MB", p >> 20),
        p => format!("hugetlb.{}KB", p >> 10),
    }
}

/// This process's cgroup v2 directory, from the `0::PATH` line.
pub fn own_cgroup_dir(paths: &HostPaths) -> Result<Option<PathBuf>, PreflightError> {
    let Some(mount) = &paths.cgroup2_mount else {
        return Ok(None);
    };
    let text = read_text(&paths.own_cgroup)?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|rel| mount.join(rel.trim_start_matches('/'))))
}

/// A hugetlb cgroup limit for one page size, in bytes as the controller counts them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupLimit {
    /// The `hugetlb.<size>.max` file.
    pub file: PathBuf,
    pub max: u64,
    pub current: u64,
}

impl CgroupLimit {
    /// Pages of `page` bytes this cgroup may still take.
    pub fn room(&self, page: u64) -> u64 {
        self.max.saturating_sub(self.current) / page
    }
}

/// This process's hugetlb cgroup limit for `page`; `None` when there is no cgroup v2, no hugetlb
/// controller on its cgroup, or the limit is `max`.
pub fn cgroup_limit(paths: &HostPaths, page: u64) -> Result<Option<CgroupLimit>, PreflightError> {
    let Some(dir) = own_cgroup_dir(paths)? else {
        return Ok(None);
    };
    let prefix = cgroup_file_prefix(page);
    let file = dir.join(format!("{prefix}.max"));
    if !file.exists() || read_text(&file)?.trim() == "max" {
        return Ok(None);
    }
    let max = read_count(&file)?;
    let current = read_count(&dir.join(format!("{prefix}.current")))?;
    Ok(Some(CgroupLimit { file, max, current }))
}

/// Checks the pod's hugetlb limit, if its cgroup has one for this page size.
fn check_cgroup(paths: &HostPaths, page: u64, need: u64) -> Result<(), PreflightError> {
    let Some(limit) = cgroup_limit(paths, page)? else {
        return Ok(());
    };
    let room = limit.room(page);
    if room < need {
        return Err(PreflightError::CgroupLimit {
            need,
            page: human_size(page),
            room,
            file: limit.file,
            max: limit.max,
            current: limit.current,
        });
    }
    Ok(())
}

/// Everything that can be known before mapping `ranges` with `page`-sized hugepages.
pub fn preflight(
    paths: &HostPaths,
    page: u64,
    ranges: &[(GuestAddress, usize)],
) -> Result<(), PreflightError> {
    let sizes = host_page_sizes(paths);
    if !sizes.contains(&page) {
        let available = match sizes.is_empty() {
            true => "none".to_string(),
            false => sizes
                .iter()
                .map(|s| human_size(*s))
                .collect::<Vec<_>>()
                .join(", "),
        };
        return Err(PreflightError::NoSuchPageSize {
            page: human_size(page),
            available,
            dir: paths.pools.clone(),
        });
    }
    let total: u64 = ranges.iter().map(|r| r.1 as u64).sum();
    if !total.is_multiple_of(page) {
        return Err(PreflightError::SizeNotMultiple {
            size: human_size(total),
            page: human_size(page),
            suggest: human_size(total.div_ceil(page) * page),
        });
    }
    if let Some((start, len)) = ranges
        .iter()
        .map(|(a, l)| (a.0, *l as u64))
        .find(|(a, l)| !a.is_multiple_of(page) || !l.is_multiple_of(page))
    {
        return Err(PreflightError::RangeNotAligned {
            start,
            len,
            page: human_size(page),
        });
    }
    let need = total / page;
    let free = available_pages(paths, page)?;
    if free < need {
        return Err(PreflightError::TooFewPages {
            need,
            page: human_size(page),
            free,
            nr_file: paths.pool_dir(page).join("nr_hugepages"),
        });
    }
    check_cgroup(paths, page, need)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB2: u64 = 2 << 20;

    /// A fake sysfs/cgroup tree: a 2M pool with `free`/`resv` pages, and a cgroup with `limit`.
    fn fake_host(
        free: u64,
        resv: u64,
        limit: Option<(&str, u64)>,
    ) -> (tempfile::TempDir, HostPaths) {
        let root = tempfile::tempdir().unwrap();
        let pool = root.path().join("pools/hugepages-2048kB");
        std::fs::create_dir_all(&pool).unwrap();
        std::fs::write(pool.join("free_hugepages"), format!("{free}\n")).unwrap();
        std::fs::write(pool.join("resv_hugepages"), format!("{resv}\n")).unwrap();
        std::fs::write(pool.join("nr_hugepages"), format!("{free}\n")).unwrap();
        let cg = root.path().join("cgroup/kubepods/pod1");
        std::fs::create_dir_all(&cg).unwrap();
        if let Some((max, current)) = limit {
            std::fs::write(cg.join("hugetlb.2MB.max"), format!("{max}\n")).unwrap();
            std::fs::write(cg.join("hugetlb.2MB.current"), format!("{current}\n")).unwrap();
        }
        std::fs::write(root.path().join("self-cgroup"), "0::/kubepods/pod1\n").unwrap();
        let paths = HostPaths {
            pools: root.path().join("pools"),
            own_cgroup: root.path().join("self-cgroup"),
            cgroup2_mount: Some(root.path().join("cgroup")),
        };
        (root, paths)
    }

    fn ram(size: u64) -> Vec<(GuestAddress, usize)> {
        crate::arch::x86_64::ram_regions(size)
    }

    #[test]
    fn enough_free_pages_pass() {
        let (_root, paths) = fake_host(300, 44, None);
        preflight(&paths, MB2, &ram(512 << 20)).unwrap();
    }

    #[test]
    fn reserved_pages_do_not_count_as_free() {
        let (_root, paths) = fake_host(300, 100, None);
        let err = preflight(&paths, MB2, &ram(512 << 20)).unwrap_err();
        assert!(matches!(
            err,
            PreflightError::TooFewPages {
                need: 256,
                free: 200,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(msg.starts_with("need 256 free 2M hugepages, host has 200 free: raise "));
        assert!(msg.contains("hugepages-2048kB/nr_hugepages or lower --memory"));
    }

    #[test]
    fn unknown_page_size_names_the_ones_there_are() {
        let (_root, paths) = fake_host(300, 0, None);
        let err = preflight(&paths, 1 << 30, &ram(1 << 30)).unwrap_err();
        assert!(matches!(err, PreflightError::NoSuchPageSize { .. }));
        assert!(err
            .to_string()
            .starts_with("this host has no 1G hugepages (it has: 2M;"));
    }

    #[test]
    fn size_must_be_a_multiple() {
        let (_root, paths) = fake_host(300, 0, None);
        let err = preflight(&paths, MB2, &ram(63 << 20)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--memory size 63M is not a multiple of the 2M hugepage size: give a size that is, e.g. 64M"
        );
    }

    #[test]
    fn cgroup_limit_is_checked() {
        // 100 pages allowed, 40 in use: 60 left for a VM that needs 64.
        let (_root, paths) = fake_host(1000, 0, Some(("209715200", 40 * MB2)));
        let err = preflight(&paths, MB2, &ram(128 << 20)).unwrap_err();
        assert!(matches!(
            err,
            PreflightError::CgroupLimit {
                need: 64,
                room: 60,
                ..
            }
        ));
        assert!(err
            .to_string()
            .contains("raise the pod's hugepages-2Mi limit"));
        preflight(&paths, MB2, &ram(120 << 20)).unwrap();
    }

    #[test]
    fn unlimited_or_absent_cgroup_passes() {
        let (_root, paths) = fake_host(1000, 0, Some(("max", 0)));
        preflight(&paths, MB2, &ram(1 << 30)).unwrap();
        let (_root, mut paths) = fake_host(1000, 0, None);
        preflight(&paths, MB2, &ram(1 << 30)).unwrap();
        paths.cgroup2_mount = None;
        preflight(&paths, MB2, &ram(1 << 30)).unwrap();
    }

    #[test]
    fn cgroup_file_names() {
        assert_eq!(cgroup_file_prefix(MB2), "hugetlb.2MB");
        assert_eq!(cgroup_file_prefix(1 << 30), "hugetlb.1GB");
        assert_eq!(cgroup_file_prefix(64 << 10), "hugetlb.64KB");
    }

    #[test]
    fn real_host_lists_its_page_sizes() {
        // Every x86_64 Linux with hugetlb has 2M pages; without hugetlb there is no pool directory.
        let paths = HostPaths::system();
        if paths.pools.exists() {
            assert!(host_page_sizes(&paths).contains(&MB2));
        }
    }
}
