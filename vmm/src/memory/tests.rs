//! Backends against the real kernel: hugetlb pools are grown for the test and put back after, and
//! hugetlbfs is mounted on a temporary directory. This needs root; as another user the tests that
//! need it say why they skip. As root, a setup that does not work is a failure.

use super::*;
use crate::arch::x86_64::{layout, ram_regions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use vm_memory::Bytes;

const MB2: u64 = 2 << 20;
const POOL_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

/// One test at a time changes or measures the 2M pool.
static POOL_LOCK: Mutex<()> = Mutex::new(());

fn is_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("{test}: skipped: growing the hugepage pool and mounting hugetlbfs need root");
    }
    root
}

fn pool_count(file: &str) -> u64 {
    let path = format!("{POOL_2M}/{file}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    text.trim().parse().unwrap()
}

fn set_nr_hugepages(n: u64) {
    let path = format!("{POOL_2M}/nr_hugepages");
    std::fs::write(&path, n.to_string()).unwrap_or_else(|e| panic!("write {n} to {path}: {e}"));
}

/// `extra` more 2M pages in the host pool while it lives; the pool size is put back on drop.
struct Pool {
    original: u64,
    _lock: MutexGuard<'static, ()>,
}

impl Pool {
    fn grow(extra: u64) -> Self {
        let lock = POOL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let original = pool_count("nr_hugepages");
        let pool = Self {
            original,
            _lock: lock,
        };
        let available = || pool_count("free_hugepages") - pool_count("resv_hugepages");
        let before = available();
        set_nr_hugepages(original + extra);
        let got = available() - before;
        assert_eq!(
            got, extra,
            "asked the kernel for {extra} more 2M hugepages and got {got}: host memory too fragmented"
        );
        pool
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        set_nr_hugepages(self.original);
    }
}

/// hugetlbfs mounted on a fresh temporary directory, unmounted on drop.
struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    fn hugetlbfs(page: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let target = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        let options = std::ffi::CString::new(format!("pagesize={page}")).unwrap();
        // SAFETY: all pointers are NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"none".as_ptr(),
                target.as_ptr(),
                c"hugetlbfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount -t hugetlbfs on {}: {}",
            dir.path().display(),
            std::io::Error::last_os_error()
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn entries(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.path().to_str().unwrap()).unwrap();
        // SAFETY: `target` is a NUL-terminated path that outlives the call.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

fn config(size: u64, hugepages: Option<u64>, dir: Option<&Path>) -> MemoryConfig {
    MemoryConfig {
        hugepages,
        hugetlbfs: dir.map(Path::to_path_buf),
        ..MemoryConfig::anonymous(size)
    }
}

/// Writes a distinct value at the first and last byte of every region and reads them back.
fn write_and_read_back(mem: &GuestMemoryMmap) {
    for (i, region) in mem.iter().enumerate() {
        let first = region.start_addr();
        let last = GuestAddress(first.0 + region.len() - 8);
        let value = 0x5a5a_0000_0000_0000u64 | i as u64;
        mem.write_obj(value, first).unwrap();
        mem.write_obj(!value, last).unwrap();
        assert_eq!(mem.read_obj::<u64>(first).unwrap(), value);
        assert_eq!(mem.read_obj::<u64>(last).unwrap(), !value);
    }
}

#[test]
fn anonymous_spans_the_pci_hole() {
    let size = layout::MMIO32_START + (64 << 20);
    let ranges = ram_regions(size);
    let mem = create(&MemoryConfig::anonymous(size), &ranges).unwrap();
    assert_eq!(mem.num_regions(), 2);
    assert!(mem.iter().all(|r| r.file_offset().is_none()));
    write_and_read_back(&mem);
}

#[test]
fn shared_memfd_is_one_file_seen_by_others() {
    let size = layout::MMIO32_START + (64 << 20);
    let cfg = MemoryConfig {
        shared: true,
        ..MemoryConfig::anonymous(size)
    };
    let mem = create(&cfg, &ram_regions(size)).unwrap();
    write_and_read_back(&mem);
    let high = mem
        .find_region(GuestAddress(layout::HIGH_RAM_START))
        .unwrap();
    let file = high.file_offset().expect("shared RAM is file backed");
    assert_eq!(file.start(), layout::MMIO32_START);
    // What a vhost-user backend would see through the same file.
    mem.write_obj(0xfeed_u64, GuestAddress(layout::HIGH_RAM_START + 4096))
        .unwrap();
    let mut buf = [0u8; 8];
    file.file()
        .read_exact_at(&mut buf, layout::MMIO32_START + 4096)
        .unwrap();
    assert_eq!(u64::from_ne_bytes(buf), 0xfeed);
}

#[test]
fn unknown_page_size_is_refused() {
    let err = create(
        &config(64 << 20, Some(4 << 20), None),
        &ram_regions(64 << 20),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            MemoryError::Preflight(PreflightError::NoSuchPageSize { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().starts_with("this host has no 4M hugepages"));
}

#[test]
fn a_directory_that_is_not_hugetlbfs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = create(
        &config(64 << 20, Some(MB2), Some(dir.path())),
        &ram_regions(64 << 20),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            MemoryError::Hugetlbfs(HugetlbfsError::NotHugetlbfs { .. })
        ),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn memfd_hugetlb_takes_and_returns_pages() {
    if !is_root("memfd_hugetlb_takes_and_returns_pages") {
        return;
    }
    let _pool = Pool::grow(40);
    let free = pool_count("free_hugepages");
    let cfg = MemoryConfig {
        prefault: true,
        ..config(64 << 20, Some(MB2), None)
    };
    let mem = create(&cfg, &ram_regions(64 << 20)).unwrap();
    assert_eq!(pool_count("free_hugepages"), free - 32);
    assert!(mem.iter().all(|r| r.file_offset().is_some()));
    write_and_read_back(&mem);
    drop(mem);
    assert_eq!(pool_count("free_hugepages"), free);
}

#[test]
fn hugetlbfs_file_is_gone_once_mapped() {
    if !is_root("hugetlbfs_file_is_gone_once_mapped") {
        return;
    }
    let _pool = Pool::grow(40);
    let mount = Mount::hugetlbfs("2M");
    let free = pool_count("free_hugepages");
    let resv = pool_count("resv_hugepages");

    let mem = create(
        &config(64 << 20, Some(MB2), Some(mount.path())),
        &ram_regions(64 << 20),
    )
    .unwrap();
    assert_eq!(mount.entries(), Vec::<PathBuf>::new());
    // Not prefaulted: the mapping holds a reservation for every page.
    assert_eq!(pool_count("resv_hugepages"), resv + 32);
    write_and_read_back(&mem);
    drop(mem);
    assert_eq!(pool_count("free_hugepages"), free);
    assert_eq!(pool_count("resv_hugepages"), resv);
}

#[test]
fn hugetlbfs_shared_prefaulted_with_page_size_from_the_mount() {
    if !is_root("hugetlbfs_shared_prefaulted_with_page_size_from_the_mount") {
        return;
    }
    let _pool = Pool::grow(40);
    let mount = Mount::hugetlbfs("2M");
    let free = pool_count("free_hugepages");
    let cfg = MemoryConfig {
        prefault: true,
        shared: true,
        ..config(64 << 20, None, Some(mount.path()))
    };
    let mem = create(&cfg, &ram_regions(64 << 20)).unwrap();
    assert_eq!(mount.entries(), Vec::<PathBuf>::new());
    assert_eq!(pool_count("free_hugepages"), free - 32);
    mem.write_obj(0xcafe_u64, GuestAddress(3 * MB2)).unwrap();
    let region = mem.find_region(GuestAddress(0)).unwrap();
    let mut buf = [0u8; 8];
    let file = region.file_offset().unwrap().file();
    file.read_exact_at(&mut buf, 3 * MB2).unwrap();
    assert_eq!(u64::from_ne_bytes(buf), 0xcafe);
    drop(mem);
    assert_eq!(pool_count("free_hugepages"), free);
}

#[test]
fn kvm_accepts_hugetlbfs_ram_across_the_hole() {
    if !is_root("kvm_accepts_hugetlbfs_ram_across_the_hole") {
        return;
    }
    let size = layout::MMIO32_START + (64 << 20);
    let _pool = Pool::grow(size / MB2);
    let mount = Mount::hugetlbfs("2M");
    let mem = create(
        &config(size, Some(MB2), Some(mount.path())),
        &ram_regions(size),
    )
    .unwrap();
    let kvm = crate::kvm::open().unwrap();
    let vm = crate::kvm::create_vm(&kvm).unwrap();
    register_with_kvm(&vm, &mem).unwrap();
    drop(vm);
}

#[test]
fn too_few_pages_is_a_clear_error_and_leaves_nothing() {
    if !is_root("too_few_pages_is_a_clear_error_and_leaves_nothing") {
        return;
    }
    let _pool = Pool::grow(8);
    let mount = Mount::hugetlbfs("2M");
    let available = pool_count("free_hugepages") - pool_count("resv_hugepages");
    let err = create(
        &config(64 << 20, Some(MB2), Some(mount.path())),
        &ram_regions(64 << 20),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "need 32 free 2M hugepages, host has {available} free: raise {POOL_2M}/nr_hugepages or lower --memory"
        )
    );
    assert_eq!(mount.entries(), Vec::<PathBuf>::new());
}

#[test]
fn a_shortage_after_preflight_fails_at_mmap_not_later() {
    if !is_root("a_shortage_after_preflight_fails_at_mmap_not_later") {
        return;
    }
    let _pool = Pool::grow(8);
    let mount = Mount::hugetlbfs("2M");
    // A host that claims plenty of free pages, as if another process took them after the check.
    let fake = tempfile::tempdir().unwrap();
    let fake_pool = fake.path().join("hugepages-2048kB");
    std::fs::create_dir(&fake_pool).unwrap();
    std::fs::write(fake_pool.join("free_hugepages"), "100000").unwrap();
    std::fs::write(fake_pool.join("resv_hugepages"), "0").unwrap();
    let host = HostPaths {
        pools: fake.path().to_path_buf(),
        own_cgroup: PathBuf::from("/proc/self/cgroup"),
        cgroup2_mount: None,
    };
    let err = create_on(
        &host,
        &config(64 << 20, Some(MB2), Some(mount.path())),
        &ram_regions(64 << 20),
    )
    .unwrap_err();
    assert!(
        matches!(err, MemoryError::Mapping(MapError::Mmap { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("too few free 2M hugepages"),
        "{err}"
    );
    assert_eq!(mount.entries(), Vec::<PathBuf>::new());
}

#[test]
fn mount_page_size_must_match_hugepages() {
    if !is_root("mount_page_size_must_match_hugepages") {
        return;
    }
    let mount = Mount::hugetlbfs("2M");
    let err = create(
        &config(1 << 30, Some(1 << 30), Some(mount.path())),
        &ram_regions(1 << 30),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "--memory hugetlbfs={} holds 2M pages but hugepages=1G: give hugepages=2M or a mount with pagesize=1G",
            mount.path().display()
        )
    );
}
