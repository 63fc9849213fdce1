//! `paddock-bench memory`: how long Paddock's own `vmm::memory` code takes to create and prefault
//! guest RAM of each size with 4K, 2M and (where the host has them) 1G pages, and the time to the
//! default guest's ready marker with each backing, in one run.
//!
//! Hugepages: run as root, the benchmark raises `nr_hugepages` of a size to what it needs and puts
//! the old value back when done (also on an error); otherwise it uses the free pages there are and
//! skips what does not fit, saying so.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use vmm::memory::config::human_size;
use vmm::memory::hugepages::{self, HostPaths};
use vmm::memory::{self as guest_memory, hugetlbfs, parse_size, MemoryConfig};

use super::boot::READY_MARKER;
use super::probe::{self, OutputWatch};
use super::stats::Summary;
use super::vmms::BootFiles;

const KIB4: u64 = 4 << 10;
const MIB2: u64 = 2 << 20;
const GIB1: u64 = 1 << 30;

#[derive(Args, Debug)]
pub struct MemoryArgs {
    /// Guest RAM sizes to create (K, M, G suffixes).
    #[arg(long, value_delimiter = ',', default_value = "1G,4G,8G")]
    sizes: Vec<String>,
    /// Page sizes: 4K (anonymous memory), 2M and 1G (hugetlb memfd); sizes the host lacks are
    /// skipped.
    #[arg(long, value_delimiter = ',', default_value = "4K,2M,1G")]
    pages: Vec<String>,
    /// Creations per size and page size.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Creations before those, not counted: the first touch of memory the host (or, in a VM, the
    /// outer hypervisor) has not handed out before costs far more than the steady state.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Skip the boot measurement (e.g. where /dev/kvm cannot boot Linux, such as kvm_pvm).
    #[arg(long)]
    no_boot: bool,
    /// Boots per backing.
    #[arg(long, default_value_t = 3)]
    boot_runs: usize,
    /// Guest RAM of the booted guest, MiB (1G pages need a multiple of 1024).
    #[arg(long, default_value_t = 256)]
    boot_memory_mib: u64,
    #[command(flatten)]
    boot: BootFiles,
    /// Seconds to wait for each ready marker.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One (size, page size) creation series.
#[derive(Debug, Serialize)]
pub struct CreateResult {
    pub size: String,
    pub size_bytes: u64,
    pub page: String,
    /// What `vmm::memory` made: `anonymous` or `memfd hugetlb`.
    pub backend: &'static str,
    /// Create + prefault, ms.
    pub create_ms: Option<Summary>,
    pub samples_ms: Vec<f64>,
    /// The uncounted warm-up creations, ms.
    pub warmup_ms: Vec<f64>,
    /// Why nothing was measured.
    pub skipped: Option<String>,
}

/// One backing's boots.
#[derive(Debug, Serialize)]
pub struct BootResult {
    pub backing: String,
    /// The `--memory` value given to paddock.
    pub memory: String,
    /// Process start to the default guest's ready marker, ms.
    pub ready_ms: Option<Summary>,
    pub samples_ms: Vec<f64>,
    pub failures: Vec<String>,
    pub skipped: Option<String>,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A raised `nr_hugepages`, put back on drop.
struct PoolRaise {
    file: PathBuf,
    before: u64,
}

impl Drop for PoolRaise {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(&self.file, format!("{}\n", self.before)) {
            eprintln!(
                "paddock-bench: could not restore {} to {}: {e}; write it by hand",
                self.file.display(),
                self.before
            );
        }
    }
}

fn read_count(path: &Path) -> Result<u64> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{} holds `{}`", path.display(), text.trim()))
}

/// Makes `need` pages of `page` bytes free: nothing to do when they are, raise the pool as root,
/// else an error that says what is missing. The guard puts the pool back.
fn ensure_free_pages(host: &HostPaths, page: u64, need: u64) -> Result<Option<PoolRaise>> {
    let free = hugepages::available_pages(host, page)?;
    if free >= need {
        return Ok(None);
    }
    let file = host.pool_dir(page).join("nr_hugepages");
    if !is_root() {
        bail!(
            "{need} free {} pages needed, {free} free: run as root (the benchmark then reserves them) or raise {}",
            human_size(page),
            file.display()
        );
    }
    let before = read_count(&file)?;
    let raise = PoolRaise {
        file: file.clone(),
        before,
    };
    let want = before + (need - free);
    std::fs::write(&file, format!("{want}\n"))
        .with_context(|| format!("writing {want} to {}", file.display()))?;
    let free = hugepages::available_pages(host, page)?;
    if free < need {
        // `raise` puts the pool back as it goes.
        bail!(
            "asked the kernel for {want} {} pages in {}, it found memory for {} free (fragmented or too little RAM)",
            human_size(page),
            file.display(),
            free
        );
    }
    Ok(Some(raise))
}

/// Create + prefault once, through Paddock's own code; the RAM is unmapped right after.
fn create_once(size: u64, page: u64) -> Result<f64> {
    let config = MemoryConfig {
        hugepages: (page != KIB4).then_some(page),
        prefault: true,
        ..MemoryConfig::anonymous(size)
    };
    let ranges = vmm::arch::x86_64::ram_regions(size);
    let start = Instant::now();
    let mem = guest_memory::create(&config, &ranges)?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    drop(mem);
    Ok(ms)
}

fn measure_create(
    host: &HostPaths,
    sizes: &[u64],
    pages: &[u64],
    runs: usize,
    warmup: usize,
) -> Vec<CreateResult> {
    let host_sizes = hugepages::host_page_sizes(host);
    let mut results = Vec::new();
    for &page in pages {
        let backend = if page == KIB4 {
            "anonymous"
        } else {
            "memfd hugetlb"
        };
        let result =
            |size: u64, skipped: Option<String>, samples: Vec<f64>, warmup_ms| CreateResult {
                size: human_size(size),
                size_bytes: size,
                page: human_size(page),
                backend,
                create_ms: Summary::of(&samples),
                samples_ms: samples,
                warmup_ms,
                skipped,
            };
        if page != KIB4 && !host_sizes.contains(&page) {
            for &size in sizes {
                results.push(result(
                    size,
                    Some(format!("this host has no {} pages", human_size(page))),
                    Vec::new(),
                    Vec::new(),
                ));
            }
            continue;
        }
        // One raise for the largest size; every size of this page size runs inside it.
        let largest = sizes
            .iter()
            .copied()
            .filter(|s| s.is_multiple_of(page))
            .max()
            .unwrap_or(0);
        let pool = match page {
            KIB4 => Ok(None),
            _ => ensure_free_pages(host, page, largest.div_ceil(page)),
        };
        for &size in sizes {
            if !size.is_multiple_of(page) {
                let why = format!("{} is not a multiple of the page size", human_size(size));
                results.push(result(size, Some(why), Vec::new(), Vec::new()));
                continue;
            }
            if let Err(e) = &pool {
                results.push(result(size, Some(format!("{e:#}")), Vec::new(), Vec::new()));
                continue;
            }
            let (mut samples, mut warm) = (Vec::new(), Vec::new());
            let mut skipped = None;
            for run in 1..=warmup + runs {
                match create_once(size, page) {
                    Ok(ms) => {
                        let what = match run > warmup {
                            true => format!("run {}/{runs}", run - warmup),
                            false => "warm-up".to_string(),
                        };
                        eprintln!(
                            "paddock-bench: {what} {} with {} pages: {ms:.1} ms",
                            human_size(size),
                            human_size(page)
                        );
                        match run > warmup {
                            true => samples.push(ms),
                            false => warm.push(ms),
                        }
                    }
                    Err(e) => {
                        skipped = Some(format!("run {run}: {e:#}"));
                        break;
                    }
                }
            }
            results.push(result(size, skipped, samples, warm));
        }
        drop(pool);
    }
    results
}

/// The backings a boot is measured with: (name, page, `--memory` value).
fn boot_backings(host: &HostPaths, mib: u64) -> Vec<(String, u64, Result<String, String>)> {
    let size = format!("size={mib}M");
    let mut out = vec![("4K anonymous".to_string(), KIB4, Ok(size.clone()))];
    let host_sizes = hugepages::host_page_sizes(host);
    for page in [MIB2, GIB1] {
        let name = format!("{} memfd", human_size(page));
        let value = if !host_sizes.contains(&page) {
            Err(format!("this host has no {} pages", human_size(page)))
        } else if !(mib << 20).is_multiple_of(page) {
            Err(format!(
                "--boot-memory-mib {mib} is not a multiple of {}",
                human_size(page)
            ))
        } else {
            Ok(format!("{size},hugepages={}", human_size(page)))
        };
        out.push((name, page, value));
        if page == MIB2 {
            let mount = hugetlbfs::mounts()
                .into_iter()
                .find(|m| hugetlbfs::mount_page_size(m, Some(MIB2)).is_ok());
            let value = match mount {
                Some(m) => Ok(format!("{size},hugetlbfs={}", m.display())),
                None => Err("no hugetlbfs mount with 2M pages".to_string()),
            };
            out.push(("2M hugetlbfs".to_string(), MIB2, value));
        }
    }
    out
}

struct BootSetup<'a> {
    paddock: &'a Path,
    kernel: &'a Path,
    initramfs: &'a Path,
    timeout: Duration,
}

impl BootSetup<'_> {
    /// One boot to the ready marker, ms from process start.
    fn once(&self, memory: &str) -> Result<f64, String> {
        let mut cmd = std::process::Command::new(self.paddock);
        cmd.arg("run")
            .args(crate::workspace::paddock_user_args())
            .arg("--kernel")
            .arg(self.kernel)
            .arg("--initramfs")
            .arg(self.initramfs)
            // The guest stays up after its marker; the benchmark kills it.
            .args([
                "--cmdline",
                "console=ttyS0 8250.nr_uarts=1 panic=-1 quiet -- sleep 600",
                "--cpus",
                "1",
                "--memory",
                memory,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.paddock.display()))?;
        let result = match OutputWatch::start(&mut child, vec![READY_MARKER.as_bytes().to_vec()]) {
            None => Err("no stdout".to_string()),
            Some(watch) => match watch.wait_for(0, start + self.timeout) {
                Some(t) => Ok((t - start).as_secs_f64() * 1000.0),
                None => {
                    let (out, err) = watch.tails(300);
                    Err(format!(
                        "no `{READY_MARKER}`; stdout ended with {out:?}; stderr ended with {err:?}"
                    ))
                }
            },
        };
        probe::stop(&mut child);
        result
    }
}

fn measure_boots(host: &HostPaths, setup: &BootSetup, mib: u64, runs: usize) -> Vec<BootResult> {
    let mut results = Vec::new();
    for (backing, page, memory) in boot_backings(host, mib) {
        let mut r = BootResult {
            backing,
            memory: memory.clone().unwrap_or_default(),
            ready_ms: None,
            samples_ms: Vec::new(),
            failures: Vec::new(),
            skipped: None,
        };
        let memory = match memory {
            Ok(m) => m,
            Err(why) => {
                r.skipped = Some(why);
                results.push(r);
                continue;
            }
        };
        let pool = match page {
            KIB4 => Ok(None),
            _ => ensure_free_pages(host, page, (mib << 20) / page),
        };
        if let Err(e) = &pool {
            r.skipped = Some(format!("{e:#}"));
            results.push(r);
            continue;
        }
        for run in 1..=runs {
            match setup.once(&memory) {
                Ok(ms) => {
                    eprintln!(
                        "paddock-bench: run {run}/{runs} boot on {}: ready {ms:.1} ms",
                        r.backing
                    );
                    r.samples_ms.push(ms);
                }
                Err(e) => {
                    eprintln!(
                        "paddock-bench: run {run}/{runs} boot on {}: FAILED",
                        r.backing
                    );
                    r.failures.push(format!("run {run}: {e}"));
                }
            }
        }
        drop(pool);
        r.ready_ms = Summary::of(&r.samples_ms);
        results.push(r);
    }
    results
}

fn fmt(s: &Option<Summary>) -> String {
    match s {
        Some(s) => format!("{:.1} / {:.1} / {:.1}", s.min, s.median, s.max),
        None => "-".to_string(),
    }
}

/// Median of 4K pages over median of `page` pages, per size: how many times faster hugepages are.
fn ratios(results: &[CreateResult]) -> Vec<serde_json::Value> {
    let median = |size: u64, page: &str| {
        results
            .iter()
            .find(|r| r.size_bytes == size && r.page == page)
            .and_then(|r| r.create_ms.as_ref())
            .map(|s| s.median)
    };
    let mut sizes: Vec<u64> = Vec::new();
    for r in results {
        if !sizes.contains(&r.size_bytes) {
            sizes.push(r.size_bytes);
        }
    }
    sizes
        .into_iter()
        .map(|size| {
            let ratio = |page: &str| match (median(size, "4K"), median(size, page)) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            serde_json::json!({
                "size": human_size(size),
                "4K_over_2M": ratio("2M"),
                "4K_over_1G": ratio("1G"),
            })
        })
        .collect()
}

fn host_text(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn run(args: MemoryArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs 0 measures nothing: give at least 1");
    }
    let parse = |what: &str, list: &[String]| -> Result<Vec<u64>> {
        list.iter()
            .map(|s| parse_size(s).map_err(|e| anyhow::anyhow!("--{what} {s}: {e}")))
            .collect()
    };
    let sizes = parse("sizes", &args.sizes)?;
    let pages = parse("pages", &args.pages)?;
    if let Some(p) = pages.iter().find(|p| ![KIB4, MIB2, GIB1].contains(p)) {
        bail!("--pages {}: give 4K, 2M or 1G", human_size(*p));
    }
    let host = HostPaths::system();
    let thp = host_text("/sys/kernel/mm/transparent_hugepage/enabled");
    let create = measure_create(&host, &sizes, &pages, args.runs, args.warmup);

    let boots = if args.no_boot {
        Vec::new()
    } else {
        let (kernel, initramfs) = args.boot.guest()?;
        let paddock = args.boot.paddock()?;
        let setup = BootSetup {
            paddock: &paddock,
            kernel: &kernel,
            initramfs: &initramfs,
            timeout: Duration::from_secs(args.timeout),
        };
        measure_boots(&host, &setup, args.boot_memory_mib, args.boot_runs)
    };

    println!(
        "memory: create + prefault through vmm::memory, {} runs each after {} warm-up, THP `{thp}`; min / median / max ms",
        args.runs, args.warmup
    );
    println!(
        "{:<8} {:<6} {:<14} {:>30}",
        "size", "page", "backend", "create+prefault ms"
    );
    for r in &create {
        let value = match &r.skipped {
            Some(why) if r.create_ms.is_none() => format!("skipped: {why}"),
            _ => fmt(&r.create_ms),
        };
        println!(
            "{:<8} {:<6} {:<14} {:>30}",
            r.size, r.page, r.backend, value
        );
    }
    let ratios = ratios(&create);
    for r in &ratios {
        let x = |k: &str| r[k].as_f64().map_or("-".into(), |v| format!("{v:.1}x"));
        println!(
            "{}: 4K/2M {}, 4K/1G {} (median; how many times faster hugepages are)",
            r["size"].as_str().unwrap_or("?"),
            x("4K_over_2M"),
            x("4K_over_1G")
        );
    }
    if !boots.is_empty() {
        println!(
            "boot to ready, {} runs each, 1 vCPU, {} MiB; min / median / max ms",
            args.boot_runs, args.boot_memory_mib
        );
        for b in &boots {
            let value = match &b.skipped {
                Some(why) => format!("skipped: {why}"),
                None => fmt(&b.ready_ms),
            };
            println!("{:<14} {:>30}", b.backing, value);
            for f in &b.failures {
                println!("  failure: {f}");
            }
        }
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "benchmark": "memory",
            "runs": args.runs,
            "warmup": args.warmup,
            "boot_runs": (!args.no_boot).then_some(args.boot_runs),
            "boot_memory_mib": (!args.no_boot).then_some(args.boot_memory_mib),
            "host_kernel": host_text("/proc/sys/kernel/osrelease"),
            "transparent_hugepage": thp,
            "create": create,
            "ratios": ratios,
            "boot": boots,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if create.iter().all(|r| r.create_ms.is_none()) {
        bail!("nothing was measured (see the skipped reasons above)");
    }
    if boots
        .iter()
        .any(|b| b.skipped.is_none() && b.ready_ms.is_none())
    {
        bail!("a backing booted no guest at all (see the failures above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_divide_4k_by_hugepage_medians() {
        let r = |size: u64, page: u64, ms: &[f64]| CreateResult {
            size: human_size(size),
            size_bytes: size,
            page: human_size(page),
            backend: "x",
            create_ms: Summary::of(ms),
            samples_ms: ms.to_vec(),
            warmup_ms: Vec::new(),
            skipped: None,
        };
        let results = vec![
            r(GIB1, KIB4, &[900.0, 1000.0, 1100.0]),
            r(GIB1, MIB2, &[90.0, 100.0, 300.0]),
            r(GIB1, GIB1, &[]),
        ];
        let out = ratios(&results);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["size"], "1G");
        assert_eq!(out[0]["4K_over_2M"].as_f64(), Some(10.0));
        assert!(out[0]["4K_over_1G"].is_null());
    }

    #[test]
    fn creating_4k_ram_is_timed_with_paddocks_code() {
        let ms = create_once(64 << 20, KIB4).expect("create");
        assert!(ms > 0.0);
    }
}
