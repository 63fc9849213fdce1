//! Command-line front of `paddock-bench net`: options, the interleaved run order, the table and
//! the JSON file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use super::cpus::CpuSplit;
use super::frames::{FRAME_SIZES, MAX_FRAME};
use super::guest::{check_root, GuestBench};
use super::netns::{create_tap, enter_private_netns};
use super::worker::{run_once, Direction, Mode, Series, Timing, QUEUE_SIZE};
use crate::bench::stats::Summary;
use crate::bench::vmms::{parse_peer, BootFiles, Vmm, VmmKind};
use crate::testhost::mode::find_on_path;

#[derive(Subcommand)]
pub enum NetCmd {
    /// Frames/s and Gbit/s through Paddock's virtio-net worker on a real tap (synthetic driver,
    /// no guest), against a plain writev/readv loop on the same tap. Needs root.
    Worker(WorkerArgs),
    /// iperf3 between the host and the default guest over virtio-net on a multi-queue tap, for 1
    /// and --cpus queue pairs, both directions, under Paddock and the peers. Needs root (the tap).
    Guest(GuestArgs),
}

#[derive(Args)]
pub struct NetArgs {
    #[command(subcommand)]
    pub command: NetCmd,
}

#[derive(Args)]
pub struct WorkerArgs {
    /// Runs per (direction, frame size, mode).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Unmeasured seconds at the start of each run.
    #[arg(long, default_value_t = 0.3)]
    pub warmup: f64,
    /// Ethernet frame sizes in bytes, comma separated (54 to 65535; above 1514 a TSO frame).
    #[arg(long, value_delimiter = ',', default_values_t = FRAME_SIZES)]
    pub sizes: Vec<usize>,
    /// Give the worker (or the plain loop) a CPU of its own and the synthetic driver and the
    /// injector the others, instead of leaving placement to the scheduler (which tends to put
    /// the driver on the worker's CPU). Needs at least 2 CPUs; on a virtual machine the
    /// cross-CPU wake-ups it adds can cost more than the sharing it avoids.
    #[arg(long)]
    pub pin: bool,
    /// Directions to measure, comma separated (tx: guest -> tap, rx: tap -> guest).
    #[arg(long, value_delimiter = ',', default_values = ["tx", "rx"])]
    pub directions: Vec<String>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args)]
pub struct GuestArgs {
    /// Boots per VMM and pair count (each measures both directions).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Seconds of each iperf3 measurement.
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// Guest vCPUs; also the larger queue-pair count measured (the other is 1).
    #[arg(long, default_value_t = 2)]
    pub cpus: u8,
    #[arg(long, default_value_t = 512)]
    pub memory_mib: u64,
    #[command(flatten)]
    pub boot: BootFiles,
    /// A peer VMM: qemu=PATH (microvm with PCIe), qemu-pc=PATH (pc machine) or
    /// cloud-hypervisor=PATH; repeatable.
    #[arg(long = "peer")]
    pub peers: Vec<String>,
    /// Seconds to wait for the guest's iperf3 servers after starting its VMM.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
    /// Name of the tap to create for each pair count (it must not exist).
    #[arg(long, default_value = "pbtap0")]
    pub tap: String,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The tap the worker benchmark makes in its private namespace.
const TAP: &str = "pbnet0";

pub fn run(args: NetArgs) -> Result<()> {
    match args.command {
        NetCmd::Worker(a) => worker(a),
        NetCmd::Guest(a) => guest(a),
    }
}

fn fmt(s: &Option<Summary>, scale: f64, digits: usize) -> String {
    match s {
        Some(s) => format!(
            "{:.d$} / {:.d$} / {:.d$}",
            s.min / scale,
            s.median / scale,
            s.max / scale,
            d = digits
        ),
        None => "-".to_string(),
    }
}

fn median_ratio(a: &Series, b: &Series) -> Option<f64> {
    match (&a.frames_per_s, &b.frames_per_s) {
        (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
        _ => None,
    }
}

/// Plain loop's CPU time per frame over the worker's (medians): the worker's throughput
/// relative to the plain loop's were each CPU-bound on a CPU of its own.
fn cpu_ratio(worker: &Series, plain: &Series) -> Option<f64> {
    match (&worker.cpu_ns_per_frame, &plain.cpu_ns_per_frame) {
        (Some(w), Some(p)) if w.median > 0.0 => Some(p.median / w.median),
        _ => None,
    }
}

fn worker(args: WorkerArgs) -> Result<()> {
    if args.repeats == 0 {
        bail!("--repeats 0 measures nothing: give at least 1");
    }
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        bail!(
            "--seconds {} measures nothing: give a positive number",
            args.seconds
        );
    }
    if !(args.warmup >= 0.0 && args.warmup.is_finite()) {
        bail!(
            "--warmup {} is not a duration: give 0 or more seconds",
            args.warmup
        );
    }
    if let Some(bad) = args.sizes.iter().find(|&&s| !(54..=MAX_FRAME).contains(&s)) {
        bail!("--sizes {bad}: a frame is 54 (Ethernet + IPv4 + TCP headers) to 65535 bytes");
    }
    if args.sizes.is_empty() {
        bail!("--sizes is empty: give at least one frame size");
    }
    let timing = Timing {
        warmup: Duration::from_secs_f64(args.warmup),
        measure: Duration::from_secs_f64(args.seconds),
    };
    let mut directions = Vec::new();
    for name in &args.directions {
        let dir = match name.as_str() {
            "tx" => Direction::Tx,
            "rx" => Direction::Rx,
            other => bail!("--directions {other}: a direction is tx or rx"),
        };
        if !directions.contains(&dir) {
            directions.push(dir);
        }
    }
    if directions.is_empty() {
        bail!("--directions is empty: give tx, rx or both");
    }
    let split = if args.pin {
        let split = CpuSplit::of_current_thread().context("reading the CPU affinity")?;
        if split.is_none() {
            bail!("--pin needs at least 2 CPUs to split; this process may run on one");
        }
        split
    } else {
        None
    };
    enter_private_netns()?;
    create_tap(TAP)?;

    let mut series: Vec<Series> = Vec::new();
    for &size in &args.sizes {
        for &dir in &directions {
            for mode in [Mode::Worker, Mode::Plain] {
                series.push(Series::new(dir, size, mode));
            }
        }
    }
    // Interleaved: every combination once per repeat, the mode order alternating, so drift in
    // the machine's load touches worker and plain alike.
    for repeat in 0..args.repeats {
        for s in 0..series.len() / 2 {
            let pair = if repeat % 2 == 0 {
                [2 * s, 2 * s + 1]
            } else {
                [2 * s + 1, 2 * s]
            };
            for i in pair {
                let entry = &mut series[i];
                let (dir, size, mode) = (entry.direction, entry.frame_bytes, entry.mode);
                match run_once(TAP, dir, mode, size, timing, split.as_ref()) {
                    Ok(sample) => {
                        eprintln!(
                            "run {}/{} {} {size} B {}: {:.0} frames/s, {:.3} Gbit/s, {:.0} ns CPU/frame",
                            repeat + 1,
                            args.repeats,
                            dir.name(),
                            mode.name(),
                            sample.frames_per_s,
                            sample.gbit_per_s,
                            sample.cpu_ns_per_frame
                        );
                        entry.samples.push(sample);
                    }
                    Err(e) => {
                        eprintln!(
                            "run {}/{} {} {size} B {}: failed: {e}",
                            repeat + 1,
                            args.repeats,
                            dir.name(),
                            mode.name()
                        );
                        entry.failures.push(e.to_string());
                    }
                }
            }
        }
    }
    for s in &mut series {
        s.summarise();
    }

    let placement = if split.is_some() {
        "worker or plain loop on a CPU of its own, driver and injector on the others"
    } else {
        "threads placed by the scheduler"
    };
    println!(
        "net worker: 1 queue pair, rings of {QUEUE_SIZE}, {} runs of {} s (+{} s warm-up) each; {placement}; min / median / max",
        args.repeats, args.seconds, args.warmup
    );
    println!(
        "{:<4} {:>7} {:<7} {:>36} {:>24} {:>13} {:>9} {:>10}",
        "dir", "frame B", "mode", "frames/s", "Gbit/s", "worker/plain", "CPU ns/f", "CPU ratio"
    );
    let mut ratios = Vec::new();
    for pair in series.chunks(2) {
        let ratio = median_ratio(&pair[0], &pair[1]);
        let cpu = cpu_ratio(&pair[0], &pair[1]);
        for s in pair {
            let worker_only = |r: Option<f64>| match (s.mode, r) {
                (Mode::Worker, Some(r)) => format!("{r:.3}x"),
                _ => String::new(),
            };
            println!(
                "{:<4} {:>7} {:<7} {:>36} {:>24} {:>13} {:>9} {:>10}",
                s.direction.name(),
                s.frame_bytes,
                s.mode.name(),
                fmt(&s.frames_per_s, 1.0, 0),
                fmt(&s.gbit_per_s, 1.0, 3),
                worker_only(ratio),
                s.cpu_ns_per_frame
                    .as_ref()
                    .map(|c| format!("{:.0}", c.median))
                    .unwrap_or_default(),
                worker_only(cpu),
            );
            for f in &s.failures {
                println!("  failure: {f}");
            }
        }
        ratios.push(serde_json::json!({
            "direction": pair[0].direction,
            "frame_bytes": pair[0].frame_bytes,
            "worker_over_plain": ratio,
            "plain_cpu_over_worker_cpu": cpu,
        }));
    }

    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "benchmark": "net-worker",
            "repeats": args.repeats,
            "seconds": args.seconds,
            "warmup_seconds": args.warmup,
            "queue_size": QUEUE_SIZE,
            "queue_pairs": 1,
            "pinned": split.is_some(),
            "host_kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            "host_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "results": series,
            "ratios": ratios,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let empty: Vec<String> = series
        .iter()
        .filter(|s| s.samples.is_empty())
        .map(|s| {
            format!(
                "{} {} B {}",
                s.direction.name(),
                s.frame_bytes,
                s.mode.name()
            )
        })
        .collect();
    if !empty.is_empty() {
        bail!(
            "no measurement at all for {} (see the failures above)",
            empty.join(", ")
        );
    }
    Ok(())
}

fn guest(args: GuestArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs 0 measures nothing: give at least 1");
    }
    if args.seconds == 0 {
        bail!("--seconds 0 measures nothing: give at least 1");
    }
    if args.cpus == 0 {
        bail!("--cpus 0: a guest needs at least 1 vCPU");
    }
    let (kernel, initramfs) = args.boot.guest()?;
    let paddock = args.boot.paddock()?;
    let mut vmms = vec![Vmm {
        kind: VmmKind::Paddock,
        path: paddock,
    }];
    for p in &args.peers {
        let peer = parse_peer(p)?;
        if peer.kind == VmmKind::Firecracker {
            bail!("--peer {p}: firecracker has no multi-queue virtio-net; net guest takes qemu, qemu-pc or cloud-hypervisor");
        }
        vmms.push(peer);
    }
    if find_on_path("iperf3").is_none() {
        bail!("iperf3 not found on PATH: install it (the host runs the iperf3 clients)");
    }
    check_root()?;
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let bench = GuestBench {
        runs: args.runs,
        seconds: args.seconds,
        cpus: args.cpus,
        mem_mib: args.memory_mib,
        kernel: &kernel,
        initramfs: &initramfs,
        tap: &args.tap,
        timeout: Duration::from_secs(args.timeout),
        scratch: scratch.path(),
    };
    let results = bench.measure_all(&vmms);
    let pair_counts = bench.pair_counts();

    println!(
        "net guest: iperf3, {} runs of {} s per VMM, pair count and direction; {} vCPU(s), {} MiB; Gbit/s min / median / max",
        args.runs, args.seconds, args.cpus, args.memory_mib
    );
    println!(
        "{:<18} {:>5} {:<14} {:>30}",
        "vmm", "pairs", "direction", "Gbit/s"
    );
    for r in &results {
        for s in &r.series {
            println!(
                "{:<18} {:>5} {:<14} {:>30}",
                r.vmm,
                s.pairs,
                s.flow.name(),
                fmt(&s.gbit_per_s, 1.0, 3)
            );
        }
        for f in &r.failures {
            println!("  failure: {f}");
        }
    }
    let ours = &results[0];
    for peer in &results[1..] {
        for (a, b) in ours.series.iter().zip(&peer.series) {
            let ratio = match (&a.gbit_per_s, &b.gbit_per_s) {
                (Some(a), Some(b)) if b.median > 0.0 => format!("{:.3}x", a.median / b.median),
                _ => "-".to_string(),
            };
            println!(
                "paddock / {}: {} pair(s) {}: {ratio} (median; above 1 = paddock faster)",
                peer.vmm,
                a.pairs,
                a.flow.name()
            );
        }
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "benchmark": "net-guest",
            "runs": args.runs,
            "seconds": args.seconds,
            "cpus": args.cpus,
            "memory_mib": args.memory_mib,
            "pair_counts": pair_counts,
            "kernel": kernel.display().to_string(),
            "initramfs": initramfs.display().to_string(),
            "host_kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            "results": results,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let empty: Vec<String> = results
        .iter()
        .flat_map(|r| {
            r.series
                .iter()
                .filter(|s| s.samples.is_empty())
                .map(move |s| format!("{} {} pair(s) {}", r.vmm, s.pairs, s.flow.name()))
        })
        .collect();
    if !empty.is_empty() {
        bail!(
            "no measurement at all for {} (see the failures above)",
            empty.join(", ")
        );
    }
    Ok(())
}
