//! `paddock-bench fs`: virtio-fs throughput and metadata rates measured inside the default guest,
//! for Paddock with each vhost-user-fs backend given (`paddock virtiofsd`, the standard
//! virtiofsd) and for peer VMMs with the standard virtiofsd, interleaved run by run.
//!
//! Each boot gets a fresh shared directory holding the guest's script; the guest mounts it and
//! times, with its own clock (`/proc/uptime`, 10 ms steps), a sequential write of a SIZE MiB file
//! (`dd bs=1M conv=fsync`), a sequential read of it after dropping the guest's page cache, then
//! the creation of FILES empty files, a `stat` of each after dropping the caches again (every one
//! a lookup in the backend), and their removal by one `rm`. The host's page cache is left alone: the read
//! measures the path guest -> VMM/backend -> host page cache, the same for every setup.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::bench::probe::{self, OutputWatch};
use crate::bench::stats::Summary;
use crate::bench::vmms::{parse_peer, BootFiles, FsAttach, Guest, Vmm, VmmKind};
use crate::testhost::mode::find_on_path;
use crate::workspace::{self, TEST_UID};

const TAG: &str = "pbfs";
const QUEUE_SIZE: u16 = 1024;
/// Printed by the guest when every phase is done.
pub const DONE: &str = "PBFS-DONE";
const TAIL_CHARS: usize = 600;

#[derive(Args)]
pub struct FsArgs {
    /// Boots per setup; each measures every phase once.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// MiB of the file written and read sequentially.
    #[arg(long, default_value_t = 1024)]
    pub size: u64,
    /// Files created, stat'ed and removed.
    #[arg(long, default_value_t = 10000)]
    pub files: u64,
    /// A vhost-user-fs backend for Paddock: `paddock` (`paddock virtiofsd` of the paddock binary)
    /// or `virtiofsd=PATH` (the standard virtiofsd). Repeatable; default: paddock, and the
    /// standard virtiofsd when target/virtiofsd/bin/virtiofsd or PATH has one.
    #[arg(long = "backend")]
    pub backends: Vec<String>,
    /// A peer VMM run with the standard virtiofsd: qemu=PATH (microvm with PCIe), qemu-pc=PATH or
    /// cloud-hypervisor=PATH; repeatable.
    #[arg(long = "peer")]
    pub peers: Vec<String>,
    #[arg(long, default_value_t = 1)]
    pub cpus: u8,
    #[arg(long, default_value_t = 1024)]
    pub memory_mib: u64,
    #[command(flatten)]
    pub boot: BootFiles,
    /// Seconds one boot may take, all phases included.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A backend process: its name in results and how to start it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `paddock virtiofsd` of this paddock binary.
    Paddock(PathBuf),
    /// The standard virtiofsd.
    Virtiofsd(PathBuf),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Paddock(_) => "paddock-virtiofsd",
            Backend::Virtiofsd(_) => "virtiofsd",
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Backend::Paddock(p) | Backend::Virtiofsd(p) => p,
        }
    }

    /// The command serving `dir` on `socket`, unprivileged (`--sandbox none`); started as uid
    /// 1000 when the benchmark runs as root.
    fn command(&self, socket: &Path, dir: &Path) -> Command {
        let mut cmd = Command::new(self.path());
        if let Backend::Paddock(_) = self {
            cmd.arg("virtiofsd");
        }
        cmd.arg("--socket-path")
            .arg(socket)
            .arg("--shared-dir")
            .arg(dir)
            .args(["--sandbox", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        if running_as_root() {
            cmd.uid(TEST_UID).gid(TEST_UID);
        }
        cmd
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Parses `--backend`.
pub fn parse_backend(text: &str, paddock: &Path) -> Result<Backend> {
    match text.split_once('=') {
        None if text == "paddock" => Ok(Backend::Paddock(paddock.to_path_buf())),
        Some(("virtiofsd", path)) => {
            let path = PathBuf::from(path);
            if !path.is_file() {
                bail!(
                    "--backend virtiofsd={}: no such file (resources/setup/virtiofsd.sh installs it in target/virtiofsd/bin)",
                    path.display()
                );
            }
            Ok(Backend::Virtiofsd(path))
        }
        _ => bail!("--backend `{text}`: write `paddock` or `virtiofsd=PATH`"),
    }
}

/// The standard virtiofsd the benchmark finds by itself.
fn default_virtiofsd() -> Option<PathBuf> {
    let built = workspace::target_dir().join("virtiofsd/bin/virtiofsd");
    if built.is_file() {
        return Some(built);
    }
    find_on_path("virtiofsd")
}

/// The guest's script, put into the share: each phase prints `PBFS NAME START END` in seconds of
/// guest uptime. No fork inside the timed loops: `: >` and `[ -e ]` are shell built-ins, and one
/// `rm` unlinks every file by name (the names are listed before the clock starts: `rm -rf` of the
/// directory reads it while deleting, which over FUSE skips entries).
pub fn guest_script(size_mib: u64, files: u64) -> String {
    format!(
        r#"t() {{ cut -d' ' -f1 /proc/uptime; }}
cd /mnt
s=$(t); dd if=/dev/zero of=big bs=1M count={size_mib} conv=fsync 2> /dev/null || echo PBFS-FAIL write; e=$(t); echo "PBFS write $s $e"
sync; echo 3 > /proc/sys/vm/drop_caches
s=$(t); dd if=big of=/dev/null bs=1M 2> /dev/null || echo PBFS-FAIL read; e=$(t); echo "PBFS read $s $e"
rm -f big; mkdir meta; cd meta
s=$(t); i=0; while [ $i -lt {files} ]; do : > f$i || echo PBFS-FAIL create; i=$((i + 1)); done; e=$(t); echo "PBFS create $s $e"
cd /; echo 3 > /proc/sys/vm/drop_caches; cd /mnt/meta
s=$(t); i=0; while [ $i -lt {files} ]; do [ -e f$i ] || echo PBFS-FAIL stat; i=$((i + 1)); done; e=$(t); echo "PBFS stat $s $e"
set -- f*
s=$(t); rm -f "$@" || echo PBFS-FAIL unlink; e=$(t); echo "PBFS unlink $s $e"
cd /mnt; rmdir meta || echo PBFS-FAIL rmdir
echo {DONE}
"#
    )
}

/// The guest command line: mount the share, run the script. No double quotes inside.
pub fn cmdline() -> String {
    format!(
        "console=ttyS0 8250.nr_uarts=1 panic=-1 quiet -- sh -c \"mount -t virtiofs {TAG} /mnt && sh /mnt/pbfs.sh\""
    )
}

/// One boot's numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    pub write_mib_s: f64,
    pub read_mib_s: f64,
    pub create_ops_s: f64,
    pub stat_ops_s: f64,
    pub unlink_ops_s: f64,
}

/// Reads the phase lines of the guest's output into rates.
pub fn parse_output(output: &str, size_mib: u64, files: u64) -> Result<Sample, String> {
    if let Some(line) = output.lines().find(|l| l.contains("PBFS-FAIL")) {
        return Err(format!("the guest reported a failure: {}", line.trim()));
    }
    let seconds = |phase: &str| -> Result<f64, String> {
        let line = output
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("PBFS {phase} ")))
            .ok_or_else(|| format!("no `PBFS {phase}` line"))?;
        let mut words = line.split_whitespace().map(str::parse::<f64>);
        match (words.next(), words.next()) {
            (Some(Ok(start)), Some(Ok(end))) if end >= start => Ok((end - start).max(0.01)),
            _ => Err(format!("malformed `PBFS {phase} {line}`")),
        }
    };
    let bytes = size_mib as f64;
    let n = files as f64;
    Ok(Sample {
        write_mib_s: bytes / seconds("write")?,
        read_mib_s: bytes / seconds("read")?,
        create_ops_s: n / seconds("create")?,
        stat_ops_s: n / seconds("stat")?,
        unlink_ops_s: n / seconds("unlink")?,
    })
}

/// A VMM with a backend.
#[derive(Clone, Debug)]
pub struct Setup {
    pub vmm: Vmm,
    pub backend: Backend,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Samples {
    pub write_mib_s: Vec<f64>,
    pub read_mib_s: Vec<f64>,
    pub create_ops_s: Vec<f64>,
    pub stat_ops_s: Vec<f64>,
    pub unlink_ops_s: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SetupResult {
    pub vmm: String,
    pub vmm_path: String,
    pub backend: String,
    pub backend_path: String,
    pub write_mib_s: Option<Summary>,
    pub read_mib_s: Option<Summary>,
    pub create_ops_s: Option<Summary>,
    pub stat_ops_s: Option<Summary>,
    pub unlink_ops_s: Option<Summary>,
    pub samples: Samples,
    pub failures: Vec<String>,
}

pub struct FsBench<'a> {
    pub runs: usize,
    pub size_mib: u64,
    pub files: u64,
    pub cpus: u8,
    pub mem_mib: u64,
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub timeout: Duration,
    pub scratch: &'a Path,
}

/// Kills a process group and reaps its leader when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        probe::stop(&mut self.0);
    }
}

impl FsBench<'_> {
    /// A fresh share holding the guest's script, writable by the unprivileged backend.
    fn prepare_share(&self, dir: &Path) -> std::io::Result<()> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("pbfs.sh"), guest_script(self.size_mib, self.files))?;
        std::fs::set_permissions(dir.join("pbfs.sh"), std::fs::Permissions::from_mode(0o644))?;
        if running_as_root() {
            std::os::unix::fs::chown(dir, Some(TEST_UID), Some(TEST_UID))?;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
    }

    fn one_boot(&self, setup: &Setup, index: usize) -> Result<Sample, String> {
        let share = self.scratch.join(format!("share-{index}"));
        let socket = self.scratch.join(format!("fs-{index}.sock"));
        self.prepare_share(&share)
            .map_err(|e| format!("preparing {}: {e}", share.display()))?;
        let _ = std::fs::remove_file(&socket);
        let backend = setup
            .backend
            .command(&socket, &share)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", setup.backend.path().display()))?;
        let mut backend = Reaped(backend);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if let Ok(Some(status)) = backend.0.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = backend.0.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!(
                    "the backend exited ({status}) before creating its socket: {}",
                    err.trim()
                ));
            }
            if Instant::now() > deadline {
                return Err("the backend created no socket within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let cmdline = cmdline();
        let guest = Guest {
            kernel: self.kernel,
            initramfs: Some(self.initramfs),
            cmdline: &cmdline,
            cpus: self.cpus,
            mem_mib: self.mem_mib,
        };
        let fs = FsAttach {
            socket: &socket,
            tag: TAG,
            queue_size: QUEUE_SIZE,
        };
        let mut cmd = setup
            .vmm
            .command_with_devices(&guest, self.scratch, None, Some(&fs))
            .map_err(|e| format!("preparing the {} command: {e}", setup.vmm.kind.name()))?;
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", setup.vmm.path.display()))?;
        let mut vmm = Reaped(child);
        let Some(watch) = OutputWatch::start(&mut vmm.0, vec![DONE.as_bytes().to_vec()]) else {
            return Err("no stdout".into());
        };
        let done = watch.wait_for(0, Instant::now() + self.timeout);
        let (out, err) = watch.tails(usize::MAX);
        let result = match done {
            Some(_) => parse_output(&out, self.size_mib, self.files),
            None => {
                let exited = probe::exit_status_soon(&mut vmm.0);
                Err(format!(
                    "no `{DONE}` {}",
                    match exited {
                        Some(s) => format!("before it exited ({s})"),
                        None => format!("within {:?}", self.timeout),
                    }
                ))
            }
        };
        result.map_err(|e| {
            let tail = |s: &str| {
                let skip = s.chars().count().saturating_sub(TAIL_CHARS);
                s.chars().skip(skip).collect::<String>()
            };
            format!(
                "{e}; VMM stdout ended with {:?}; stderr ended with {:?}",
                tail(&out),
                tail(&err)
            )
        })
    }

    /// Run 1 of every setup, then run 2, and so on.
    pub fn measure_all(&self, setups: &[Setup]) -> Vec<SetupResult> {
        let mut results: Vec<SetupResult> = setups
            .iter()
            .map(|s| SetupResult {
                vmm: s.vmm.kind.name().to_string(),
                vmm_path: s.vmm.path.display().to_string(),
                backend: s.backend.name().to_string(),
                backend_path: s.backend.path().display().to_string(),
                write_mib_s: None,
                read_mib_s: None,
                create_ops_s: None,
                stat_ops_s: None,
                unlink_ops_s: None,
                samples: Samples::default(),
                failures: Vec::new(),
            })
            .collect();
        for run in 1..=self.runs {
            for (i, (setup, result)) in setups.iter().zip(results.iter_mut()).enumerate() {
                let what = format!(
                    "run {run}/{} {} + {}",
                    self.runs,
                    setup.vmm.kind.name(),
                    setup.backend.name()
                );
                match self.one_boot(setup, i) {
                    Ok(s) => {
                        eprintln!(
                            "paddock-bench: {what}: write {:.1} MiB/s, read {:.1} MiB/s, create {:.0}/s, stat {:.0}/s, unlink {:.0}/s",
                            s.write_mib_s, s.read_mib_s, s.create_ops_s, s.stat_ops_s, s.unlink_ops_s
                        );
                        let v = &mut result.samples;
                        v.write_mib_s.push(s.write_mib_s);
                        v.read_mib_s.push(s.read_mib_s);
                        v.create_ops_s.push(s.create_ops_s);
                        v.stat_ops_s.push(s.stat_ops_s);
                        v.unlink_ops_s.push(s.unlink_ops_s);
                    }
                    Err(e) => {
                        eprintln!("paddock-bench: {what}: FAILED");
                        result.failures.push(format!("run {run}: {e}"));
                    }
                }
            }
        }
        for r in &mut results {
            r.write_mib_s = Summary::of(&r.samples.write_mib_s);
            r.read_mib_s = Summary::of(&r.samples.read_mib_s);
            r.create_ops_s = Summary::of(&r.samples.create_ops_s);
            r.stat_ops_s = Summary::of(&r.samples.stat_ops_s);
            r.unlink_ops_s = Summary::of(&r.samples.unlink_ops_s);
        }
        results
    }
}

fn fmt(s: &Option<Summary>) -> String {
    match s {
        Some(s) => format!("{:.1} / {:.1} / {:.1}", s.min, s.median, s.max),
        None => "-".to_string(),
    }
}

/// `paddock-bench fs`.
/// Files a backend has open besides one per guest inode (sockets, /proc, the share, logs).
const FD_MARGIN: u64 = 256;

pub fn run(args: FsArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs 0 measures nothing: give at least 1");
    }
    if args.size == 0 || args.files == 0 {
        bail!("--size and --files must be at least 1");
    }
    if args.cpus == 0 {
        bail!("--cpus 0: a guest needs at least 1 vCPU");
    }
    // The backends keep an fd for every file the guest holds (the guest caches what it
    // created), and may raise their soft limit only up to the hard one they inherit.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own; on failure it is left as set.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    let nofile = limit.rlim_max;
    if nofile < args.files + FD_MARGIN {
        bail!(
            "--files {}: the backends hold an fd per file the guest keeps, and the open-file limit here is {nofile}: raise it (as root: ulimit -Hn {}) or give fewer files",
            args.files,
            args.files + FD_MARGIN
        );
    }
    let (kernel, initramfs) = args.boot.guest()?;
    let paddock_path = args.boot.paddock()?;
    let mut backends = args
        .backends
        .iter()
        .map(|b| parse_backend(b, &paddock_path))
        .collect::<Result<Vec<_>>>()?;
    if backends.is_empty() {
        backends.push(Backend::Paddock(paddock_path.clone()));
        if let Some(v) = default_virtiofsd() {
            backends.push(Backend::Virtiofsd(v));
        }
    }
    let paddock = Vmm {
        kind: VmmKind::Paddock,
        path: paddock_path,
    };
    let mut setups: Vec<Setup> = backends
        .iter()
        .map(|b| Setup {
            vmm: paddock.clone(),
            backend: b.clone(),
        })
        .collect();
    let standard = backends
        .iter()
        .find(|b| matches!(b, Backend::Virtiofsd(_)))
        .cloned()
        .or_else(|| default_virtiofsd().map(Backend::Virtiofsd));
    for p in &args.peers {
        let peer = parse_peer(p)?;
        if peer.kind == VmmKind::Firecracker {
            bail!("--peer {p}: firecracker has no virtio-fs; fs takes qemu, qemu-pc or cloud-hypervisor");
        }
        let Some(backend) = standard.clone() else {
            bail!("--peer {p} runs with the standard virtiofsd: give --backend virtiofsd=PATH (resources/setup/virtiofsd.sh installs it)");
        };
        setups.push(Setup { vmm: peer, backend });
    }
    let scratch = tempfile::Builder::new()
        .prefix("paddock-bench-fs-")
        .tempdir()
        .context("creating a scratch directory")?;
    // The unprivileged backends and VMMs (uid 1000 when run as root) work in it.
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755))
        .context("opening the scratch directory to the benchmark user")?;
    if running_as_root() {
        std::os::unix::fs::chown(scratch.path(), Some(TEST_UID), Some(TEST_UID))
            .context("giving the scratch directory to uid 1000")?;
    }
    let bench = FsBench {
        runs: args.runs,
        size_mib: args.size,
        files: args.files,
        cpus: args.cpus,
        mem_mib: args.memory_mib,
        kernel: &kernel,
        initramfs: &initramfs,
        timeout: Duration::from_secs(args.timeout),
        scratch: scratch.path(),
    };
    let results = bench.measure_all(&setups);

    println!(
        "fs: {} runs each, {} MiB file, {} files, {} vCPU(s), {} MiB; min / median / max",
        args.runs, args.size, args.files, args.cpus, args.memory_mib
    );
    println!(
        "{:<17} {:<18} {:>24} {:>24} {:>24} {:>24} {:>24}",
        "vmm", "backend", "write MiB/s", "read MiB/s", "create/s", "stat/s", "unlink/s"
    );
    for r in &results {
        println!(
            "{:<17} {:<18} {:>24} {:>24} {:>24} {:>24} {:>24}",
            r.vmm,
            r.backend,
            fmt(&r.write_mib_s),
            fmt(&r.read_mib_s),
            fmt(&r.create_ops_s),
            fmt(&r.stat_ops_s),
            fmt(&r.unlink_ops_s)
        );
        for f in &r.failures {
            println!("  failure: {f}");
        }
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "benchmark": "fs",
            "runs": args.runs,
            "size_mib": args.size,
            "files": args.files,
            "cpus": args.cpus,
            "memory_mib": args.memory_mib,
            "queue_size": QUEUE_SIZE,
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
        .filter(|r| r.samples.write_mib_s.is_empty())
        .map(|r| format!("{} + {}", r.vmm, r.backend))
        .collect();
    if !empty.is_empty() {
        bail!(
            "no measurement at all for {} (see the failures above)",
            empty.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_lines_become_rates() {
        let out = "PADDOCK-GUEST-READY\nPBFS write 10.00 12.00\nPBFS read 12.50 13.00\n\
                   PBFS create 13.0 15.0\nPBFS stat 15.0 15.5\nPBFS unlink 15.5 16.5\nPBFS-DONE\n";
        let s = parse_output(out, 64, 1000).unwrap();
        assert_eq!(s.write_mib_s, 32.0);
        assert_eq!(s.read_mib_s, 128.0);
        assert_eq!(s.create_ops_s, 500.0);
        assert_eq!(s.stat_ops_s, 2000.0);
        assert_eq!(s.unlink_ops_s, 1000.0);
        assert!(parse_output("PBFS write 1 2\n", 1, 1)
            .unwrap_err()
            .contains("no `PBFS read` line"));
        assert!(parse_output(&format!("{out}PBFS-FAIL stat\n"), 64, 1000)
            .unwrap_err()
            .contains("PBFS-FAIL stat"));
        assert!(parse_output("PBFS write 5 4\n", 1, 1)
            .unwrap_err()
            .contains("malformed"));
    }

    #[test]
    fn guest_side_has_no_double_quotes_on_the_command_line() {
        let c = cmdline();
        let inner = c.split_once(" -- ").map(|(_, cmd)| cmd).unwrap_or_default();
        assert_eq!(inner.matches('"').count(), 2, "{c}");
        assert!(guest_script(64, 10).contains("count=64"));
        assert!(guest_script(64, 10).contains("-lt 10 ]"));
    }

    #[test]
    fn backends_parse() {
        let p = Path::new("/usr/bin/paddock");
        assert_eq!(
            parse_backend("paddock", p).unwrap(),
            Backend::Paddock(p.to_path_buf())
        );
        assert_eq!(
            parse_backend("virtiofsd=/bin/true", p).unwrap(),
            Backend::Virtiofsd("/bin/true".into())
        );
        assert!(parse_backend("virtiofsd=/nope", p).is_err());
        assert!(parse_backend("qemu", p).is_err());
    }
}
