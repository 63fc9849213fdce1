//! `paddock-bench net guest`: iperf3 between the host and the default guest over virtio-net on a
//! multi-queue tap, under Paddock and the peers, interleaved. The guest runs one iperf3 server per
//! queue pair, each pinned to its own vCPU (so its flow's TX queue, and through the tap's flow
//! table its RX queue, is that pair's); the host runs one client per server in parallel, plain for
//! host -> guest and with `-R` for guest -> host, and the Gbit/s the receivers counted are summed.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::netns::{ip, NetnsError};
use crate::bench::probe::{self, OutputWatch};
use crate::bench::stats::Summary;
use crate::bench::vmms::{Guest, NetAttach, Vmm};
use crate::workspace::TEST_UID;

pub const HOST_IP: &str = "192.168.150.1";
pub const GUEST_IP: &str = "192.168.150.2";
const BASE_PORT: u16 = 5201;
const MAC: &str = "52:54:00:50:42:01";
/// Printed by the guest once its iperf3 servers listen.
pub const SERVERS_UP: &str = "PBNET-SERVERS-UP";
const TAIL_CHARS: usize = 400;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flow {
    HostToGuest,
    GuestToHost,
}

impl Flow {
    pub fn name(self) -> &'static str {
        match self {
            Flow::HostToGuest => "host-to-guest",
            Flow::GuestToHost => "guest-to-host",
        }
    }
}

pub const FLOWS: [Flow; 2] = [Flow::HostToGuest, Flow::GuestToHost];

/// Root is needed to create the tap.
pub fn check_root() -> Result<(), NetnsError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(NetnsError::NotRootFor("paddock-bench net guest"));
    }
    Ok(())
}

/// The tap the guests use, made by root for the unprivileged Paddock; deleted on drop.
pub struct BenchTap {
    pub name: String,
}

impl BenchTap {
    /// A tap owned by `owner_uid`, multi-queue when `multi_queue` (QEMU opens a multi-queue tap
    /// only with more than one queue, so a one-pair run gets a single-queue tap).
    pub fn create(name: &str, owner_uid: u32, multi_queue: bool) -> Result<Self, NetnsError> {
        check_root()?;
        let uid = owner_uid.to_string();
        let mut args = vec!["tuntap", "add", "dev", name, "mode", "tap", "user", &uid];
        if multi_queue {
            args.push("multi_queue");
        }
        ip(&args)?;
        let tap = Self {
            name: name.to_string(),
        };
        ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", name])?;
        ip(&["link", "set", name, "up"])?;
        Ok(tap)
    }
}

impl Drop for BenchTap {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.name]);
    }
}

/// The guest's command: address, one iperf3 server per pair pinned to a vCPU, the marker, then
/// it stays up until the benchmark stops its VMM. No double quotes: it sits inside the kernel
/// command line's quoted argument.
pub fn guest_command(pairs: u8, cpus: u8) -> String {
    let mut cmd = format!("ip addr add {GUEST_IP}/24 dev eth0; ip link set eth0 up; ");
    for pair in 0..pairs {
        let mask = 1u32 << (u32::from(pair) % u32::from(cpus.max(1)));
        cmd += &format!(
            "taskset {mask:x} iperf3 -s -p {} > /dev/null 2>&1 & ",
            BASE_PORT + u16::from(pair)
        );
    }
    cmd + &format!("sleep 1; echo {SERVERS_UP}; sleep 3600")
}

pub fn cmdline(pairs: u8, cpus: u8) -> String {
    format!(
        "console=ttyS0 8250.nr_uarts=1 panic=-1 quiet -- sh -c \"{}\"",
        guest_command(pairs, cpus)
    )
}

/// Extra time an iperf3 client gets beyond its test before it is killed: iperf3 can wait
/// forever for a server that stopped answering.
const IPERF_GRACE: Duration = Duration::from_secs(30);

/// Waits for `child` until `deadline`, then kills it. Returns its output, or None if killed.
fn output_by(
    mut child: std::process::Child,
    deadline: Instant,
) -> std::io::Result<Option<std::process::Output>> {
    loop {
        if child.try_wait()?.is_some() {
            return child.wait_with_output().map(Some);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Gbit/s of one flow direction: every iperf3 client's receiver-side rate, summed.
fn iperf(pairs: u8, flow: Flow, seconds: u32) -> Result<f64, String> {
    let mut clients = Vec::new();
    for pair in 0..pairs {
        let mut cmd = Command::new("iperf3");
        cmd.args(["-c", GUEST_IP, "-p"])
            .arg((BASE_PORT + u16::from(pair)).to_string())
            .args([
                "-t",
                &seconds.to_string(),
                "-J",
                "--connect-timeout",
                "10000",
            ]);
        if flow == Flow::GuestToHost {
            cmd.arg("-R");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        clients.push(
            cmd.spawn()
                .map_err(|e| format!("starting iperf3 (is it installed?): {e}"))?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(u64::from(seconds)) + IPERF_GRACE;
    let mut total = 0.0;
    let mut errors = Vec::new();
    for (pair, client) in clients.into_iter().enumerate() {
        // The JSON is small, so a client never blocks on its full stdout pipe before exiting.
        let out = match output_by(client, deadline) {
            Ok(Some(out)) => out,
            Ok(None) => {
                errors.push(format!(
                    "pair {pair}: iperf3 did not finish within {seconds} s + {IPERF_GRACE:?}"
                ));
                continue;
            }
            Err(e) => return Err(format!("waiting for iperf3: {e}")),
        };
        let json: serde_json::Value = match serde_json::from_slice(&out.stdout) {
            Ok(j) => j,
            Err(e) => {
                errors.push(format!(
                    "pair {pair}: iperf3 wrote no JSON ({e}): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                continue;
            }
        };
        match json["end"]["sum_received"]["bits_per_second"].as_f64() {
            Some(bps) if out.status.success() => total += bps / 1e9,
            _ => errors.push(format!(
                "pair {pair}: iperf3 failed: {}",
                json["error"]
                    .as_str()
                    .unwrap_or("no sum_received in its JSON")
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    Ok(total)
}

/// Every sample of one (pairs, flow) for one VMM.
#[derive(Clone, Debug, Serialize)]
pub struct FlowSeries {
    pub pairs: u8,
    pub flow: Flow,
    pub gbit_per_s: Option<Summary>,
    pub samples: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VmmNetResult {
    pub vmm: String,
    pub path: String,
    pub series: Vec<FlowSeries>,
    pub failures: Vec<String>,
}

pub struct GuestBench<'a> {
    pub runs: usize,
    pub seconds: u32,
    pub cpus: u8,
    pub mem_mib: u64,
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub tap: &'a str,
    pub timeout: Duration,
    pub scratch: &'a Path,
}

impl GuestBench<'_> {
    /// Pair counts measured: 1 and `cpus` (once when that is 1).
    pub fn pair_counts(&self) -> Vec<u8> {
        let mut p = vec![1, self.cpus];
        p.dedup();
        p
    }

    /// Boots `vmm` with `pairs` queue pairs, waits for the guest's servers, measures both flows.
    fn one_boot(&self, vmm: &Vmm, pairs: u8, tap: &str) -> Result<[f64; 2], String> {
        let cmdline = cmdline(pairs, self.cpus);
        let guest = Guest {
            kernel: self.kernel,
            initramfs: Some(self.initramfs),
            cmdline: &cmdline,
            cpus: self.cpus,
            mem_mib: self.mem_mib,
        };
        let net = NetAttach {
            tap,
            pairs,
            mac: MAC,
        };
        let mut cmd = vmm
            .command_with_net(&guest, self.scratch, Some(&net))
            .map_err(|e| format!("preparing the {} command: {e}", vmm.kind.name()))?;
        cmd.process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", vmm.path.display()))?;
        let result = match OutputWatch::start(&mut child, vec![SERVERS_UP.as_bytes().to_vec()]) {
            None => Err("no stdout".to_string()),
            Some(watch) => match watch.wait_for(0, Instant::now() + self.timeout) {
                Some(_) => {
                    let mut gbit = [0.0; 2];
                    let mut failed = None;
                    for (i, flow) in FLOWS.into_iter().enumerate() {
                        match iperf(pairs, flow, self.seconds) {
                            Ok(g) => gbit[i] = g,
                            Err(e) => {
                                failed = Some(format!("{}: {e}", flow.name()));
                                break;
                            }
                        }
                    }
                    match failed {
                        None => Ok(gbit),
                        Some(e) => {
                            let (out, err) = watch.tails(TAIL_CHARS);
                            Err(format!(
                                "{e}; VMM stdout ended with {out:?}; stderr ended with {err:?}"
                            ))
                        }
                    }
                }
                None => {
                    let exited = probe::exit_status_soon(&mut child);
                    let (out, err) = watch.tails(TAIL_CHARS);
                    Err(format!(
                        "no `{SERVERS_UP}` {}; stdout ended with {out:?}; stderr ended with {err:?}",
                        match exited {
                            Some(s) => format!("before it exited ({s})"),
                            None => format!("within {:?}", self.timeout),
                        }
                    ))
                }
            },
        };
        probe::stop(&mut child);
        result
    }

    /// Run 1 of every (pair count, VMM), then run 2, and so on.
    pub fn measure_all(&self, vmms: &[Vmm]) -> Vec<VmmNetResult> {
        let pair_counts = self.pair_counts();
        let mut results: Vec<VmmNetResult> = vmms
            .iter()
            .map(|vmm| VmmNetResult {
                vmm: vmm.kind.name().to_string(),
                path: vmm.path.display().to_string(),
                series: pair_counts
                    .iter()
                    .flat_map(|&pairs| {
                        FLOWS.map(|flow| FlowSeries {
                            pairs,
                            flow,
                            gbit_per_s: None,
                            samples: Vec::new(),
                        })
                    })
                    .collect(),
                failures: Vec::new(),
            })
            .collect();
        for run in 1..=self.runs {
            for (p, &pairs) in pair_counts.iter().enumerate() {
                let tap = match BenchTap::create(self.tap, TEST_UID, pairs > 1) {
                    Ok(tap) => tap,
                    Err(e) => {
                        for r in results.iter_mut() {
                            r.failures.push(format!("run {run}, {pairs} pair(s): {e}"));
                        }
                        continue;
                    }
                };
                for (vmm, result) in vmms.iter().zip(results.iter_mut()) {
                    let name = vmm.kind.name();
                    match self.one_boot(vmm, pairs, &tap.name) {
                        Ok(gbit) => {
                            eprintln!(
                                "paddock-bench: run {run}/{} {name} {pairs} pair(s): host->guest {:.3} Gbit/s, guest->host {:.3} Gbit/s",
                                self.runs, gbit[0], gbit[1]
                            );
                            for (f, g) in gbit.into_iter().enumerate() {
                                result.series[2 * p + f].samples.push(g);
                            }
                        }
                        Err(e) => {
                            eprintln!(
                                "paddock-bench: run {run}/{} {name} {pairs} pair(s): FAILED",
                                self.runs
                            );
                            result
                                .failures
                                .push(format!("run {run}, {pairs} pair(s): {e}"));
                        }
                    }
                }
            }
        }
        for r in &mut results {
            for s in &mut r.series {
                s.gbit_per_s = Summary::of(&s.samples);
            }
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_command_has_a_pinned_server_per_pair_and_no_double_quotes() {
        let c = guest_command(2, 2);
        assert!(c.contains("taskset 1 iperf3 -s -p 5201"), "{c}");
        assert!(c.contains("taskset 2 iperf3 -s -p 5202"), "{c}");
        assert!(!c.contains('"'), "{c}");
        assert!(cmdline(1, 2).ends_with("sleep 3600\""));
        assert!(!guest_command(1, 2).contains("5202"));
    }
}
