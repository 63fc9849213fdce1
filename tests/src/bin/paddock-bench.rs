//! `paddock-bench`: boots real guests under Paddock and, when given, under peer VMMs in the same run.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use paddock_tests::bench::boot::{BootBench, VmmBootResult};
use paddock_tests::bench::stats::Summary;
use paddock_tests::bench::vmms::{parse_peer, Guest, Vmm, VmmKind};
use paddock_tests::workspace;
use std::path::PathBuf;
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
}

#[derive(Args)]
struct BootArgs {
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Kernel for the ready measurement (default: the default guest's vmlinuz).
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long)]
    initramfs: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    #[arg(long, default_value_t = 256)]
    memory_mib: u64,
    /// The paddock binary (default: the one built in this workspace).
    #[arg(long)]
    paddock: Option<PathBuf>,
    /// A peer VMM: qemu=PATH, cloud-hypervisor=PATH or firecracker=PATH; repeatable.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Seconds to wait for each marker.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Skip the first-instruction measurement.
    #[arg(long)]
    no_first_instruction: bool,
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
        (Some(a), Some(b)) if b.median > 0.0 => format!("{:.2}x", a.median / b.median),
        _ => "-".to_string(),
    }
}

fn boot(args: BootArgs) -> Result<()> {
    let guest_dir = workspace::guest_dir();
    let kernel = args.kernel.unwrap_or_else(|| guest_dir.join("vmlinuz"));
    let initramfs = args
        .initramfs
        .unwrap_or_else(|| guest_dir.join("initramfs.cpio.gz"));
    if !kernel.is_file() {
        bail!(
            "kernel {} not found: run resources/guest/build.sh or pass --kernel",
            kernel.display()
        );
    }
    let mut vmms = vec![Vmm {
        kind: VmmKind::Paddock,
        path: args.paddock.unwrap_or_else(workspace::paddock_bin),
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
    let cmdline = "console=ttyS0 8250.nr_uarts=1 panic=-1 quiet -- true".to_string();
    let bench = BootBench {
        runs: args.runs,
        timeout: Duration::from_secs(args.timeout),
        first_byte_kernel: first_byte.as_deref(),
        guest: Guest {
            kernel: &kernel,
            initramfs: Some(&initramfs),
            cmdline: &cmdline,
            cpus: args.cpus,
            mem_mib: args.memory_mib,
        },
        scratch: scratch.path(),
    };
    let results: Vec<VmmBootResult> = vmms.iter().map(|v| bench.measure(v)).collect();

    println!(
        "boot: {} runs each, {} vCPU(s), {} MiB; min / median / max",
        args.runs, args.cpus, args.memory_mib
    );
    println!(
        "{:<18} {:>26} {:>26} {:>26}",
        "vmm", "first instruction ms", "ready ms", "rss overhead KiB"
    );
    for r in &results {
        println!(
            "{:<18} {:>26} {:>26} {:>26}",
            r.vmm,
            fmt(&r.first_instruction_ms),
            fmt(&r.ready_ms),
            fmt(&r.rss_overhead_kib)
        );
        for f in &r.failures {
            println!("  failure: {f}");
        }
    }
    let ours = &results[0];
    for peer in &results[1..] {
        println!(
            "paddock / {}: first instruction {}, ready {}, rss {}",
            peer.vmm,
            ratio(&ours.first_instruction_ms, &peer.first_instruction_ms),
            ratio(&ours.ready_ms, &peer.ready_ms),
            ratio(&ours.rss_overhead_kib, &peer.rss_overhead_kib)
        );
    }
    if let Some(path) = args.json {
        let json = serde_json::json!({ "benchmark": "boot", "results": results });
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if results.iter().any(|r| r.ready_ms.is_none()) {
        bail!("some VMM never reached the ready marker (see failures above)");
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Boot(a) => boot(a),
    }
}
