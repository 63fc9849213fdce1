//! Seccomp end to end: `paddock run` in its default mode runs a tiny guest that waits for console
//! input; while it waits, every thread of paddock must be in seccomp filter mode (`Seccomp: 2`),
//! and after the input arrives the run must end by power-off with no SIGSYS report.

use iced_x86::code_asm::*;
use paddock_tests::tinyguest::{ElfImage, LOAD_ADDR};
use paddock_tests::workspace;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const COM1_DATA: u16 = 0x3f8;
const COM1_LSR: u16 = 0x3fd;
const LSR_DATA_READY: u32 = 1;
const ACPI_SLEEP_CONTROL_PORT: u32 = 0x600;
/// SLP_TYP = 5 (S5) in bits 2..4, SLP_EN in bit 5.
const ACPI_S5_POWER_OFF: u32 = (5 << 2) | (1 << 5);
const READY: &[u8] = b"SECCOMP-GUEST-READY\n";
const DEADLINE: Duration = Duration::from_secs(60);

/// 64-bit guest: prints READY, polls COM1 until a byte arrives (each poll is a vCPU exit), then
/// powers off through the ACPI sleep register.
fn waiting_guest() -> Vec<u8> {
    let mut a = CodeAssembler::new(64).expect("64-bit assembler");
    let mut asm = || -> Result<(), IcedError> {
        a.mov(dx, COM1_DATA as u32)?;
        for &b in READY {
            a.mov(al, b as u32)?;
            a.out(dx, al)?;
        }
        let mut poll = a.create_label();
        a.set_label(&mut poll)?;
        a.mov(dx, COM1_LSR as u32)?;
        a.in_(al, dx)?;
        a.test(al, LSR_DATA_READY)?;
        a.jz(poll)?;
        a.mov(dx, ACPI_SLEEP_CONTROL_PORT)?;
        a.mov(al, ACPI_S5_POWER_OFF)?;
        a.out(dx, al)?;
        let mut stop = a.create_label();
        a.set_label(&mut stop)?;
        a.cli()?;
        a.hlt()?;
        a.jmp(stop)?;
        Ok(())
    };
    asm().expect("assembling the waiting guest");
    a.assemble(LOAD_ADDR).expect("encoding the waiting guest")
}

fn write_guest() -> tempfile::NamedTempFile {
    let code = waiting_guest();
    let image = ElfImage {
        load_addr: LOAD_ADDR,
        segment: &code,
        entry: LOAD_ADDR,
        pvh_entry: None,
    }
    .to_bytes();
    let mut file = tempfile::Builder::new()
        .prefix("paddock-seccomp-")
        .tempfile()
        .expect("temp file");
    file.write_all(&image).expect("writing the guest image");
    workspace::share_with_paddock(file.path()).expect("chmod guest image");
    file
}

fn start_paddock(kernel: &Path, extra: &[&str]) -> Child {
    let bin = workspace::paddock_bin();
    assert!(
        bin.exists(),
        "no paddock at {}: cargo build -p sandbox",
        bin.display()
    );
    Command::new(&bin)
        .arg("run")
        .args(workspace::paddock_user_args())
        .arg("--kernel")
        .arg(kernel)
        .args(["--cpus", "2", "--memory", "64M", "--serial", "stdout"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("starting paddock")
}

/// Reads stdout until READY shows up (or the pipe ends), on a helper thread with a deadline.
fn wait_ready(child: &mut Child) -> Vec<u8> {
    let mut out = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(READY.len()).any(|w| w == READY) {
                break;
            }
        }
        let _ = tx.send(seen);
    });
    rx.recv_timeout(DEADLINE).unwrap_or_default()
}

/// (thread name, Seccomp field) of every thread of `pid`.
fn thread_modes(pid: u32) -> Vec<(String, String)> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let path = entry.expect("task entry").path().join("status");
        let Ok(status) = std::fs::read_to_string(&path) else {
            continue; // the thread ended meanwhile
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.push((field("Name:"), field("Seccomp:")));
    }
    out
}

fn finish(mut child: Child) -> (Option<std::process::ExitStatus>, String) {
    let start = Instant::now();
    let status = loop {
        match child.try_wait().expect("waiting for paddock") {
            Some(s) => break Some(s),
            None if start.elapsed() > DEADLINE => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    (status, stderr)
}

#[test]
fn every_thread_is_filtered_while_the_guest_runs_and_the_run_ends_cleanly() {
    let guest = write_guest();
    let mut child = start_paddock(guest.path(), &[]);
    let seen = wait_ready(&mut child);
    // The guest may print READY while paddock still starts its last vCPU and before the main
    // thread's own filter goes on: wait (bounded) for the steady state.
    let settle = Instant::now() + Duration::from_secs(10);
    let mut modes = thread_modes(child.id());
    while Instant::now() < settle && (modes.len() < 4 || modes.iter().any(|(_, m)| m != "2")) {
        std::thread::sleep(Duration::from_millis(20));
        modes = thread_modes(child.id());
    }
    // Let the guest power off: one byte on its console.
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(b"x");
    }
    let (status, stderr) = finish(child);
    assert!(
        seen.windows(READY.len()).any(|w| w == READY),
        "the guest never printed READY; stdout {:?}, stderr:\n{stderr}",
        String::from_utf8_lossy(&seen)
    );
    let names: Vec<&str> = modes.iter().map(|(n, _)| n.as_str()).collect();
    for expected in ["CPU 0/KVM", "CPU 1/KVM", "serial-in"] {
        assert!(
            names.contains(&expected),
            "thread {expected} missing: {modes:?}"
        );
    }
    for (name, mode) in &modes {
        assert_eq!(
            mode, "2",
            "thread `{name}` is not in seccomp filter mode: {modes:?}"
        );
    }
    assert!(
        !stderr.contains("seccomp"),
        "a seccomp report during the run:\n{stderr}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "paddock must end with status 0 after the guest powers off: {status:?}\n{stderr}"
    );
}

#[test]
fn seccomp_off_runs_unfiltered_and_says_so() {
    let guest = write_guest();
    let mut child = start_paddock(guest.path(), &["--seccomp", "off"]);
    let seen = wait_ready(&mut child);
    let modes = thread_modes(child.id());
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(b"x");
    }
    let (status, stderr) = finish(child);
    assert!(seen.windows(READY.len()).any(|w| w == READY), "{stderr}");
    // no_new_privs is set, but no filter: mode 0 on every thread.
    assert!(
        modes.iter().all(|(_, m)| m == "0"),
        "--seccomp off must leave threads unfiltered: {modes:?}"
    );
    assert!(stderr.contains("WARNING: --seccomp off"), "{stderr}");
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{stderr}");
}
