//! `paddock-bench`: boots real guests under Paddock and, when given, under peer VMMs in the same run.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use paddock_tests::bench::boot::{BootBench, VmmBootResult};
use paddock_tests::bench::stats::Summary;
use paddock_tests::bench::vmms::{parse_peer, BootFiles, Guest, Vmm, VmmKind};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "paddock-bench",
    about = "Paddock benchmarks with peers measured in the same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Time to first guest instruction, time to the guest's ready marker, VMM memory overhead.
    Boot(BootArgs),
    /// virtio-net throughput: the net worker on a tap (`worker`), iperf3 with a guest (`guest`).
    Net(paddock_tests::bench::net::cli::NetArgs),
    /// Guest RAM: create + prefault time per size with 4K, 2M and 1G pages (Paddock's own code),
    /// and boot time to ready with each backing.
    Memory(paddock_tests::bench::memory::MemoryArgs),
    /// virtio-fs: sequential write/read MiB/s and create/stat/unlink ops/s inside the guest, per
    /// vhost-user-fs backend, and for peers with the standard virtiofsd.
    Fs(paddock_tests::bench::fs::FsArgs),
}

#[derive(Args)]
struct BootArgs {
    /// Boots per VMM and per measurement.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    #[arg(long, default_value_t = 256)]
    memory_mib: u64,
    #[command(flatten)]
    boot: BootFiles,
    /// A peer VMM: qemu=PATH (microvm machine), qemu-pc=PATH (pc machine), cloud-hypervisor=PATH
    /// or firecracker=PATH; repeatable.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Seconds to wait for each marker.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Skip the first-instruction measurement.
    #[arg(long)]
    no_first_instruction: bool,
    /// Skip the ready and RSS measurements (only the first-instruction guest boots: useful where
    /// /dev/kvm cannot boot Linux, such as kvm_pvm).
    #[arg(long)]
    no_ready: bool,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn fmt(s: &Option<Summary>) -> String {
    match s {
        Some(s) => format!("{:.1} / {:.1} / {:.1}", s.min, s.median, s.max),
        None => "-".to_string(),
    }
}

fn ratio(a: &Option<Summary>, b: &Option<Summary>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => format!("{:.3}x", a.median / b.median),
        _ => "-".to_string(),
    }
}

/// Which KVM serves /dev/kvm here: the loaded module's name.
fn kvm_module() -> &'static str {
    ["kvm_pvm", "kvm_amd", "kvm_intel"]
        .into_iter()
        .find(|m| Path::new("/sys/module").join(m).exists())
        .unwrap_or("unknown")
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn print_table(args: &BootArgs, results: &[VmmBootResult]) {
    println!(
        "boot: {} runs each, {} vCPU(s), {} MiB, /dev/kvm from {}; min / median / max",
        args.runs,
        args.cpus,
        args.memory_mib,
        kvm_module()
    );
    println!(
        "{:<18} {:>26} {:>26} {:>26} {:>26}",
        "vmm", "first instruction ms", "ready ms", "rss overhead KiB", "rss guest RAM KiB"
    );
    for r in results {
        println!(
            "{:<18} {:>26} {:>26} {:>26} {:>26}",
            r.vmm,
            fmt(&r.first_instruction_ms),
            fmt(&r.ready_ms),
            fmt(&r.rss_overhead_kib),
            fmt(&Summary::of(&r.samples.rss_guest_kib)),
        );
        for f in &r.failures {
            println!("  failure: {f}");
        }
    }
    let ours = &results[0];
    for peer in &results[1..] {
        println!(
            "paddock / {}: first instruction {}, ready {}, rss overhead {} (median; below 1 = paddock better)",
            peer.vmm,
            ratio(&ours.first_instruction_ms, &peer.first_instruction_ms),
            ratio(&ours.ready_ms, &peer.ready_ms),
            ratio(&ours.rss_overhead_kib, &peer.rss_overhead_kib)
        );
    }
}

fn boot(args: BootArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs 0 measures nothing: give at least 1");
    }
    if args.no_ready && args.no_first_instruction {
        bail!("--no-ready with --no-first-instruction measures nothing: drop one");
    }
    let (kernel, initramfs) = if args.no_ready {
        args.boot.guest_unchecked()
    } else {
        args.boot.guest()?
    };
    let paddock = args.boot.paddock()?;
    let mut vmms = vec![Vmm {
        kind: VmmKind::Paddock,
        path: paddock,
    }];
    for p in &args.peers {
        vmms.push(parse_peer(p)?);
    }
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    // Paddock may run as another user (see workspace::paddock_user_args): let it read the guest.
    std::fs::set_permissions(
        scratch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .context("opening the scratch directory to paddock")?;
    let first_byte = if args.no_first_instruction {
        None
    } else {
        Some(
            paddock_tests::bench::first_byte::write_first_byte_guest(scratch.path())
                .context("writing the first-instruction guest")?,
        )
    };
    // The guest stays up after its ready marker (sleep) so that its VMM is still there when the
    // RSS is read; the benchmark kills it right after.
    let cmdline = "console=ttyS0 8250.nr_uarts=1 panic=-1 quiet -- sleep 600".to_string();
    let bench = BootBench {
        runs: args.runs,
        timeout: Duration::from_secs(args.timeout),
        first_byte_kernel: first_byte.as_deref(),
        guest: (!args.no_ready).then(|| Guest {
            kernel: &kernel,
            initramfs: Some(&initramfs),
            cmdline: &cmdline,
            cpus: args.cpus,
            mem_mib: args.memory_mib,
        }),
        cpus: args.cpus,
        mem_mib: args.memory_mib,
        scratch: scratch.path(),
    };
    let results = bench.measure_all(&vmms);
    print_table(&args, &results);

    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "benchmark": "boot",
            "runs": args.runs,
            "cpus": args.cpus,
            "memory_mib": args.memory_mib,
            "kernel": (!args.no_ready).then(|| kernel.display().to_string()),
            "initramfs": (!args.no_ready).then(|| initramfs.display().to_string()),
            "cmdline": (!args.no_ready).then_some(&cmdline),
            "kvm_module": kvm_module(),
            "host_kernel": kernel_release(),
            "results": results,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let incomplete: Vec<&str> = results
        .iter()
        .filter(|r| {
            (!args.no_first_instruction && r.first_instruction_ms.is_none())
                || (!args.no_ready && (r.ready_ms.is_none() || r.rss_overhead_kib.is_none()))
        })
        .map(|r| r.vmm.as_str())
        .collect();
    if !incomplete.is_empty() {
        bail!(
            "no measurement at all for {} (see the failures above)",
            incomplete.join(", ")
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Boot(a) => boot(a),
        Cmd::Net(a) => paddock_tests::bench::net::cli::run(a),
        Cmd::Memory(a) => paddock_tests::bench::memory::run(a),
        Cmd::Fs(a) => paddock_tests::bench::fs::run(a),
    }
}
